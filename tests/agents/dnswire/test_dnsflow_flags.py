"""`dnsflow` against dnsflow.c's own command line (getopt
"i:J:r:f:m:M:pP:s:u:w:X:Yv:h:c"): what an existing unit or init script
passes keeps its meaning, what dnsflow.c misread is refused by name, and no
command line, however odd, ends in a traceback or more than one line per
problem. test_cli.py has the messages of the config's own rules."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agents.dnswire import cli
from agents.dnswire.config import MAX_SLOTS
from agents.dnswire.service import PidFileBusy, hold_pidfiles
from agents.dnswire.source import AgentError
from agents.pcap_errors import pcap_error_text
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE
from tests.agents.dnswire import dnsflow_reader as reader
from tests.agents.dnswire import wire as w
from tests.agents.flow import frames as f
from tests.helpers import needs_root, stop_process, veth_pair, wait_for

REPO = Path(__file__).resolve().parents[3]
DNSFLOW = str(Path(sys.executable).parent / "dnsflow")
AGENT = (sys.executable, "-m", "pcapd", "agent", "dnswire")
ANSWER = w.response("www.example.test", "A", [("www.example.test", "A", "192.0.2.10")])


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=60, cwd=REPO)


def err(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode(errors="replace")


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "one.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(ANSWER))])
    return path


def exported_sets(pcap_bytes: bytes) -> int:
    """The DNSFlow sets in what -w wrote (loopback link type, IPv4/UDP to 5300)."""
    sets = 0
    for _ts, frame in dpkt.pcap.Reader(io.BytesIO(pcap_bytes)):
        ip = dpkt.ip.IP(frame[4:])
        assert ip.data.dport == 5300
        sets += len(reader.read(bytes(ip.data.data)).sets)
    return sets


# -- what dnsflow.c misread, or a shell made of a missing variable ------------

LONG = "9" * 5000
R = ["-r", "/nonexistent.pcap", "-u", "127.0.0.1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # atoi: 'x' was 0 (-M: half the CPUs), '4x' 4; int() would take '1_0' as 10
        ([*R, "-M", "abc"], "dnsflow: error: -M: 'abc' is not a whole number (digits 0-9)"),
        ([*R, "-M", "1_0"], "dnsflow: error: -M: '1_0' is not a whole number (digits 0-9)"),
        ([*R, "-M", "4x"], "dnsflow: error: -M: '4x' is not a whole number (digits 0-9)"),
        ([*R, "-s", " 4"], "dnsflow: error: -s: ' 4' is not a whole number (digits 0-9)"),
        ([*R, "-s", "\u0664"], "dnsflow: error: -s: '\u0664' is not a whole number (digits 0-9)"),
        ([*R, "-s", LONG], "dnsflow: error: -s: '99999999999999999999'... is not a whole number"),
        # a sign stays, so the rule that is broken is named
        ([*R, "-s", "-1"], "dnsflow: error: -s: must be at least 0 and at most 65535, got -1"),
        ([*R, "-d", "0"], "dnsflow: error: -d: '0' is not a port number (1-65535)"),
        ([*R, "-J", "0"], "dnsflow: error: -J: '0' is not a port number (1-65535)"),
        # an empty value is refused, never taken as "not given"
        ([*R, "-P", ""], "dnsflow: error: -P: empty; give a value, or leave -P out"),
        ([*R, "-P", "/tmp/x.pid", "-P", ""], "dnsflow: error: -P: empty; give a value"),
        ([*R, "-f", ""], "dnsflow: error: -f: empty; give a value, or leave -f out"),
        (["-r", "", "-u", "127.0.0.1"], "dnsflow: error: -r: empty; give a value"),
        (["-i", "", "-u", "127.0.0.1"], "dnsflow: error: -i: empty; give a value"),
        (["-r", "x.pcap", "-w", ""], "dnsflow: error: -w: empty; give a value"),
        ([*R, "--config", ""], "dnsflow: error: --config: empty; give a value"),
        ([*R, "--redis", ""], "dnsflow: error: --redis: empty; give a value"),
        # what getopt would take and dnsflow.c then ignored
        ([*R, "10.0.0.6"], "dnsflow: error: unrecognized arguments: 10.0.0.6"),
        ([*R, "-v", "1"], "dnsflow: error: unrecognized arguments: -v 1"),
        ([*R, "x\x1b[2J"], "dnsflow: error: unrecognized arguments: x\\x1b[2J"),
        ([*R, "-M"], "dnsflow: error: -M: expected one argument"),
        # -m and -M: dnsflow.c ignored -M next to -m i/n; stdin is no file for N readers
        (["-r", "-", "-u", "127.0.0.1", "-M", "2"],
         "dnsflow: error: -r: '-' (standard input) cannot be read by several processes"),
        ([*R, "-m", f"1/{MAX_SLOTS + 1}"],
         f"dnsflow: error: -m: '1/{MAX_SLOTS + 1}' is not I/N with 1 <= I <= N <= {MAX_SLOTS}"),
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run(DNSFLOW, *args)
    assert done.returncode == EXIT_CONFIG, err(done)
    assert err(done).splitlines() == [err(done).strip()], err(done)  # one line, no usage block
    assert err(done).startswith(message), err(done)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "/nonexistent/dir/out.pcap"],
         "dnsflow: error: -w '/nonexistent/dir/out.pcap': No such file or directory"),
        (["-w", "/"], "dnsflow: error: -w '/': Is a directory"),
        (["-u", "127.0.0.1:9", "-P", "/nonexistent/dir/x.pid"],
         "dnsflow: error: -P '/nonexistent/dir/x.pid': No such file or directory"),
        (["-u", "127.0.0.1:9", "-f", "udp and \u00e9"],
         "dnsflow: error: -f 'udp and \u00e9': can't parse filter expression: syntax error"),
    ],
)  # fmt: skip
def test_what_cannot_be_opened_is_named_without_a_traceback(
    capture: Path, args: list[str], message: str
) -> None:
    """A traceback before: PcapWriter's open() was outside every handler; and
    libpcap's words came as b"..." (bytes repr)."""
    done = run(DNSFLOW, "-r", str(capture), *args)
    assert done.returncode == EXIT_FAILURE
    assert "Traceback" not in err(done)
    assert message in err(done), err(done)


def test_r_refuses_what_is_no_capture_file_by_what_it_is(tmp_path: Path) -> None:
    """pypcap opens a live device of the name when no file opens: its words
    ("No such device exists") were quoted for a text file."""
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    done = run(DNSFLOW, "-r", str(text), "-u", "127.0.0.1:9")
    assert done.returncode == EXIT_FAILURE
    assert f"dnsflow: error: -r '{text}': not a pcap or pcapng capture file" in err(done)
    assert "device" not in err(done)
    done = run(DNSFLOW, "-r", str(tmp_path), "-u", "127.0.0.1:9")
    assert f"dnsflow: error: -r '{tmp_path}': not a file" in err(done)


# -- what dnsflow.c does that pcapd did not -----------------------------------


def test_r_dash_reads_stdin_and_w_dash_writes_stdout(capture: Path, tmp_path: Path) -> None:
    """libpcap takes "-" for stdin and stdout (`tcpdump -w - | dnsflow -r -`);
    pcapd refused `-r -` and wrote `-w -` to a file named "-"."""
    done = run(DNSFLOW, "-r", "-", "-w", "-", stdin=capture.read_bytes())
    assert done.returncode == 0, err(done)
    assert exported_sets(done.stdout) == 1
    assert not (REPO / "-").exists()
    # /dev/stdin (a pipe here) and other non-regular files read as dnsflow.c reads them
    out = tmp_path / "out.pcap"
    done = run(DNSFLOW, "-r", "/dev/stdin", "-w", str(out), stdin=capture.read_bytes())
    assert done.returncode == 0, err(done)
    assert exported_sets(out.read_bytes()) == 1


def test_every_pid_file_is_held(tmp_path: Path, capture: Path) -> None:
    """dnsflow.c's init script runs `dnsflow -P /var/run/dnsflow.pid $DNSFLOW_OPTS`,
    and the README's own example puts -P in the options: dnsflow.c held both,
    pcapd only the last, so `service dnsflow stop` found no PID to signal."""
    script, own = tmp_path / "init.pid", tmp_path / "opts.pid"
    done = run(DNSFLOW, "-r", str(capture), "-u", "127.0.0.1:9", "-P", str(script),
               "-P", str(own), "-P", str(tmp_path / "." / "opts.pid"))  # fmt: skip
    assert done.returncode == 0, err(done)
    assert script.read_text() == own.read_text() and script.read_text().strip().isdigit()


def test_pid_files_are_all_held_or_none_is_written(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pid", tmp_path / "b.pid"
    held = hold_pidfiles([str(second)])  # as another instance would
    try:
        first.write_text("old\n")
        with pytest.raises(PidFileBusy, match=f"{second} is locked by PID {os.getpid()}"):
            hold_pidfiles([str(first), str(second)])
        assert first.read_text() == "old\n"  # untouched: the refusal came first
    finally:
        for fd in held:
            os.close(fd)
    fds = hold_pidfiles([str(first), str(second), str(first)])
    try:
        assert len(fds) == 2
        assert first.read_text() == second.read_text() == f"{os.getpid()}\n"
    finally:
        for fd in fds:
            os.close(fd)
    with pytest.raises(AgentError, match="No such file or directory"):
        hold_pidfiles([str(tmp_path / "none" / "x.pid")])


def test_m_takes_more_slots_than_m_takes_processes(capture: Path) -> None:
    """-m forks nothing: dnsflow.c bounds N by its 32 bits alone (one SPAN split
    over many sensors); only -M is bounded by its 64 children."""
    done = run(DNSFLOW, "-r", str(capture), "-u", "127.0.0.1:9", "-m", "70/128")
    assert done.returncode == 0, err(done)
    assert "slot=70/128" in err(done)
    assert "/ 128 * 128 = 69)" in err(done)


def test_pcapd_agent_dnswire_names_its_own_options(tmp_path: Path, capture: Path) -> None:
    done = run(*AGENT, "--read", str(tmp_path / "none.pcap"), "--no-redis", "--write", "-")
    assert done.returncode == EXIT_FAILURE
    assert f"pcapd agent dnswire: error: --read '{tmp_path}/none.pcap': no such file" in err(done)
    pidfiles = [tmp_path / "a.pid", tmp_path / "b.pid"]
    done = run(*AGENT, "--read", str(capture), "--no-redis", "--write", str(tmp_path / "o.pcap"),
               "--pidfile", str(pidfiles[0]), "--pidfile", str(pidfiles[1]))  # fmt: skip
    assert done.returncode == 0, err(done)
    assert all(p.read_text().strip().isdigit() for p in pidfiles)
    done = run(*AGENT, "--read", str(capture), "--no-redis", "--pidfile", "")
    assert done.returncode == EXIT_CONFIG
    assert "pcapd agent dnswire: error: --pidfile: empty; give a value" in err(done)


def test_python_m_runs_the_console_script() -> None:
    done = run(sys.executable, "-m", "agents.dnswire.cli", "-i", "lo")
    assert done.returncode == EXIT_CONFIG
    assert "dnsflow: error: output dst missing" in err(done)


@needs_root
def test_without_i_or_r_it_captures_on_libpcaps_default_device(tmp_path: Path) -> None:
    """dnsflow.c's dcap_init_live(NULL) asks pcap_lookupdev(): a unit running
    `dnsflow -u 10.0.0.5` captured there, and pcapd refused it."""
    log = tmp_path / "dnsflow.log"
    with veth_pair(subnet=233) as pair, log.open("wb") as sink:
        proc = subprocess.Popen(
            pair.exec_a(DNSFLOW, "-w", str(tmp_path / "out.pcap")), stderr=sink, cwd=REPO
        )
        try:
            wait_for(lambda: b"dnswire_started" in log.read_bytes() or proc.poll() is not None,
                     timeout=30)  # fmt: skip
            text = log.read_text()
            assert f"event=dnswire_default_device interface={pair.dev_a}" in text, text
            assert f"event=dnswire_started source={pair.dev_a} " in text, text
        finally:
            stop_process(proc)
    assert proc.returncode == 0, log.read_text()


# -- the parser fuzzed --------------------------------------------------------

FLAGS = ["-i", "-r", "-f", "-m", "-M", "-p", "-P", "-s", "-u", "-w", "-X", "-J", "-Y", "-d",
         "-c", "--config", "--redis", "--log-level"]  # fmt: skip
# Any code point, lone surrogates (what a non-UTF-8 argv decodes to), NUL and
# other controls included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0" * 5000 + "1", "9" * 5000, "4_0", "0x10", "1e3", " 2", "\u0664"]),
)
SLOTS = st.tuples(NUMBERS, NUMBERS).map("/".join)
WORDS = st.one_of(st.sampled_from(FLAGS), ANY_TEXT, NUMBERS, SLOTS,
                  st.sampled_from(["127.0.0.1", "127.0.0.1:5300", "lo", "-", ""]))  # fmt: skip
# A flag with its value attached (-M0, -ueth0), or combined (-pcY).
GLUED = st.tuples(st.sampled_from([f for f in FLAGS if len(f) == 2]), WORDS).map("".join)
# Flags each followed by a value, as a unit file has them: more get past argparse.
PAIRS = st.lists(st.tuples(st.sampled_from(FLAGS), WORDS), max_size=8).map(
    lambda pairs: [word for pair in pairs for word in pair]
)
# Values each flag takes, so that whole lines pass too, with some values odd.
SMALL = st.integers(0, 4).map(str)
PORT = st.integers(0, 70_000).map(str)
GOOD = {
    "-i": st.sampled_from(["lo", "eth0", "any"]), "-r": st.just("x.pcap"), "-f": st.just("udp"),
    "-m": st.tuples(SMALL, SMALL).map("/".join), "-M": SMALL, "-P": st.just("/run/x.pid"),
    "-s": st.integers(0, 70_000).map(str), "-w": st.just("out.pcap"), "-X": PORT, "-J": PORT,
    "-d": PORT, "-u": st.tuples(st.sampled_from(["127.0.0.1", "10.0.0.5"]), PORT).map(":".join),
    "--redis": st.just("redis://127.0.0.1:6379/0"), "--log-level": st.just("debug"),
}  # fmt: skip
FLAG_VALUE = st.sampled_from(sorted(GOOD)).flatmap(
    lambda flag: st.tuples(st.just(flag), st.one_of(GOOD[flag], GOOD[flag], WORDS))
)
SWITCH = st.sampled_from(["-p", "-Y", "-c", "-pc", "-Yp"]).map(lambda flag: (flag,))
BASE = ["-r", "x.pcap", "--redis", "redis://127.0.0.1:6379/0"]
LINES = st.lists(st.one_of(FLAG_VALUE, SWITCH), max_size=6).map(
    lambda parts: [*BASE, *(word for part in parts for word in part)]
)
ARGV = st.one_of(st.lists(st.one_of(WORDS, GLUED), max_size=12), PAIRS, LINES)


def _is_help(word: str) -> bool:
    """-h, alone or after flags without a value (-pYh), or --help abbreviated."""
    return bool(re.fullmatch(r"-[pYc]*h.*", word)) or (len(word) > 2 and "--help".startswith(word))


# The fixture below is the same for every example: no state to leak.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=400, deadline=None, suppress_health_check=SLOW_OK)
@given(argv=ARGV)
def test_no_command_line_raises_or_prints_more_than_lines_of_errors(argv: list[str]) -> None:
    """Up to the capture's start (nothing is opened): a config, or exit 2
    with each problem on one printable line; never another exception."""
    printed = io.StringIO()
    old_stderr, sys.stderr = sys.stderr, printed
    try:
        try:
            args = cli.dnsflow_args(argv)
        except SystemExit as exc:  # -h and --help (and what abbreviates it) print the help
            assert exc.code == 0 and any(_is_help(word) for word in argv), argv
            return
        if isinstance(args, argparse.Namespace):
            record = args.redis_url is not None or args.config is not None
            result = cli.prepare(cli.DNSFLOW, args, record)
        else:
            result = args
    finally:
        sys.stderr = old_stderr
    lines = printed.getvalue().splitlines()
    event("refused" if isinstance(result, int) else "a config")
    if isinstance(result, int):
        assert result == EXIT_CONFIG
        assert lines and all(re.match(r"dnsflow: (.+: )?error: ", line) for line in lines), lines
    else:
        cfg, _redis = result
        assert cfg.slot[0] <= cfg.slot[1] <= MAX_SLOTS and 0 <= cfg.sample_rate <= 65_535
        assert all(re.match(r"dnsflow: (.+: )?warning: ", line) for line in lines), lines
    for line in lines:
        assert line.isprintable() and len(line) <= len("dnsflow: error: ") + cli.MAX_LINE + 3, line


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() sets the agent's logging up (the root logger's handlers
    replaced): not in this process, where pytest holds them."""
    monkeypatch.setattr(cli, "setup_agent_logging", lambda config, level: None)


def test_pcap_error_text_unwraps_pypcap() -> None:
    wrapped = OSError("Activateing packet capture failed. Error returned by packet capture "
                      "library was b'That device is not up'")  # fmt: skip
    assert pcap_error_text(wrapped) == "That device is not up"
    assert pcap_error_text(OSError(b"syntax error")) == "syntax error"
    assert pcap_error_text(OSError()) == "unknown libpcap error"


def test_one_line_escapes_and_cuts() -> None:
    assert cli.one_line("argument -M: 'a\nb\x00\udcff'") == "-M: 'a\\nb\\x00\\udcff'"
    assert cli.one_line("x" * 1000) == "x" * cli.MAX_LINE + "..."


def test_the_supervised_children_leave_the_pid_files_to_the_parent(tmp_path: Path) -> None:
    """-M N: the parent holds every -P (dnsflow.c locks them before it forks)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("-M 2 needs two CPUs")
    path = tmp_path / "many.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(ANSWER))] * 4)
    pidfiles = [tmp_path / "a.pid", tmp_path / "b.pid"]
    done = run(DNSFLOW, "-r", str(path), "-u", "127.0.0.1:9", "-M", "2",
               "-P", str(pidfiles[0]), "-P", str(pidfiles[1]))  # fmt: skip
    assert done.returncode == 0, err(done)
    pids = {int(p.read_text()) for p in pidfiles}
    children = {int(m) for m in re.findall(r"child_started slot=\d/2 pid=(\d+)", err(done))}
    assert len(pids) == 1 and len(children) == 2 and not pids & children, (pids, children)

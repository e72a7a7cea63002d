"""The `dnsflow` console script and `pcapd agent dnswire`: DNSFlow's flags,
what a user sees for each bad one, and the PID file."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE
from tests.agents.dnswire import wire as w
from tests.agents.flow import frames as f
from tests.agents.test_store import refusing_url
from tests.helpers import RedisServer

REPO = Path(__file__).resolve().parents[3]
DNSFLOW = str(Path(sys.executable).parent / "dnsflow")
AGENT = (sys.executable, "-m", "pcapd", "agent", "dnswire")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "one.pcap"
    answer = w.response("www.example.test", "A", [("www.example.test", "A", "192.0.2.10")])
    f.write_pcap(path, [f.ether(w.udp_packet(answer))])
    return path


def test_help_lists_dnsflows_flags() -> None:
    done = run(DNSFLOW, "-h")
    assert done.returncode == 0
    for flag in ("-i", "-r", "-f", "-m", "-M", "-p", "-P", "-s", "-u", "-w", "-X", "-J", "-Y",
                 "-d", "-c"):  # fmt: skip
        assert f"{flag} " in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "lo"], "dnsflow: error: output dst missing: give -u, -w or a Redis to record into"),
        (["-i", "lo", "-u", "foo"], "dnsflow: error: -u: 'foo' is not an IPv4 ADDRESS[:PORT]"),
        (["-i", "lo", "-u", "::1"], "dnsflow: error: -u: '::1' is not an IPv4 ADDRESS[:PORT]"),
        (["-i", "lo", *["-u", "127.0.0.1"] * 11],
         "dnsflow: error: -u: 11 destinations, at most 10"),
        (["-i", "lo", "-u", "127.0.0.1", "-m", "3/2"],
         "dnsflow: error: -m: '3/2' is not I/N with 1 <= I <= N <= 4294967295"),
        (["-i", "lo", "-u", "127.0.0.1", "-s", "70000"],
         "dnsflow: error: -s: must be at least 0 and at most 65535, got 70000"),
        (["-i", "lo", "-M", "2", "-w", "x.pcap"],
         "dnsflow: error: -w: cannot write one file from several processes (processes/-M)"),
        (["-i", "lo", "-u", "127.0.0.1", "-M", "65"],
         "dnsflow: error: -M: must be at least 0 and at most 64, got 65"),
        (["-i", "lo", "-u", "127.0.0.1", "-M", "2", "-m", "1/2"],
         "dnsflow: error: -m: slot (-m) and processes (-M) exclude each other"),
        (["-i", "lo", "-r", "x.pcap", "-u", "127.0.0.1"],
         "dnsflow: error: -r: interface and read exclude each other"),
        (["-i", "nosuchif0", "-u", "127.0.0.1"], "dnsflow: error: interface 'nosuchif0' not found"),
        # names Linux allows pass the config's check and reach findalldevs()
        (["-i", "tap#1", "-u", "127.0.0.1"], "dnsflow: error: interface 'tap#1' not found"),
        (["-i", "wg+home", "-u", "127.0.0.1"], "dnsflow: error: interface 'wg+home' not found"),
        (["-i", "a/b", "-u", "127.0.0.1"], "dnsflow: error: -i: 'a/b' is not an interface name"),
        (["-i", "eth 0", "-u", "127.0.0.1"], "dnsflow: error: -i: 'eth 0' is not an interface"),
        (["-i", "x" * 16, "-u", "127.0.0.1"], "dnsflow: error: -i: 'xxxxxxxxxxxxxxxx' is not an"),
        (["-r", "/nonexistent.pcap", "-u", "127.0.0.1"],
         "dnsflow: error: -r '/nonexistent.pcap': no such file"),
        (["-i", "lo", "-w", "x.pcap", "-m", "1/" + "9" * 5000],
         "dnsflow: error: -m: '1/99999999999999999999999999999999999999' is not I/N"),
        # zero-padded past int()'s 4300 digits: read as the number, then its rule
        (["-i", "lo", "-u", "127.0.0.1", "-M", "2", "-m", "0" * 5000 + "1/2"],
         "dnsflow: error: -m: slot (-m) and processes (-M) exclude each other"),
        (["-i", "lo", "-u", "127.0.0.1:" + "0" * 5000 + "1", "-M", "65"],
         "dnsflow: error: -M: must be at least 0 and at most 64, got 65"),
        (["-i", "lo", "-u", "127.0.0.1:5_300"],
         "dnsflow: error: -u: '127.0.0.1:5_300': port '5_300' is not a port in 1..65535"),
        (["-i", "lo", "-u", "127.0.0.1:\u0665\u0663"],
         "dnsflow: error: -u: '127.0.0.1:\u0665\u0663': port '\u0665\u0663' is not a port"),
        (["-i", "lo", "-u", "127.0.0.1", "-d", "+53"],
         "dnsflow: error: -d: '+53' is not a port number (1-65535)"),
        (["-i", "lo", "-u", "127.0.0.1", "-X", "9" * 5000],
         "dnsflow: error: -X: '99999999999999999999'... is not a port number"),
        (["-i", "lo", "-u", "127.0.0.1", "--redis", "http://x"],
         "dnsflow: error: --redis: scheme is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://"),
    ],
)  # fmt: skip
def test_bad_flags_say_what_is_wrong(args: list[str], message: str) -> None:
    done = run(DNSFLOW, *args)
    # what a restart may cure (a device, a file) is a failure; the rest a config error
    runtime = "not found" in message or "no such file" in message
    assert done.returncode == (EXIT_FAILURE if runtime else EXIT_CONFIG)
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_more_processes_than_cpus_is_refused() -> None:
    cpus = os.cpu_count() or 1
    done = run(DNSFLOW, "-i", "lo", "-u", "127.0.0.1", "-M", str(cpus + 1))
    assert done.returncode == EXIT_CONFIG
    assert f"dnsflow: error: -M: {cpus + 1} processes on {cpus} CPUs" in done.stderr


def test_bad_filter_is_reported(capture: Path) -> None:
    done = run(DNSFLOW, "-r", str(capture), "-u", "127.0.0.1:9", "-f", "udp and ((")
    assert done.returncode == 1
    assert "dnsflow: error: -f 'udp and ((':" in done.stderr


def test_long_options_of_pcapd_agent_dnswire(capture: Path) -> None:
    done = run(*AGENT, "--read", str(capture), "--udp-dst", "foo")
    assert done.returncode == EXIT_CONFIG
    assert (
        "pcapd agent dnswire: error: --udp-dst: 'foo' is not an IPv4 ADDRESS[:PORT]" in done.stderr
    )
    done = run(*AGENT, "--read", str(capture), "--no-redis", "--sample-rate", "-1")
    assert (
        "pcapd agent dnswire: error: --sample-rate: must be at least 0 and at most 65535, got -1"
        in done.stderr
    )
    done = run(*AGENT, "--read", str(capture), "--no-redis")
    assert "output dst missing: give --udp-dst, --write or a Redis" in done.stderr
    # dnsflow captures on libpcap's default device (as dnsflow.c); pcapd's own command asks
    done = run(*AGENT, "--udp-dst", "127.0.0.1", "--no-redis")
    assert done.returncode == EXIT_CONFIG
    assert "pcapd agent dnswire: error: --interface or --read: give an interface or a file" in (
        done.stderr
    )


def test_a_path_that_is_not_utf8_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    """A command-line value's bytes that are not UTF-8 reach Python as lone
    surrogates, which libpcap's binding cannot encode (a traceback, exit 1,
    before the config refused them): an error naming the flag, as README
    says, like a control character."""
    name = os.fsdecode(b"caf\xe9.pcap")
    done = run(*AGENT, "--read", str(tmp_path / name), "--no-redis", "--write", "out.pcap")
    assert done.returncode == EXIT_CONFIG, done.stderr
    at = len(str(tmp_path)) + 4
    assert done.stderr.splitlines() == [
        f"pcapd agent dnswire: error: --read: holds a lone surrogate (not UTF-8 text) "
        f"U+DCE9 at character {at}"
    ]


def test_config_section_is_read_and_checked(tmp_path: Path, capture: Path) -> None:
    conf = tmp_path / "pcapd.toml"
    conf.write_text('[agents.dnswire]\nsample_rate = "often"\nbogus = 1\n')
    done = run(*AGENT, "-c", str(conf), "--read", str(capture))
    assert done.returncode == EXIT_CONFIG
    # The typo's warning beside the error, as the other agents and serve say them.
    assert done.stderr.splitlines() == [
        f"pcapd agent dnswire: {conf}: error: agents.dnswire.sample_rate: "
        "expected an integer, got 'often'",
        f"pcapd agent dnswire: {conf}: warning: agents.dnswire.bogus: unknown option, ignored",
    ]
    done = run(sys.executable, "-m", "pcapd", "check-config", "--agent-only", str(conf))
    assert (done.returncode, done.stderr.splitlines()) == (EXIT_CONFIG, [
        f"{conf}: error: agents.dnswire.sample_rate: expected an integer, got 'often'",
        f"{conf}: warning: agents.dnswire.bogus: unknown option, ignored",
    ])  # fmt: skip
    conf.write_text(f'[agents.dnswire]\nread = "{capture}"\nrecord = false\nbogus = 1\n')
    done = run(*AGENT, "-c", str(conf), "--write", str(tmp_path / "out.pcap"))
    assert done.returncode == 0, done.stderr
    assert "warning: agents.dnswire.bogus: unknown option, ignored" in done.stderr
    assert (tmp_path / "out.pcap").stat().st_size > 24


def test_reading_a_file_exits_non_zero_when_keys_were_dropped(
    capture: Path, private_redis: RedisServer
) -> None:
    """Keys a Redis refused (an ACL here) are lost with a file read once: the
    exit status says so."""
    done = run(*AGENT, "--read", str(capture), "--redis-url", refusing_url(private_redis))
    assert done.returncode == 1, done.stderr
    assert "event=redis_writes_refused cause=NOPERM" in done.stderr
    assert re.search(r"event=keys_dropped agent=dnswire keys=[1-9]", done.stderr), done.stderr


def test_pid_file_refuses_a_second_instance(tmp_path: Path, capture: Path) -> None:
    pidfile = tmp_path / "dnsflow.pid"
    fd = os.open(pidfile, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        done = run(DNSFLOW, "-r", str(capture), "-u", "127.0.0.1:9", "-P", str(pidfile))
    finally:
        os.close(fd)
    assert done.returncode == 1
    assert (
        f"dnsflow: error: dnsflow already running: {pidfile} is locked by PID 4242" in done.stderr
    )
    done = run(DNSFLOW, "-r", str(capture), "-u", "127.0.0.1:9", "-P", str(pidfile))
    assert done.returncode == 0, done.stderr
    assert pidfile.read_text().strip().isdigit()
    assert pidfile.read_text().strip() != "4242"

"""pcapdaemon's command line: Go flag syntax, its meanings, and a daemon started
the pcapdaemon way (the installed `pcapdaemon` script, a real redis-server)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcapd.cli.serve import FLAGS, FlagError, ServeArgs, parse_flags
from tests.helpers import RedisServer, free_port, stop_process
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request

PCAPDAEMON = Path(sys.executable).parent / "pcapdaemon"  # installed by pyproject


def test_go_flag_spellings_map_to_config_overrides() -> None:
    args = parse_flags(
        ["-config", "/etc/p.toml", "-redisnode=r1", "--redisport", "6380", "--redischannel=ops",
         "-upload", "-cshost", "cs", "-csport=8443", "-csscheme", "http", "-cstoken", "env:T",
         "-cstimeout", "15", "-writelocal=true", "-destdir", "/data", "-maxpackets", "0x10"]
    )  # fmt: skip
    assert args == ServeArgs(
        "/etc/p.toml",
        {
            "redis": {"host": "r1", "port": 6380, "channel": "ops"},
            "cloudshark": {"upload": True, "host": "cs", "port": 8443, "scheme": "http",
                           "token": "env:T", "timeout": 15},
            "general": {"writelocal": True, "localdir": "/data", "maxpackets": 16},
        },
    )  # fmt: skip
    assert parse_flags(["-c", "f.toml"]).config == "f.toml"
    assert parse_flags(["--config=f.toml"]).config == "f.toml"
    # Go: a value is the next argument even if it starts with "-"; 010 is octal.
    assert parse_flags(["-redisnode", "-x", "-maxpackets", "010"]).overrides == {
        "redis": {"host": "-x"}, "general": {"maxpackets": 8},
    }  # fmt: skip


def test_zero_values_override_nothing_as_in_pcapdaemon() -> None:
    args = parse_flags(["-upload=false", "-redisport", "0", "-cshost=", "-writelocal=0"])
    assert (args.overrides, args.warnings) == ({}, ())


def test_what_pcapdaemon_ignored_is_ignored_with_a_warning() -> None:
    args = parse_flags(["-destdir", "/x", "-panic", "-upload", "false", "-writelocal"])
    assert args.overrides == {"cloudshark": {"upload": True}}
    assert args.warnings == (
        "ignoring 'false -writelocal': flags end at the first argument that is not one, as in "
        "pcapdaemon (a boolean flag is turned off with -flag=false)",
        "-panic: pcapdaemon's packet-decoding option has no meaning here; ignored",
        "-destdir: used only with -writelocal, as in pcapdaemon; ignored",
    )
    assert parse_flags(["--", "-upload"]).overrides == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nosuch"], "flag provided but not defined: -nosuch"),
        (["-config"], "flag needs an argument: -config"),
        (["---config", "x"], "bad flag syntax: ---config"),
        (["-=x"], "bad flag syntax: -=x"),
        (["-redisport", "six"], '-redisport: invalid value "six": expected an integer'),
        (["-csport=1.5"], '-csport: invalid value "1.5": expected an integer'),
        (["-upload=yes"], '-upload: invalid boolean value "yes": expected true or false'),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_flags(argv)
    assert str(info.value) == message


def pcapdaemon(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PCAPDAEMON), *argv], capture_output=True, text=True, timeout=30, check=False
    )


def test_each_flag_overrides_a_config_key_of_its_own() -> None:
    """An error about a key a flag set names that flag: one flag per key."""
    targets = [flag.target for flag in FLAGS.values() if flag.target is not None]
    assert len(targets) == len(set(targets)), targets


def test_the_script_prints_what_the_user_sees(tmp_path: Path) -> None:
    bad = pcapdaemon("-config", str(tmp_path / "x.toml"), "-redisport=x")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == (
        'pcapdaemon: -redisport: invalid value "x": expected an integer\n'
        "Run 'pcapdaemon -help' for the flags.\n"
    )
    helped = pcapdaemon("-help")
    assert helped.returncode == 0 and "-redisport int" in helped.stdout
    missing = pcapdaemon("-config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2
    assert missing.stderr == (
        f"{tmp_path / 'absent.toml'}: error: cannot read config: No such file or directory\n"
    )
    # A flag's value is validated as the file's would be, under its config name,
    # and the error says which flag gave it (the file does not hold it).
    path = tmp_path / "p.toml"
    path.write_text("[general]\nwritelocal = true\n")
    out_of_range = pcapdaemon("-config", str(path), "-redisport", "70000", "-csscheme", "ftp")
    assert out_of_range.returncode == 2
    assert out_of_range.stderr.splitlines() == [
        f"{path}: error: redis.port: must be at least 1 and at most 65535, got 70000"
        " (given as -redisport)",
        f"{path}: error: cloudshark.scheme: expected one of http, https, got 'ftp'"
        " (given as -csscheme)",
    ]
    path.write_text("[general]\nwritelocal = true\n[redis]\nport = 0\n")
    from_file = pcapdaemon("-config", str(path), "-redisnode", "r1")
    assert from_file.stderr.splitlines() == [
        f"{path}: error: redis.port: must be at least 1 and at most 65535, got 0"
    ]
    served = subprocess.run(
        [sys.executable, "-m", "pcapd", "serve", "-c", str(path), "-nosuch"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert served.returncode == 2
    assert served.stderr.startswith("pcapd serve: flag provided but not defined: -nosuch\n")


def test_started_the_pcapdaemon_way_flags_win_over_the_file(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path / "d")
    # The file names a Redis nobody listens on, another channel and directory:
    # the request is served only if every flag wins.
    dead = free_port()
    text = daemon.config_path.read_text().replace(f"port = {redis_srv.port}", f"port = {dead}")
    daemon.config_path.write_text(text.replace("writelocal = true", "writelocal = false"))
    destdir = tmp_path / "dest"
    destdir.mkdir()
    results = Results(redis_srv)
    daemon.start(
        [str(PCAPDAEMON), "-config", str(daemon.config_path), "-redisnode=127.0.0.1",
         "-redisport", str(redis_srv.port), "--redischannel", "ops", "-writelocal",
         "-destdir", str(destdir), "-maxpackets", "3"],
        channel="ops",
    )  # fmt: skip
    try:
        daemon.publish(udp_request(port := free_port(), id="over", packets=4))
        assert results.for_id("over")["error"] == "packets=4 exceeds maxpackets=3"
        daemon.publish(udp_request(port, id="pd-1", packets=3))
        traffic(port, 10, ready=lambda: daemon.started("pd-1"))
        event = results.for_id("pd-1", timeout=20)
        assert (event["status"], event["packets"]) == ("ok", 3), event
        assert Path(event["locations"]["local"]).parent == destdir
    finally:
        results.close()
        daemon.stop()


def test_logrequests_logs_every_body_before_judging_it(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_general="logrequests = true")
    results = Results(redis_srv)
    daemon.start()
    try:
        daemon.publish("not json")
        daemon.publish(udp_request(free_port(), id="seen", timeout=1, logrequest=True))
        assert results.for_id("seen")["status"] == "empty"
        log = daemon.log()
        assert 'event=request_body source=redis-pubsub:capture body="not json"' in log
        bodies = [line for line in log.splitlines() if "event=request_body" in line]
        # Logged once, not again for the request's own logrequest.
        assert len(bodies) == 2 and '\\"id\\": \\"seen\\"' in bodies[1], bodies
    finally:
        results.close()
        daemon.stop()


@pytest.mark.parametrize("naming", ["pcapd", "pcapdaemon"])
def test_local_file_names_in_both_namings(
    redis_srv: RedisServer, tmp_path: Path, naming: str
) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_general=f'naming = "{naming}"')
    results = Results(redis_srv)
    daemon.start()
    port = free_port()
    try:
        began = int(time.time())
        # Two captures of one interface started within a second.
        for request_id in ("n-1", "n-2"):
            daemon.publish(udp_request(port, id=request_id, packets=2))
        traffic(port, 20, ready=lambda: daemon.started("n-1") and daemon.started("n-2"))
        found: dict[str, str] = {}
        while len(found) < 2:
            event = results.next(20)
            found[event["id"]] = Path(event["locations"]["local"]).name
        names = [found["n-1"], found["n-2"]]
    finally:
        results.close()
        daemon.stop()
    if naming == "pcapd":
        assert all(re.fullmatch(r"testnode_lo_\d{8}T\d{6}\.\d{3}Z_n-\d\.pcap", n) for n in names)
        return
    seconds = sorted(int(re.fullmatch(r"testnode-lo-(\d+)\.pcap", n)[1]) for n in names)  # type: ignore[index]
    assert began <= seconds[0] < seconds[1] <= time.time() + 2, names
    assert sorted(p.name for p in daemon.localdir.glob("*.pcap")) == sorted(names)


def test_serve_without_a_config_takes_defaults_and_flags(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PCAPDAEMON), "-redisport", str(redis_srv.port), "-writelocal", "-destdir",
             str(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            counts = redis_srv.client().pubsub_numsub("capture")
            if counts and counts[0][1] >= 1:
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        else:
            raise AssertionError("pcapdaemon without -config did not subscribe")
    finally:
        stop_process(proc)

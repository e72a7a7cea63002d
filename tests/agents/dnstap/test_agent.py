"""The agent on its sockets, with a real redis-server: keys, dedup, filters,
bad input, several connections, TLS, Redis outages, UDP output."""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
import redis

from agents.dnstap import fstrm
from agents.dnstap.agent import MAX_ERROR_LOGS, DnstapAgent
from agents.dnstap.client import FrameWriter, read_control
from agents.dnstap.config import parse_dnstap_config
from agents.dnstap.server import ConnectionStats
from agents.log_limit import WINDOW
from agents.redis_writer import make_writer
from tests.agents.dnstap.builders import response_wire, tap_payload
from tests.agents.dnstap.harness import redis_dump, running_agent
from tests.helpers import RedisServer, wait_for

CHAIN = response_wire(
    "Alias.example.test.", "A",
    [("alias.example.test.", "CNAME", "mid.example.test."),
     ("mid.example.test.", "CNAME", "target.example.test."),
     ("target.example.test.", "A", "198.51.100.7"),
     ("target.example.test.", "A", "198.51.100.8")],
)  # fmt: skip
AAAA = response_wire("www.example.test.", "AAAA", [("www.example.test.", "AAAA", "2001:db8::10")])
NX = response_wire("nope.example.test.", "A", rcode=dns.rcode.NXDOMAIN)
GOOD_KEYS = {"client;10.9.9.9": "1", "10.9.9.9;192.0.2.10;dns": ";www.example.test.;"}
WWW = response_wire("www.example.test.", "A", [("www.example.test.", "A", "192.0.2.10")])
GOOD = tap_payload(WWW, client="10.9.9.9")


def test_keys_follow_the_schema(redis_srv: RedisServer, tmp_path: Path) -> None:
    with running_agent(redis_srv.url, tmp_path / "tap.sock") as ra:
        ra.send([tap_payload(CHAIN), tap_payload(AAAA, client="2001:db8::1"), tap_payload(NX)])
        wait_for(lambda: ra.snapshot()["keys_written"] == 9)  # client +2 is one INCRBY
        r = redis_srv.client()
        assert redis_dump(r) == {
            # +1 per final address (two) and +1 for the NXDOMAIN, as ShoDoHFlo's
            # dns_agent `answer_to_redis_` (per datagram) and `nx_to_redis_`.
            "client;127.0.0.1": "3",
            "127.0.0.1;mid.example.test.;cname": ";alias.example.test.;",
            "127.0.0.1;target.example.test.;cname": ";mid.example.test.;",
            "127.0.0.1;198.51.100.7;dns": ";target.example.test.;",
            "127.0.0.1;198.51.100.8;dns": ";target.example.test.;",
            "127.0.0.1;nope.example.test.;nx": "1",
            "client;2001:db8::1": "1",
            "2001:db8::1;2001:db8::10;dns": ";www.example.test.;",
        }
        assert 890 < r.ttl("127.0.0.1;198.51.100.7;dns") <= 900
        snap = ra.snapshot()
        assert snap["messages"] == {"CLIENT_RESPONSE": 3}
        assert (snap["responses"], snap["nxdomain"], snap["frames"]) == (3, 1, 3)


def test_dedup_is_per_client(redis_srv: RedisServer, tmp_path: Path) -> None:
    www = response_wire("www.example.test.", "A", [("www.example.test.", "A", "192.0.2.10")])
    other = response_wire("www2.example.test.", "A", [("www2.example.test.", "A", "192.0.2.10")])
    with running_agent(redis_srv.url, tmp_path / "tap.sock", dedup_window=30) as ra:
        clients = [(www, "10.0.0.1"), (www, "10.0.0.2"), (www, "10.0.0.1"), (other, "10.0.0.1")]
        ra.send([tap_payload(wire, client=client) for wire, client in clients])
        wait_for(lambda: ra.snapshot()["keys_written"] == 6)
        dump = redis_dump(redis_srv.client())
        assert dump["10.0.0.1;192.0.2.10;dns"] == ";www.example.test.;;www2.example.test.;"
        assert dump["10.0.0.2;192.0.2.10;dns"] == ";www.example.test.;"
        assert dump["client;10.0.0.1"] == "2"
        assert ra.snapshot()["deduped"] == 1


def test_append_adds_a_member_once(redis_srv: RedisServer, tmp_path: Path) -> None:
    """Without dedup, the same (client, name, address) twice reaches Redis
    twice: the key still holds the name once, its counter counts both."""
    with running_agent(redis_srv.url, tmp_path / "tap.sock", dedup_window=0) as ra:
        ra.send([tap_payload(WWW, client="10.0.0.3"), tap_payload(WWW, client="10.0.0.3")])
        wait_for(lambda: ra.snapshot()["keys_written"] == 4)
        assert ra.snapshot()["deduped"] == 0
        assert redis_dump(redis_srv.client()) == {
            "client;10.0.0.3": "2",
            "10.0.0.3;192.0.2.10;dns": ";www.example.test.;",
        }


def test_filters_are_counted_not_written(redis_srv: RedisServer, tmp_path: Path) -> None:
    mx = response_wire("example.test.", "MX", [("example.test.", "MX", "10 mx.example.test.")])
    fail = response_wire("www.example.test.", "A", rcode=dns.rcode.SERVFAIL)
    local = response_wire("printer.LOCAL.", "A", [("printer.local.", "A", "192.0.2.5")])
    with running_agent(redis_srv.url, tmp_path / "tap.sock", ignore=["local"]) as ra:
        ra.send([tap_payload(CHAIN, kind=5), tap_payload(mx), tap_payload(fail),
                 tap_payload(local), GOOD])  # fmt: skip
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        snap = ra.snapshot()
        assert snap["messages"] == {"CLIENT_QUERY": 1, "CLIENT_RESPONSE": 4}
        assert (snap["other_qtype"], snap["other_rcode"], snap["ignored"]) == (1, 1, 1)
        assert redis_dump(redis_srv.client()) == GOOD_KEYS


def _raw(ra_socket: str, data: bytes, handshake: bool = True) -> bytes:
    """Send `data` after READY/START, half-close, return what the agent sent."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(ra_socket)
        if handshake:
            FrameWriter(sock).start()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


BAD_INPUT = [
    # name, bytes after the handshake (or the whole stream), handshake?, counter, log text
    ("garbage", b"GET / HTTP/1.1\r\n\r\n", False, ("frame_errors", "UnexpectedFrame"),
     "data frame while opening"),
    ("truncated", b"\x00\x00\x01\x00" + b"x" * 10, True, ("frame_errors", "truncated"),
     "closed inside a frame, 14 bytes left over"),
    ("oversized", b"\x00\x10\x00\x00", True, ("frame_errors", "FrameTooLarge"),
     "data frame of 1048576 bytes exceeds max_frame_bytes=262144"),
    ("wrong content type", fstrm.encode_control(fstrm.CONTROL_READY, (b"protobuf:other",)),
     False, ("frame_errors", "ContentTypeError"), "READY offers [protobuf:other]"),
    ("bad protobuf", fstrm.encode_data(b"\xff\xfe\xfd"), True, ("decode_errors", "BadProtobuf"),
     "not a dnstap protobuf"),
    ("unparsable dns", fstrm.encode_data(tap_payload(b"\x00\x01\x81\x00\x00\x01")), True,
     ("decode_errors", "DnsFormError"), "shorter than the DNS header"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "handshake", "counter", "text"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_counted_logged_and_survived(
    redis_srv: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    handshake: bool,
    counter: tuple[str, str],
    text: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="pcapd.agents.dnstap")
    path = tmp_path / "tap.sock"
    with running_agent(redis_srv.url, path) as ra:
        _raw(str(path), data, handshake)
        group, kind = counter
        wait_for(lambda: ra.snapshot()[group].get(kind) == 1)
        assert any(text in caplog.handler.format(r) for r in caplog.records), caplog.text
        ra.send([GOOD])  # the next good connection is served
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        assert redis_dump(redis_srv.client()) == GOOD_KEYS


def test_handshake_replies_and_unidirectional_tcp(redis_srv: RedisServer, tmp_path: Path) -> None:
    with running_agent(redis_srv.url, None, listen="127.0.0.1:0") as ra:
        with socket.create_connection(("127.0.0.1", ra.tcp_port), timeout=5) as sock:
            sock.sendall(fstrm.encode_control(fstrm.CONTROL_READY, (b"x", fstrm.CONTENT_TYPE)))
            assert read_control(sock) == fstrm.Control(fstrm.CONTROL_ACCEPT, (fstrm.CONTENT_TYPE,))
            sock.sendall(fstrm.encode_control(fstrm.CONTROL_START, (fstrm.CONTENT_TYPE,)))
            sock.sendall(fstrm.encode_data(GOOD) + fstrm.encode_control(fstrm.CONTROL_STOP))
            assert read_control(sock) == fstrm.Control(fstrm.CONTROL_FINISH)
            assert sock.recv(10) == b""  # and the agent closes
        ra.send([tap_payload(AAAA)], bidirectional=False)
        wait_for(lambda: ra.snapshot()["keys_written"] == 4)
        assert ra.snapshot()["frame_errors"] == {}


def test_many_connections_at_once(redis_srv: RedisServer, tmp_path: Path) -> None:
    def sender(n: int) -> None:
        payloads = [tap_payload(CHAIN, client=f"10.1.{n}.{i}") for i in range(200)]
        ra.send(payloads)

    with running_agent(redis_srv.url, tmp_path / "tap.sock") as ra:
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: ra.snapshot()["keys_written"] == 6 * 200 * 5)
        assert ra.snapshot()["connections_opened"] == 6
        assert redis_srv.client().get("10.1.5.199;198.51.100.8;dns") == b";target.example.test.;"


def test_max_connections_refuses_the_next_client(
    redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tap.sock"
    # A long handshake timeout: the first client must still hold its slot
    # when the second arrives, however loaded the machine is.
    options: dict[str, Any] = {"max_connections": 1, "handshake_timeout": 30.0}
    with running_agent(redis_srv.url, path, **options) as ra:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(str(path))
            wait_for(lambda: ra.snapshot()["connections_open"] == 1)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second:
                second.settimeout(5)
                second.connect(str(path))
                assert second.recv(10) == b""  # refused while the first is open
            assert ra.snapshot()["connections_refused"] == 1
            assert "max_connections=1 reached" in caplog.text
        wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        ra.send([GOOD])  # the freed slot serves the next client
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        assert ra.snapshot()["frame_errors"] == {}


def test_handshake_timeout_closes_a_silent_client(
    redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tap.sock"
    with running_agent(redis_srv.url, path, handshake_timeout=0.3) as ra:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.settimeout(5)
            idle.connect(str(path))
            assert idle.recv(10) == b""  # no START within 0.3 s: closed
        wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        assert ra.snapshot()["frame_errors"] == {"handshake_timeout": 1}
        assert "no START within 0.3s" in caplog.text
        ra.send([GOOD])
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)


def test_a_connection_stalled_inside_a_frame_is_closed_and_frees_its_slot(
    redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tap.sock"
    frame = fstrm.encode_data(GOOD)
    with running_agent(redis_srv.url, path, max_connections=1, frame_timeout=1.0,
                       dedup_window=0) as ra:  # fmt: skip
        with ra.connect() as stalled:
            FrameWriter(stalled).start()
            stalled.sendall(frame[:10])  # half a frame after START, then nothing
            assert stalled.recv(10) == b""  # closed, though it is past the handshake
        wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        assert ra.snapshot()["frame_errors"] == {"frame_timeout": 1}
        assert "not finished within 1.0s (10 bytes held)" in caplog.text
        # Its slot serves the next writer; one whose every write ends inside a
        # frame, for longer than frame_timeout in all, is not cut: each of its
        # frames is whole within it.
        with ra.connect() as slow:
            FrameWriter(slow).start()
            stream = frame * 6
            for start in range(0, len(stream), len(frame) - 3):
                slow.sendall(stream[start : start + len(frame) - 3])
                time.sleep(0.25)
            FrameWriter(slow).stop()
        wait_for(lambda: ra.snapshot()["keys_written"] == 12)
        assert ra.snapshot()["frame_errors"] == {"frame_timeout": 1}
        assert redis_dump(redis_srv.client()) == {**GOOD_KEYS, "client;10.9.9.9": "6"}


def test_tls_listener(
    redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=dnstap",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    opts: dict[str, Any] = {"listen": "127.0.0.1:0", "tls_cert": str(cert), "tls_key": str(key)}
    with running_agent(redis_srv.url, None, **opts) as ra:
        with socket.create_connection(("127.0.0.1", ra.tcp_port), timeout=5) as plain:
            plain.sendall(fstrm.encode_control(fstrm.CONTROL_READY, (fstrm.CONTENT_TYPE,)))
            assert plain.recv(100) == b""  # no TLS: closed
        wait_for(lambda: ra.snapshot()["frame_errors"] == {"tls_handshake": 1})
        assert "TLS handshake failed" in caplog.text
        context = ssl.create_default_context(cafile=str(cert))
        raw = socket.create_connection(("127.0.0.1", ra.tcp_port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            writer = FrameWriter(sock)
            writer.start()
            writer.write([GOOD])
            writer.stop()
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        assert redis_dump(redis_srv.client()) == GOOD_KEYS


def test_redis_outage_drops_are_counted_and_writes_resume(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    opts: dict[str, Any] = {"max_queue_ops": 100, "batch_ops": 10}
    with running_agent(private_redis.url, tmp_path / "tap.sock", **opts) as ra:
        ra.send([tap_payload(AAAA, client="10.2.0.1")])
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        private_redis.stop()
        # 300 lookups x 2 operations while Redis is down: the queue keeps 100.
        ra.send([tap_payload(AAAA, client=f"10.2.1.{i}") for i in range(150)])
        ra.send([tap_payload(AAAA, client=f"10.2.2.{i}") for i in range(150)])
        wait_for(lambda: ra.snapshot()["keys_dropped"] >= 200)
        # A failed idle PING is no failed write: the count comes with the
        # first write round trip after its backoff.
        wait_for(lambda: ra.snapshot()["redis_errors"] >= 1, timeout=15)
        assert ra.agent.writer.queue_depth <= 100
        private_redis.start()
        wait_for(lambda: ra.flushed(), timeout=15)
        ra.send([GOOD])
        wait_for(lambda: private_redis.client().get("client;10.9.9.9") == b"1", timeout=15)
        snap = ra.snapshot()
        assert snap["keys_written"] + snap["keys_dropped"] == 2 + 600 + 2
        assert private_redis.client().get("10.9.9.9;192.0.2.10;dns") == b";www.example.test.;"


def test_udp_json_datagrams(redis_srv: RedisServer, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        target = f"127.0.0.1:{rx.getsockname()[1]}"
        with running_agent(redis_srv.url, tmp_path / "tap.sock", udp_output=target) as ra:
            ra.send([tap_payload(CHAIN), tap_payload(NX)])
            got = [json.loads(rx.recv(65535)) for _ in range(3)]
            assert ra.snapshot()["udp_sent"] == 3
    chain = ["target.example.test.", "mid.example.test.", "alias.example.test."]
    assert got == [
        {"chain": chain, "client": "127.0.0.1", "qtype": "A", "status": "NOERROR",
         "address": "198.51.100.7", "id": 1},
        {"chain": chain, "client": "127.0.0.1", "qtype": "A", "status": "NOERROR",
         "address": "198.51.100.8", "id": 2},
        {"chain": ["nope.example.test."], "client": "127.0.0.1", "qtype": "A",
         "status": "NXDOMAIN", "id": 3},
    ]  # fmt: skip


def test_stale_socket_is_replaced_other_files_are_not(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "tap.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    group = grp.getgrgid(os.getgid()).gr_name
    with running_agent(redis_srv.url, path, socket_mode="0600", socket_group=group) as ra:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(path).st_gid == os.getgid()
        ra.send([GOOD])
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
    assert not path.exists()
    path.write_text("not a socket")
    with (
        pytest.raises(OSError, match="exists and is not a socket"),
        running_agent(redis_srv.url, path),
    ):
        pass
    assert path.read_text() == "not a socket"


def test_a_bad_connection_leaves_the_others_open(redis_srv: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "tap.sock"
    with running_agent(redis_srv.url, path) as ra, socket.socket(socket.AF_UNIX) as good:
        good.settimeout(5)
        good.connect(str(path))
        writer = FrameWriter(good)
        writer.start()
        _raw(str(path), b"\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x09")  # bad control
        wait_for(lambda: ra.snapshot()["frame_errors"] == {"ControlFrameError": 1})
        writer.write([GOOD])
        writer.stop()
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        assert redis_dump(redis_srv.client()) == GOOD_KEYS


def test_silent_tls_clients_do_not_keep_their_slots(redis_srv: RedisServer, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=dnstap",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    opts: dict[str, Any] = {"listen": "127.0.0.1:0", "tls_cert": str(cert), "tls_key": str(key),
                            "max_connections": 3, "handshake_timeout": 1.0}  # fmt: skip
    with running_agent(redis_srv.url, None, **opts) as ra:
        # Three clients that connect and never start TLS: each fills a slot
        # until the handshake times out, then must give it back.
        silent = [socket.create_connection(("127.0.0.1", ra.tcp_port)) for _ in range(3)]
        try:
            wait_for(lambda: ra.snapshot()["connections_opened"] == 3)
            for sock in silent:
                sock.settimeout(5)
                assert sock.recv(10) == b""  # the agent hangs up
            wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        finally:
            for sock in silent:
                sock.close()
        assert ra.snapshot()["frame_errors"] == {"tls_handshake": 3}
        assert ra.snapshot()["connections_closed"] == 3
        context = ssl.create_default_context(cafile=str(cert))
        # TLS up, then no Frame Streams START: the agent's own timer frees it.
        raw = socket.create_connection(("127.0.0.1", ra.tcp_port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as quiet:
            assert quiet.recv(10) == b""
        wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        assert ra.snapshot()["frame_errors"] == {"tls_handshake": 3, "handshake_timeout": 1}
        raw = socket.create_connection(("127.0.0.1", ra.tcp_port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            writer = FrameWriter(sock)
            writer.start()
            wait_for(lambda: ra.snapshot()["connections_open"] == 1)
            writer.write([GOOD])
            writer.stop()
        wait_for(lambda: ra.snapshot()["keys_written"] == 2)
        wait_for(lambda: ra.snapshot()["connections_open"] == 0)
        snap = ra.snapshot()
        assert (snap["connections_refused"], snap["connections_closed"]) == (0, 5)
        assert redis_dump(redis_srv.client()) == GOOD_KEYS


def test_bad_message_lines_are_rate_limited_without_stats(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """stats_interval = 0 logs no stats; the log budget still renews each window."""
    config = parse_dnstap_config({"socket": "", "listen": "127.0.0.1:0", "stats_interval": 0})
    now = [1000.0]
    writer = make_writer(config, lambda: redis.Redis.from_url(redis_srv.url))
    agent = DnstapAgent(config, writer, clock=lambda: now[0])
    conn = ConnectionStats(1, "tcp", "127.0.0.1:1")
    caplog.set_level(logging.WARNING, logger="pcapd.agents.dnstap")

    def bad_lines() -> int:
        return sum("event=dnstap_bad_message" in caplog.handler.format(r) for r in caplog.records)

    for _ in range(MAX_ERROR_LOGS + 50):
        agent.handle(b"\xff\xfe\xfd", conn)
    assert bad_lines() == MAX_ERROR_LOGS
    snapshot = agent.snapshot()
    assert snapshot["decode_errors"] == {"BadProtobuf": MAX_ERROR_LOGS + 50}
    assert snapshot["bad_logs_suppressed"] == 50
    now[0] += WINDOW
    agent.handle(b"\xff\xfe\xfd", conn)
    assert bad_lines() == MAX_ERROR_LOGS + 1
    assert agent.snapshot()["bad_logs_suppressed"] == 50


# ShoDoHFlo's values for the same input. Its dnstap_agent (`MyMapper.map_fields`)
# sends one datagram per final address and dns_agent writes each
# (`RedisHandler.answer_to_redis_`: `client;` INCR, then the chain); an
# "address" that is no address (NODATA, a CNAME out of the zone) fails
# `ip_address()` in `Consumer.process_message`, so nothing is written.
THREE = response_wire(
    "three.example.test.", "A",
    [("three.example.test.", "A", "192.0.2.1"), ("three.example.test.", "A", "192.0.2.2"),
     ("three.example.test.", "A", "192.0.2.3")],
)  # fmt: skip
NODATA = response_wire("v6only.example.test.", "A")
DANGLING = response_wire(
    "away.example.test.", "A", [("away.example.test.", "CNAME", "elsewhere.invalid.")]
)


def test_client_counts_each_address_and_nothing_without_one(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    with running_agent(redis_srv.url, tmp_path / "tap.sock") as ra:
        ra.send([tap_payload(NODATA), tap_payload(DANGLING), tap_payload(THREE)])
        wait_for(lambda: ra.snapshot()["keys_written"] == 4)
        assert redis_dump(redis_srv.client()) == {
            "client;127.0.0.1": "3",
            "127.0.0.1;192.0.2.1;dns": ";three.example.test.;",
            "127.0.0.1;192.0.2.2;dns": ";three.example.test.;",
            "127.0.0.1;192.0.2.3;dns": ";three.example.test.;",
        }
        snap = ra.snapshot()
        assert (snap["responses"], snap["no_address"]) == (1, 2)


def test_every_nxdomain_counts_and_its_key_unescapes_semicolons(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """dns_agent's `nx_to_redis`: INCR every time, name with `\\;` made `;`."""
    semi = response_wire("a\\;b.example.test.", "A", rcode=dns.rcode.NXDOMAIN)
    with running_agent(redis_srv.url, tmp_path / "tap.sock", dedup_window=30) as ra:
        ra.send([tap_payload(NX), tap_payload(NX), tap_payload(semi)])
        wait_for(lambda: ra.snapshot()["keys_written"] == 6)
        assert redis_dump(redis_srv.client()) == {
            "client;127.0.0.1": "3",
            "127.0.0.1;nope.example.test.;nx": "2",
            "127.0.0.1;a;b.example.test.;nx": "1",
        }
        assert ra.snapshot()["deduped"] == 0


def test_global_dedup_scope_is_shodohflos(redis_srv: RedisServer, tmp_path: Path) -> None:
    """dnstap_agent's `MyMapper.filter` remembers (qname, qtype) for any client."""
    with running_agent(
        redis_srv.url, tmp_path / "tap.sock", dedup_window=30, dedup_scope="global"
    ) as ra:
        ra.send([tap_payload(WWW, client="10.0.0.1"), tap_payload(WWW, client="10.0.0.2"),
                 tap_payload(AAAA, client="10.0.0.2")])  # fmt: skip
        wait_for(lambda: ra.snapshot()["keys_written"] == 4)
        assert redis_dump(redis_srv.client()) == {
            "client;10.0.0.1": "1",
            "10.0.0.1;192.0.2.10;dns": ";www.example.test.;",
            "client;10.0.0.2": "1",
            "10.0.0.2;2001:db8::10;dns": ";www.example.test.;",
        }
        assert ra.snapshot()["deduped"] == 1

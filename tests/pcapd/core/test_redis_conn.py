"""Connecting from `[redis]`: ACL users, passwords, TLS, unix sockets; real servers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.redis_errors import CLUSTER_HINT, error_code, refusal
from pcapd.core.redis_wire import exchange, pack_command
from pcapd.core.secret import Secret
from tests.helpers import RedisServer, free_port, redis_server, run, stop_process, wait_for


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path, password="adminpw") as server:
        server.client().acl_setuser(
            "pcapd", enabled=True, passwords=["+capturepw"], commands=["+@all"], keys=["*"],
            channels=["*"],
        )  # fmt: skip
        yield server


def test_acl_user_by_url_and_by_fields(acl_server: RedisServer) -> None:
    by_url = RedisConfig(url=Secret(f"redis://pcapd:capturepw@127.0.0.1:{acl_server.port}/0"))
    by_fields = RedisConfig(port=acl_server.port, username="pcapd", auth=Secret("capturepw"))
    for config in (by_url, by_fields):
        client = connect(config)
        assert client.acl_whoami() == "pcapd"


def test_wrong_password_is_an_error_that_hides_the_password(acl_server: RedisServer) -> None:
    config = RedisConfig(url=Secret(f"redis://pcapd:nope-secret@127.0.0.1:{acl_server.port}/0"))
    with pytest.raises(redis.AuthenticationError) as info:
        connect(config).ping()
    assert "nope-secret" not in str(info.value)
    assert "nope-secret" not in config.describe() and "nope-secret" not in repr(config)


def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", str(sock),
         "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(sock.exists)
        assert connect(RedisConfig(url=Secret(f"unix://{sock}"))).ping()
    finally:
        stop_process(proc)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
        "-out", str(ca), "-days", "1", "-subj", "/CN=pcapd test CA")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=localhost")  # fmt: skip
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port, ca
    finally:
        stop_process(proc)


def test_tls_by_url_and_by_fields_verifies_the_server(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    by_url = RedisConfig(url=Secret(f"rediss://127.0.0.1:{port}/0"), tls_ca=str(ca))
    by_fields = RedisConfig(port=port, tls=True, tls_ca=str(ca))

    def ping(config: RedisConfig) -> bool:
        try:
            return bool(connect(config).ping())
        except redis.ConnectionError:
            return False

    wait_for(lambda: ping(by_url), timeout=10)
    assert ping(by_fields)
    # Without the CA the server's certificate is not trusted.
    with pytest.raises(redis.ConnectionError):
        connect(RedisConfig(port=port, tls=True)).ping()


def _reply_error(call: Callable[[], object]) -> redis.ResponseError:
    with pytest.raises(redis.ResponseError) as caught:
        call()
    return caught.value


def test_error_replies_are_classed_by_their_code(redis_srv: RedisServer) -> None:
    """Real replies: those that come back the same however often sent are
    for good; a node loading or out of memory is not; connection errors never."""
    client = redis_srv.client()
    client.set("text", "x")
    wrongtype = _reply_error(lambda: client.xadd("text", {"a": "1"}))
    script_wrongtype = _reply_error(
        lambda: client.eval("return redis.call('LPUSH', KEYS[1], 1)", 1, "text")
    )
    syntax = _reply_error(lambda: client.xadd("s", {"a": "1"}, id="bad-id"))
    client.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@all", "-eval"])  # fmt: skip
    limited = redis.Redis(port=redis_srv.port, username="limited", password="pw")
    noperm = _reply_error(lambda: limited.eval("return 1", 0))
    limited.close()
    client.config_set("maxmemory", 1)
    try:
        oom = _reply_error(lambda: client.set("more", "x" * 1000))
    finally:
        client.config_set("maxmemory", 0)
    assert [error_code(e) for e in (wrongtype, script_wrongtype, noperm, oom)] == [
        "WRONGTYPE", "WRONGTYPE", "NOPERM", "OOM",
    ]  # fmt: skip
    for refused in (wrongtype, script_wrongtype, syntax, noperm):
        for cluster in (False, True):
            assert refusal(refused, cluster=cluster) is not None, refused
    # What is logged is the error as Redis spelled it, its code put back.
    assert refusal(noperm, cluster=False) == f"NOPERM {noperm}"
    assert refusal(oom, cluster=False) is None
    not_now = ("BUSY", "LOADING", "NOREPLICAS", "MISCONF", "READONLY", "TRYAGAIN", "NOSCRIPT",
               "CLUSTERDOWN", "MASTERDOWN")  # fmt: skip
    for code in not_now:
        assert refusal(redis.ResponseError(f"{code} the server says"), cluster=False) is None
    ask = redis.ResponseError("ASK 3999 127.0.0.1:6381")
    assert refusal(ask, cluster=True) is None
    assert refusal(ask, cluster=False) == f"ASK 3999 127.0.0.1:6381: {CLUSTER_HINT}"
    assert refusal(redis.ConnectionError("gone"), cluster=False) is None
    assert refusal(42, cluster=False) is None  # a reply, not an error
    assert error_code(redis.ConnectionError("gone")) == "ConnectionError"
    assert error_code("WRONGTYPE Operation against a key") == "WRONGTYPE"  # a script's text


def test_bytes_past_the_replies_asked_for_close_the_connection(redis_srv: RedisServer) -> None:
    """Two commands sent, one reply asked for (a caller's count out of step):
    the reply read stands, and the connection, whose stream holds the other
    (read with it: Redis answers a pipeline in one write), is closed rather
    than handed to the next exchange, which reads its own reply."""
    client = redis.Redis(port=redis_srv.port, socket_timeout=5)
    try:
        packed = pack_command(("PING",)) + pack_command(("ECHO", "not yours"))
        assert exchange(client, packed, 1) == [b"PONG"]
        [conn] = client.connection_pool._available_connections
        assert conn._sock is None  # closed, not kept with a reply in flight
        assert exchange(client, pack_command(("ECHO", "mine")), 1) == [b"mine"]
    finally:
        client.close()

"""Real servers and network namespaces for tests, started and ended by PID."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster as RedisClusterClient

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces and veth")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def logged(
    caplog: pytest.LogCaptureFixture, name: str, logger: str | None = None
) -> list[dict[str, Any]]:
    """The fields of every `name` event caught (pcapd.core.logs.event), from
    `logger` alone if given."""
    return [
        getattr(r, "pcapd_fields", {}) for r in caplog.records
        if r.getMessage() == name and logger in (None, r.name)
    ]  # fmt: skip


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll `predicate()` until true; fail the test with a clear message if not."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate}")


def run_until_killed(port: int) -> None:
    """A script that runs until SCRIPT KILL: Redis answers others BUSY."""
    with redis.Redis(port=port) as spinner, contextlib.suppress(redis.ResponseError):  # killed
        spinner.eval("while true do end", 0)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    """A private redis-server on a free loopback port; `restart` keeps the port."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None
    unixsocket: Path | None = None  # also listen here (for agents inside namespaces)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.unixsocket:
            args += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.ready, timeout=10)
        except BaseException:
            self.stop()  # not left running behind a failed start (a ResourceWarning later)
            raise

    def ready(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@contextlib.contextmanager
def redis_server(
    workdir: Path, password: str | None = None, unixsocket: Path | None = None
) -> Iterator[RedisServer]:
    server = RedisServer(
        port=free_port(), workdir=workdir, password=password, unixsocket=unixsocket
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


OPERATIONS_DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def documented_acl(user: str, password: str) -> list[list[str]]:
    """The `ACL SETUSER <user> ...` lines of docs/operations.md, each as its
    rules, `password` put in, in the doc's order: the one server's first,
    then the variants and extras the user's section gives."""
    lines = [line.split()[3:] for line in OPERATIONS_DOC.read_text().splitlines()
             if line.startswith(f"ACL SETUSER {user} ")]  # fmt: skip
    return [[f">{password}" if rule == ">PASSWORD" else rule for rule in rules]
            for rules in lines]  # fmt: skip


def set_acl_user(port: int, user: str, rules: Sequence[str]) -> None:
    """`ACL SETUSER user` on the node at `port` with `rules`."""
    with redis.Redis(port=port) as admin:
        admin.execute_command("ACL", "SETUSER", user, *rules)


CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster's bus listens on port + 10000
CLUSTER_READY_TIMEOUT = 60.0
CLUSTER_NODE_TIMEOUT_MS = 2000
# ms: with replicas, a dead primary is failed over ~1-3 s after this
CLUSTER_FAILOVER_NODE_TIMEOUT_MS = 1000


CLUSTER_PORT_TRIES = 5


class NodeExited(AssertionError):
    """A cluster node's redis-server ended at start (its port or bus port taken)."""


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


@dataclass
class RedisCluster:
    """Redis Cluster of `size` primaries, each with `replicas` replicas, on free
    loopback ports.

    Each node keeps its cluster config file and, with `durable`, an AOF
    fsynced on every write, so `kill` then `start_node` brings a primary back
    with its slots and every write it acknowledged. With replicas the node
    timeout is short, so a killed primary's replica takes over in seconds.
    """

    workdir: Path
    size: int = 3
    durable: bool = False
    replicas: int = 0
    netns: str | None = None  # run inside this network namespace (its own loopback)
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def _wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """pcapd's spelling of a cluster seed."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        self.ports = []
        for _ in range(self.size * (1 + self.replicas)):
            self.ports.append(self._start_on_a_free_port())
        run(*self._wrap, shutil.which("redis-cli") or "/usr/bin/redis-cli", "--cluster",
            "create", *self.nodes, "--cluster-replicas", str(self.replicas),
            "--cluster-yes")  # fmt: skip
        wait_for(self.ok, timeout=CLUSTER_READY_TIMEOUT, interval=0.1)

    def _start_on_a_free_port(self) -> int:
        """A new node's port: free with its bus port, apart from the other
        nodes' ports and bus ports, and tried again when a process elsewhere
        (another test's server) took one of the two before the node bound it."""
        taken = {p for port in self.ports for p in (port, port + CLUSTER_BUS_OFFSET)}
        for attempt in range(CLUSTER_PORT_TRIES):
            port = free_cluster_port()
            if {port, port + CLUSTER_BUS_OFFSET} & taken:
                continue
            try:
                self.start_node(port)
            except NodeExited:
                if attempt == CLUSTER_PORT_TRIES - 1:
                    raise
                continue
            return port
        raise AssertionError(f"no free cluster port in {CLUSTER_PORT_TRIES} tries")

    def start_node(self, port: int) -> None:
        """Start (or start again) the node on `port`, with its config file;
        a process still running there is stopped first, not dropped."""
        if port in self.procs:
            stop_process(self.procs.pop(port))
        workdir = self.workdir / str(port)
        workdir.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else [
            "--appendonly", "no"]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            [*self._wrap, shutil.which("redis-server") or "/usr/bin/redis-server",
             "--port", str(port),
             "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(workdir / "nodes.conf"),
             "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", *persist,
             "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self.procs[port]
        try:
            wait_for(lambda: self._ping(port) or proc.poll() is not None, timeout=10)
            if proc.poll() is not None:
                raise NodeExited(f"redis-server on port {port} exited {proc.returncode}")
        except BaseException:
            stop_process(self.procs.pop(port))
            raise

    @property
    def node_timeout_ms(self) -> int:
        return CLUSTER_FAILOVER_NODE_TIMEOUT_MS if self.replicas else CLUSTER_NODE_TIMEOUT_MS

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(sig)
        proc.wait(30)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every node stopped (SIGSTOP: its sockets accept, nothing answers)
        for the block; then continued, and the cluster waited for whole."""
        procs = list(self.procs.values())
        try:
            for proc in procs:
                proc.send_signal(signal.SIGSTOP)
            yield
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
            wait_for(self.ok, timeout=CLUSTER_READY_TIMEOUT, interval=0.1)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, decode_responses=True)

    def cli(self, port: int, *args: str) -> str:
        done = run(*self._wrap, shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p",
                   str(port), *args, check=False)  # fmt: skip
        return done.stdout

    def _ping(self, port: int) -> bool:
        if self.netns:
            return self.cli(port, "PING").strip() == "PONG"
        try:
            with self.node(port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def ok(self) -> bool:
        """Every node up and saying cluster_state:ok."""
        if self.netns:
            return all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO") for p in self.ports)
        try:
            for port in self.ports:
                with self.node(port) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
        except (redis.RedisError, AttributeError):
            return False
        return True

    def live(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def slots_of(self, port: int) -> set[int]:
        """The slots the primary on `port` serves, as a live node sees it."""
        with self.node(self.live()[0]) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        return {
            slot
            for first, last, primary, *_ in ranges
            if int(primary[1]) == port
            for slot in range(first, last + 1)
        }

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the replicas of the primary on `port`."""
        with self.node(port) as client:
            info = client.info("replication")
        return [int(info[f"slave{i}"]["port"]) for i in range(int(info["connected_slaves"]))]

    def replicated(self, port: int) -> bool:
        """Every replica of the primary on `port` is in sync with it (its link
        up, not still in its first sync: a replica that never synced may not
        take over) and has applied all it was sent (its slave_repl_offset is
        the primary's master_repl_offset)."""
        replicas = self.replicas_of(port)
        with self.node(port) as client:
            offset = client.info("replication")["master_repl_offset"]
        for replica in replicas:
            with self.node(replica) as client:
                info = client.info("replication")
            if info.get("master_link_status") != "up" or info.get("slave_repl_offset") != offset:
                return False
        return bool(replicas)

    def primaries(self) -> list[int]:
        """The ports of the primaries serving slots now, as a live node sees it."""
        with self.node(self.live()[0]) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        return sorted({int(primary[1]) for _, _, primary, *_ in slots})

    def promoted(self, dead: int, replicas: list[int]) -> int | None:
        """Once one of `replicas` (the dead primary's, read before it died)
        took over its slots and every live node says cluster_state:ok: that
        replica's port."""
        try:
            for port in self.live():
                with self.node(port) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return None
            primaries = self.primaries()
        except (redis.RedisError, AttributeError):
            return None
        new = set(primaries) & set(replicas)
        return new.pop() if dead not in primaries and len(new) == 1 else None

    def wait_promoted(self, dead: int, replicas: list[int], timeout: float) -> int:
        """Wait for `promoted`; on a timeout, fail with the tail of each of
        `replicas`' logs, which say why none took over (its data too old,
        votes not granted ...)."""
        found: list[int | None] = [None]

        def promoted_yet() -> bool:
            found[0] = self.promoted(dead, replicas)
            return found[0] is not None

        try:
            wait_for(promoted_yet, timeout=timeout, interval=0.1)
        except AssertionError:
            logs = {port: self.log_tail(port) for port in replicas}
            raise AssertionError(f"no replica of {dead} took over in {timeout} s: {logs}") from None
        assert found[0] is not None
        return found[0]

    def log_tail(self, port: int, lines: int = 15) -> list[str]:
        try:
            text = (self.workdir / str(port) / "redis.log").read_text(errors="replace")
        except OSError as exc:
            return [f"no log: {exc}"]
        return text.splitlines()[-lines:]

    def client(self) -> RedisClusterClient:
        seed = (self.live() or self.ports)[0]  # a node that is up, after a failover
        return RedisClusterClient(host="127.0.0.1", port=seed, decode_responses=True,
                                  socket_timeout=5)  # fmt: skip

    def reset(self) -> None:
        """Empty, as new: keys, scripts, other clients, ACL users and log; a node that
        is down is started again. Keys are flushed on the primaries only (a
        replica refuses FLUSHALL: READONLY), and their replicas waited for."""
        for port in self.ports:
            proc = self.procs.get(port)
            if proc is None or proc.poll() is not None:
                self.start_node(port)
        wait_for(self.ok, timeout=CLUSTER_READY_TIMEOUT, interval=0.1)
        flushed = []
        for port in self.ports:
            with self.node(port) as client:
                client.client_kill_filter(_type="normal", skipme=True)
                client.client_kill_filter(_type="pubsub")
                if client.info("replication")["role"] == "master":
                    client.flushall()
                    flushed.append(port)
                client.script_flush()
                for user in client.acl_users():
                    if user != "default":
                        client.acl_deluser(user)
                client.acl_log_reset()  # what a test's ACL denied is not the next one's
        if self.replicas:
            for port in flushed:
                wait_for(lambda p=port: self.replicated(p), timeout=CLUSTER_READY_TIMEOUT)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)
        self.procs.clear()

    def keyspace(self) -> dict[str, tuple[str, object]]:
        """Every key of every primary: its type and value, to compare with a
        single server's."""
        if self.netns:  # read from inside the namespace, as JSON
            script = ("import json, sys, pathlib; from tests.helpers import RedisCluster; "
                      "c = RedisCluster(pathlib.Path(), ports=[int(p) for p in sys.argv[1:]]); "
                      "print(json.dumps(c.keyspace()))")  # fmt: skip
            out = subprocess.run(
                [*self._wrap, sys.executable, "-c", script, *map(str, self.ports)],
                capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
            ).stdout  # fmt: skip
            return {k: (kind, value) for k, (kind, value) in json.loads(out).items()}
        found: dict[str, tuple[str, object]] = {}
        for port in self.ports:
            with self.node(port) as client:
                found.update(keyspace(client))
        return found


def keyspace(client: redis.Redis) -> dict[str, tuple[str, object]]:
    """Every key of one server (a text client): its type and value."""
    found: dict[str, tuple[str, object]] = {}
    key: str
    for key in client.scan_iter(count=1000):
        kind = str(client.type(key))
        value: object = None  # streams and the rest: the type only
        if kind == "string":
            value = client.get(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        found[key] = (kind, value)
    return found


MOTO_START_TIMEOUT = 30.0


@dataclass
class MotoProcess:
    """`moto_server` (S3, SQS, ...) as a child process on a loopback port.

    A child process, not a thread of the test run, so a test can kill it like a
    lost peer and `start` it again on the same port, with fresh (empty) state.
    `env` is added to the environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`
    makes it check credentials like AWS.
    """

    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        assert exe.exists(), f"moto_server is not installed in the virtualenv ({exe})"
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )  # fmt: skip
        self.proc = proc
        wait_for(lambda: self._up() or proc.poll() is not None, timeout=MOTO_START_TIMEOUT)
        assert proc.poll() is None, f"moto_server exited with {proc.returncode}"

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: the peer vanishes mid-request, as a crashed or unreachable one."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def moto_process(env: dict[str, str] | None = None) -> Iterator[MotoProcess]:
    """A started `MotoProcess` on a free port, stopped on exit."""
    server = MotoProcess(port=free_port(), env=dict(env or {}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class SilentServer:
    """A TCP server on loopback that accepts, reads whatever comes and never
    answers: an S3 endpoint that hangs. `close()` ends it and its connections."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        """Stop accepting, then end every connection (each `_drain` closes its own)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(2)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


class ReplyCutter:
    """A TCP proxy on loopback to a server's `port`. It passes every request
    on; while `swallow` is set, a connection that sends `command` (after its
    handshake, which passes) gets no more replies (past the first
    `pass_bytes` of them), and `cut()` then closes the connections: the
    server ran the commands, the client lost the replies (a connection
    broken at the worst moment). While `drop` is set, what a connection
    sends from its first `command` on is not passed on at all (lost on the
    way: the server never runs it, the client waits for its replies)."""

    def __init__(self, port: int, command: bytes = b"PUBLISH", pass_bytes: int = 0) -> None:
        self._upstream = port
        self._command = command
        self._pass_bytes = pass_bytes
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.swallow = False
        self.drop = False
        self.accepted = 0
        # Reply bytes passed on once held (at most `pass_bytes` a
        # connection), each counted after it is written to the client.
        self.passed = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self.accepted += 1
                self._pairs.append((client, upstream))
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        held = threading.Event()  # this connection's replies are swallowed from now on
        replies = threading.Thread(target=self._replies, args=(upstream, client, held),
                                   daemon=True)  # fmt: skip
        replies.start()
        dropping = False
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.swallow and self._command in data:
                    held.set()
                dropping = dropping or (self.drop and self._command in data)
                if not dropping:
                    upstream.sendall(data)
        self._end(client, upstream)
        replies.join()
        client.close()
        upstream.close()

    def _replies(
        self, upstream: socket.socket, client: socket.socket, held: threading.Event
    ) -> None:
        allowance = self._pass_bytes  # of the replies once held
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                passing = held.is_set()
                if passing:
                    data, allowance = data[:allowance], max(0, allowance - len(data))
                if data:
                    client.sendall(data)
                    if passing:
                        with self._lock:
                            self.passed += len(data)
        self._end(client, upstream)

    @staticmethod
    def _end(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Close every connection made so far, both ways."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._end(*pair)

    def close(self) -> None:
        self._end(self._listener)
        self._listener.close()
        self.cut()


@contextlib.contextmanager
def reply_cutter(port: int) -> Iterator[ReplyCutter]:
    proxy = ReplyCutter(port)
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "3m") at `path` for a full-disk test (root)."""
    path.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        if run("umount", str(path), check=False).returncode != 0:
            run("umount", "-l", str(path), check=False)


def fill(directory: Path, leave: int) -> Path:
    """Write a file that leaves `leave` bytes free on the filesystem of `directory`."""
    vfs = os.statvfs(directory)
    filler = directory / "filler"
    filler.write_bytes(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - leave))
    return filler


@contextlib.contextmanager
def unix_redis_server(workdir: Path) -> Iterator[Path]:
    """A private redis-server on a unix socket only (no TCP port): reachable
    from inside a test's network namespaces, which share the file system."""
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", "0",
         "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ready() -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(sock)).ping())
        except redis.RedisError:
            return False

    try:
        wait_for(ready, timeout=10)
        yield sock
    finally:
        stop_process(proc)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair: `ns_a`/`dev_a` 10.200.x.1 <-> `ns_b` .2."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    addr6_a: str
    addr6_b: str

    def exec_a(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns_a, *args]

    def exec_b(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns_b, *args]


@contextlib.contextmanager
def veth_pair(subnet: int = 1) -> Iterator[VethPair]:
    """Namespaces that exist only for this test, with IPv4 and IPv6 addresses."""
    tag = uuid.uuid4().hex[:6]
    pair = VethPair(
        ns_a=f"pcapd-a-{tag}", ns_b=f"pcapd-b-{tag}",
        dev_a=f"va{tag}", dev_b=f"vb{tag}",
        addr_a=f"10.200.{subnet}.1", addr_b=f"10.200.{subnet}.2",
        addr6_a=f"fd00:200:{subnet}::1", addr6_b=f"fd00:200:{subnet}::2",
    )  # fmt: skip
    run("ip", "netns", "add", pair.ns_a)
    run("ip", "netns", "add", pair.ns_b)
    try:
        run("ip", "link", "add", pair.dev_a, "netns", pair.ns_a, "type", "veth",
            "peer", "name", pair.dev_b, "netns", pair.ns_b)  # fmt: skip
        for ns, dev, addr, addr6 in (
            (pair.ns_a, pair.dev_a, pair.addr_a, pair.addr6_a),
            (pair.ns_b, pair.dev_b, pair.addr_b, pair.addr6_b),
        ):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        run("ip", "netns", "del", pair.ns_a, check=False)
        run("ip", "netns", "del", pair.ns_b, check=False)


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """This thread in network namespace `name`; sockets and pcap handles made
    here stay bound to it after the thread goes back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        assert libc.setns(there, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            yield
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(home)
        os.close(there)

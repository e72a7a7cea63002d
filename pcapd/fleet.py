"""The fleet in Redis: each node's heartbeat, and what a request would do on each.

Each `pcapd serve` keeps one hash, `<[fleet] prefix><node>` (spelled by
`node_key` only), rewritten every `heartbeat_interval` seconds by a thread
of its own and expiring after HEARTBEATS_MISSED missed beats; a clean stop
deletes it at the first signal, a crash lets it expire. `read_fleet` lists
the hashes (SCAN, pipelined HGETALL; never KEYS) and `judge` answers, for
one node, what a request would capture there, with the controller's own
code (`request_for`, `resolve_interfaces`) and that node's bounds, which the
heartbeat carries.

What `judge` does not see: whether a signature verifies, and replays (the
keys stay on the node; an unsigned request to a node that requires
signatures is judged), duplicates, what the sinks allow (buckets, endpoints) and admission
(free slots, memory, spool, disk), which depend on the moment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import redis

from pcapd.core.backoff import RECONNECT_INITIAL, Backoff
from pcapd.core.config import (
    HEARTBEATS_MISSED,
    Config,
    ConfigError,
    FleetConfig,
    SecurityConfig,
    parse_config,
)
from pcapd.core.errors import RequestError
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, primaries
from pcapd.core.request import decode_body, interface_problem, request_for, resolve_interfaces
from pcapd.dedup import RecentIds
from pcapd.signing import SIG_FIELD, verify

log = logging.getLogger("pcapd.fleet")

SCAN_COUNT = 500  # keys per SCAN call; hashes per HGETALL pipeline
STOP_TIMEOUT = 2.0  # seconds the last write (the delete) may take at shutdown

# Deletes the hash only if this process wrote it: a second daemon started
# with the same node name by mistake must not erase the first one's beat.
_DELETE_OWN = """
if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def node_key(prefix: str, node: str) -> str:
    """The one spelling of a node's heartbeat key."""
    return f"{prefix}{node}"


def _glob(prefix: str) -> str:
    """A SCAN pattern for every key under `prefix`, its glob characters escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"


def version() -> str:
    try:
        return metadata.version("pcapd")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class NodeInterface:
    name: str
    aliases: tuple[str, ...] = ()
    linktype: int | None = None  # pcap DLT; None until a handle was opened
    present: bool = True  # the device exists on the node
    lookback: int = 0  # seconds its ring keeps ([[interface]] lookback; 0: no ring)
    lookback_bytes: int = 0  # the ring's bound (so the config reader checks it as the node did)
    ring: bool = False  # its lookback ring was started on the node
    ring_error: str | None = None  # why that ring failed since (it serves no more)


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node as its heartbeat tells it. `general` is the node's whole
    `[general]` section (no secrets there), so that `judge` parses a request
    with that node's bounds; `devices` are the names an `interface` list may
    name on it."""

    node: str
    version: str
    hostname: str
    pid: int
    instance: str
    interfaces: tuple[NodeInterface, ...]
    devices: tuple[str, ...]
    sources: tuple[str, ...]
    captures: int
    spool_files: int
    spool_bytes: int
    started: float
    last_seen: float
    general: Mapping[str, Any]
    require_signed: bool  # [security] require_signed (its keys stay on the node)
    config: Config = dataclasses.field(compare=False, repr=False)

    def to_hash(self) -> dict[str, str]:
        """Field -> text, as the hash holds it; lists and tables as JSON."""
        return {
            "node": self.node,
            "version": self.version,
            "hostname": self.hostname,
            "pid": str(self.pid),
            "instance": self.instance,
            "interfaces": json.dumps([dataclasses.asdict(i) for i in self.interfaces]),
            "devices": json.dumps(list(self.devices)),
            "sources": json.dumps(list(self.sources)),
            "captures": str(self.captures),
            "spool_files": str(self.spool_files),
            "spool_bytes": str(self.spool_bytes),
            "started": repr(self.started),
            "last_seen": repr(self.last_seen),
            "general": json.dumps(dict(self.general)),
            "require_signed": "1" if self.require_signed else "0",
        }

    @classmethod
    def from_hash(cls, fields: Mapping[bytes, bytes]) -> NodeState:
        """The inverse of `to_hash`; ValueError (saying what) for a hash this
        version cannot read."""
        text = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        try:
            interfaces = tuple(
                NodeInterface(
                    str(i["name"]),
                    tuple(map(str, i.get("aliases", ()))),
                    i.get("linktype"),
                    bool(i.get("present", True)),
                    int(i.get("lookback", 0)),
                    int(i.get("lookback_bytes", 0)),
                    bool(i.get("ring", False)),
                    None if i.get("ring_error") is None else str(i["ring_error"]),
                )
                for i in json.loads(text["interfaces"])
            )
            node, general = text["node"], json.loads(text["general"])
            return cls(
                node=node,
                version=text.get("version", "unknown"),
                hostname=text.get("hostname", ""),
                pid=int(text.get("pid", "0")),
                instance=text.get("instance", ""),
                interfaces=interfaces,
                devices=tuple(map(str, json.loads(text.get("devices", "[]")))),
                sources=tuple(map(str, json.loads(text.get("sources", "[]")))),
                captures=int(text.get("captures", "0")),
                spool_files=int(text.get("spool_files", "0")),
                spool_bytes=int(text.get("spool_bytes", "0")),
                started=float(text.get("started", "0")),
                last_seen=float(text["last_seen"]),
                general=general,
                require_signed=text.get("require_signed") == "1",
                config=_request_config(node, general, interfaces),
            )
        except KeyError as exc:
            raise ValueError(f"field {exc.args[0]!r} missing") from None
        except ConfigError as exc:
            raise ValueError(
                f"[general] or interfaces unreadable: {'; '.join(exc.errors)}"
            ) from None
        except (TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"
        }
        data["interfaces"] = [dataclasses.asdict(i) for i in self.interfaces]
        data["general"] = dict(self.general)
        return data


def _request_config(node: str, general: Any, interfaces: Sequence[NodeInterface]) -> Config:
    """A node's config as far as requests see it, read by the config reader
    (so a hash another version wrote is checked as a file would be)."""
    table = {
        "general": general,
        "interface": [
            {"name": i.name, "alias": list(i.aliases)}
            | ({"lookback": i.lookback, "lookback_bytes": i.lookback_bytes} if i.lookback else {})
            for i in interfaces
        ],
    }
    return parse_config(table, hostname=node)


# -- the heartbeat ------------------------------------------------------------
class Heartbeat:
    """A daemon thread writing `state()` to the node's hash every interval.

    It never blocks a capture: it holds no lock of the daemon's beyond what
    `state()` takes, and its Redis client has timeouts of at most one
    interval. Redis away: logged once, retried with `Backoff` (never waiting
    longer than an interval, so the node is back within one beat of Redis),
    logged again when it works.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        fleet: FleetConfig,
        node: str,
        state: Callable[[], NodeState],
    ) -> None:
        self.key = node_key(fleet.prefix, node)
        self.interval = fleet.heartbeat_interval
        self.expire_ms = math.ceil(HEARTBEATS_MISSED * self.interval * 1000)
        self.instance = uuid.uuid4().hex
        self._connect = connect
        self._state = state
        self._stop = threading.Event()
        self._backoff = Backoff(RECONNECT_INITIAL, max(RECONNECT_INITIAL, self.interval))
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._client: Client | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the beat and delete the hash, so the node leaves the list now."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        tracker = self._backoff.tracker()
        failing = False
        other: str | None = None  # the other instance last warned about
        while not self._stop.is_set():
            try:
                # Built before Redis is touched: a failure here is not Redis's
                # (`state()` falls back to partial values itself).
                fields = self._state().to_hash()
            except Exception:  # a bug in state() must not end the beat
                event(log, "heartbeat_crashed", logging.ERROR, exc_info=True, key=self.key)
                self._stop.wait(self.interval)
                continue
            try:
                previous = self._beat(fields)
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    event(log, "heartbeat_failed", logging.WARNING, key=self.key, error=str(exc))
                failing = True
                self._drop_client()
                wait = tracker.failed()
            else:
                if failing:
                    event(log, "heartbeat_resumed", key=self.key)
                    failing = False
                if previous not in (None, self.instance, other):
                    event(
                        log, "node_name_conflict", logging.WARNING, key=self.key,
                        other_instance=previous,
                        hint="two daemons beat under one node name: set [general] node",
                    )  # fmt: skip
                    other = previous
                tracker.succeeded()
                wait = self.interval
            self._stop.wait(wait)
        self._remove()

    def _client_now(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _beat(self, fields: Mapping[str, str]) -> str | None:
        """Write the hash as one transaction (readers never see half of it);
        returns the instance that wrote it before, if any."""
        pipe = self._client_now().pipeline(transaction=True)
        pipe.hget(self.key, "instance")
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(self.key, self.expire_ms)
        previous = pipe.execute()[0]
        return previous.decode() if isinstance(previous, bytes) else None

    def _remove(self) -> None:
        try:
            if self._client_now().eval(_DELETE_OWN, 1, self.key, self.instance):
                event(log, "heartbeat_removed", key=self.key)
            else:
                event(log, "heartbeat_kept", key=self.key, reason="another instance wrote it last")
        except (redis.RedisError, OSError) as exc:
            # It expires on its own within HEARTBEATS_MISSED intervals.
            event(log, "heartbeat_remove_failed", logging.WARNING, key=self.key, error=str(exc))
        finally:
            self._drop_client()


def node_state(
    config: Config,
    *,
    instance: str,
    started: float,
    devices: Collection[str],
    linktypes: Mapping[str, int],
    sources: Sequence[str],
    rings: Mapping[str, str | None] | None = None,
    captures: int,
    spool_files: int = 0,
    spool_bytes: int = 0,
    now: float | None = None,
) -> NodeState:
    """The heartbeat of a daemon running `config` (pcapd/daemon.py fills in the
    rest); `rings`: the interfaces whose ring was started -> its error (None: reading)."""
    rings = rings or {}
    interfaces = tuple(
        NodeInterface(
            i.name, i.aliases, linktypes.get(i.name), i.name in devices, i.lookback,
            i.lookback_bytes if i.lookback else 0, i.name in rings, rings.get(i.name),
        )
        for i in config.interfaces
    )  # fmt: skip
    return NodeState(
        node=config.general.node, version=version(), hostname=socket.gethostname(),
        pid=os.getpid(), instance=instance, interfaces=interfaces,
        devices=tuple(sorted(devices)), sources=tuple(sources), captures=captures,
        spool_files=spool_files, spool_bytes=spool_bytes, started=started,
        last_seen=time.time() if now is None else now,
        general=dataclasses.asdict(config.general),
        require_signed=config.security.require_signed, config=config,
    )  # fmt: skip


# -- reading the fleet ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Unreadable:
    key: str
    error: str


def read_fleet(client: Client, prefix: str) -> tuple[list[NodeState], list[Unreadable]]:
    """Every node's heartbeat under `prefix`, by node name; and the hashes
    that could not be read (another version's, or not a heartbeat). On a
    cluster each primary's keyspace is walked."""
    nodes: list[NodeState] = []
    bad: list[Unreadable] = []
    keys = [
        key
        for primary in primaries(client)
        for key in primary.scan_iter(match=_glob(prefix), count=SCAN_COUNT, _type="HASH")
    ]
    for start in range(0, len(keys), SCAN_COUNT):
        batch = keys[start : start + SCAN_COUNT]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        for key, fields in zip(batch, pipe.execute(), strict=True):
            name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            if not fields:  # expired between SCAN and HGETALL
                continue
            try:
                nodes.append(NodeState.from_hash(fields))
            except ValueError as exc:
                bad.append(Unreadable(name, str(exc)))
    nodes.sort(key=lambda n: n.node)
    return nodes, bad


# -- what a request would do --------------------------------------------------
CAPTURE, REJECTED, SILENT = "capture", "rejected", "silent"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `node` would do with a request: capture on `interfaces` (with the
    `warnings` its result events would carry), answer `rejected` with `error`
    (what its result event would say; `stage` is
    "request" for what the request holds, "interfaces" when the node lacks
    what it names, or every interface it names refuses it: a lookback its
    ring cannot give, a failed ring), or stay silent (the request names
    another node). `rejected`: the interfaces refused, each with the error its
    result event would carry (the controller's `interface_problem`)."""

    node: str
    verdict: str
    interfaces: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    stage: str | None = None
    rejected: tuple[tuple[str, str], ...] = ()  # (interface, error) for each one refused

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["interfaces"], data["warnings"] = list(self.interfaces), list(self.warnings)
        data["rejected"] = {name: error for name, error in self.rejected}
        return data


def judge(body: bytes | str, node: NodeState) -> Verdict:
    """The controller's steps 1-3 for `body` on `node`, in its order: decoded
    within its max_request_bytes, addressed and parsed (`request_for`) with
    its bounds, an unsigned request refused if it requires signed ones
    (`verify`), interfaces resolved (`resolve_interfaces`) against its devices,
    then each checked (`interface_problem`) against its beaten state."""
    config = node.config
    try:
        fields = decode_body(body, config.general.max_request_bytes)
        request = request_for(fields, config)
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="request")
    if request is None:
        return Verdict(node.node, SILENT)
    try:
        if fields.get(SIG_FIELD) is None:
            # Unsigned: `verify` needs no key to judge it, only require_signed.
            security = SecurityConfig(require_signed=node.require_signed)
            verify(fields, security, time.time(), RecentIds(security.max_skew))
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="request")
    try:
        interfaces, skipped = resolve_interfaces(request, config, node.devices)
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="interfaces")
    # The controller's per-interface check, on the interface's state as beaten.
    state = {i.name: i for i in node.interfaces}
    refused: list[tuple[str, str]] = []
    capturing: list[str] = []
    for name in interfaces:
        iface = state.get(name)
        problem = interface_problem(
            request, name, config, ring=iface is not None and iface.ring,
            ring_error=None if iface is None else iface.ring_error,
        )  # fmt: skip
        if problem is None:
            capturing.append(name)
        else:
            refused.append((name, problem))
    warnings = request.warnings + skipped
    if not capturing:
        return Verdict(node.node, REJECTED, (), warnings, refused[-1][1], "interfaces",
                       tuple(refused))  # fmt: skip
    return Verdict(node.node, CAPTURE, tuple(capturing), warnings, rejected=tuple(refused))

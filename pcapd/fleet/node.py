"""A node as its heartbeat tells it (`NodeState`, the hash `node_key`
spells), built from a daemon's config (`node_state`), and the fleet read back
(`read_fleet`: SCAN, pipelined HGETALL; never KEYS)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pcapd.core.config import Config, ConfigError, parse_config
from pcapd.core.redis_conn import Client, primaries

SCAN_COUNT = 500  # keys per SCAN call; hashes per HGETALL pipeline


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
        except (TypeError, AttributeError, json.JSONDecodeError, RecursionError) as exc:
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

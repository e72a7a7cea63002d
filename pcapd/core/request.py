"""Capture requests: pcapdaemon's JSON message, checked field by field.

`parse_request` turns raw bytes into a frozen `CaptureRequest` or raises
`RequestError` whose message names the field, the value and the rule
(`packets=900000 exceeds maxpackets=50000`). Fields pcapd does not know are
ignored, as pcapdaemon's JSON decoding ignored them, and reported as warnings.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from pcapd.core.config import FORMATS, MAX_SNAPLENGTH, Config
from pcapd.core.errors import PcapdError

MAX_NODE_LEN = 253
MAX_NODERE_LEN = 256
MAX_BPF_LEN = 4096
MAX_TEXT_LEN = 1024
MAX_INTERFACES = 64
MIN_BYTES = 100  # below this not even a file header and one small packet fit

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Linux interface names (IFNAMSIZ 16) plus the `any` pseudo-device; no `/`, so
# a name can never be mistaken for a path by pcap_open.
_IFACE_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.:@-]{1,32}")
_CHANNEL_RE = re.compile(r"[\x21-\x7e]{1,256}")

KNOWN_FIELDS = frozenset(
    {
        "node", "nodere", "interface", "alias", "bpf", "snap", "packets", "bytes",
        "duration", "timeout", "tags", "customer", "alertid", "packetdebug",
        "logrequest", "folder", "bucket", "acl", "region", "endpoint", "encryption",
        "id", "format", "lookback", "reply_to", "ts", "sig", "kid",
    }
)  # fmt: skip


def compile_nodere(pattern: str) -> re2._Regexp[str]:
    """RE2, as Go's regexp in pcapdaemon: linear time whatever the pattern, so a
    hostile `nodere` cannot stall the daemon. RE2's own stderr logging is off."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


class RequestError(PcapdError):
    """A request that cannot be served; the message is what the user sees."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    id: str
    node: str | None
    nodere: str | None
    interfaces: tuple[str, ...]
    aliases: tuple[str, ...]
    bpf: str
    snap: int
    packets: int
    bytes: int
    duration: int
    timeout: int
    format: str
    tags: tuple[str, ...] = ()
    customer: str | None = None
    alertid: int | str | None = None
    packetdebug: bool = False
    logrequest: bool = False
    reply_to: str | None = None
    folder: str | None = None
    bucket: str | None = None
    acl: str | None = None
    region: str | None = None
    endpoint: str | None = None
    encryption: bool | None = None
    ts: int | None = None
    sig: str | None = None
    kid: str | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.node is None) == (self.nodere is None):
            raise ValueError("exactly one of node and nodere")
        if not self.interfaces and not self.aliases:
            raise ValueError("one of interfaces and aliases")
        for name in ("snap", "packets", "bytes", "duration", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def matches_node(self, node: str) -> bool:
        """pcapdaemon's rule: `node` exact or "any"; `nodere` a regex *search*."""
        if self.node is not None:
            return self.node in ("any", node)
        assert self.nodere is not None
        return compile_nodere(self.nodere).search(node) is not None


class _Fields:
    def __init__(self, data: Mapping[str, Any], request_id: str | None) -> None:
        self.data = data
        self.request_id = request_id

    def fail(self, message: str) -> RequestError:
        return RequestError(message, self.request_id)

    def integer(self, name: str, default: int, cap: int, cap_name: str, minimum: int = 1) -> int:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{name}: expected a JSON integer, got {json.dumps(value)}")
        if value < minimum:
            rule = "must be positive" if minimum == 1 else f"must be at least {minimum}"
            raise self.fail(f"{name}={value}: {rule}")
        if value > cap:
            raise self.fail(f"{name}={value} exceeds {cap_name}={cap}")
        return value

    def text(self, name: str, limit: int = MAX_TEXT_LEN) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{name}: expected a string, got {json.dumps(value)[:80]}")
        if len(value) > limit:
            raise self.fail(f"{name}: {len(value)} characters; the limit is {limit}")
        return value

    def flag(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(f"{name}: expected true or false, got {json.dumps(value)[:80]}")
        return value

    def names(self, name: str) -> tuple[str, ...]:
        """A list of names; a single string is accepted as a list of one."""
        value = self.data.get(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(
                f"{name}: expected a non-empty list of names, got {json.dumps(value)[:80]}"
            )
        if len(value) > MAX_INTERFACES:
            raise self.fail(f"{name}: {len(value)} names; the limit is {MAX_INTERFACES}")
        for item in value:
            if not isinstance(item, str) or not _IFACE_RE.fullmatch(item):
                raise self.fail(
                    f"{name}: {json.dumps(item)[:80]} is not a valid name "
                    "(1-32 of A-Z a-z 0-9 _ . : @ -)"
                )
        return tuple(dict.fromkeys(value))


def decode_body(body: bytes | str, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `body`, or RequestError saying why there is none."""
    size = len(body.encode() if isinstance(body, str) else body)
    if size > max_bytes:
        raise RequestError(
            f"request is {size} bytes; the limit is {max_bytes} (general.max_request_bytes)"
        )
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def addressed_to(data: Mapping[str, Any], node: str) -> bool:
    """Whether a decoded request names `node`, judged from `node`/`nodere` alone.

    Checked before anything else, so that a malformed request for another
    node stays silent on this one. When the node fields themselves are
    malformed, no node can tell: every node parses and rejects it.
    """
    name, pattern = data.get("node"), data.get("nodere")
    if isinstance(name, str) and name and pattern is None:
        return name in ("any", node)
    if isinstance(pattern, str) and pattern and name is None and len(pattern) <= MAX_NODERE_LEN:
        try:
            return compile_nodere(pattern).search(node) is not None
        except re2.error:
            return True
    return True


def parse_request(body: bytes | str, config: Config) -> CaptureRequest:
    return parse_fields(decode_body(body, config.general.max_request_bytes), config)


def parse_fields(
    data: Mapping[str, Any], config: Config, default_id: str | None = None
) -> CaptureRequest:
    """A request from an already decoded JSON object. Without an `id`, it gets
    `default_id` (a durable source's message id, so a redelivery keeps its id)
    or a random one."""
    general = config.general

    raw_id = data.get("id")
    if raw_id is None:
        request_id = default_id if default_id and _ID_RE.fullmatch(default_id) else uuid.uuid4().hex
    elif isinstance(raw_id, str) and _ID_RE.fullmatch(raw_id):
        request_id = raw_id
    else:
        raise RequestError(f"id: {json.dumps(raw_id)[:80]} is not 1-128 of A-Z a-z 0-9 . _ : -")
    f = _Fields(data, request_id)

    node = f.text("node", MAX_NODE_LEN)
    nodere = f.text("nodere", MAX_NODERE_LEN)
    if (node is None) == (nodere is None):
        raise f.fail("exactly one of node and nodere is required" if node is None else
                     "node and nodere are exclusive: send one of them")  # fmt: skip
    if node == "" or nodere == "":
        raise f.fail(f"{'node' if node == '' else 'nodere'}: must not be empty")
    if nodere is not None:
        try:
            compile_nodere(nodere)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise f.fail(f"nodere: {nodere!r} is not a valid regular expression: {text}") from None

    has_iface = data.get("interface") is not None
    has_alias = data.get("alias") is not None
    if has_iface == has_alias:
        raise f.fail(
            "exactly one of interface and alias is required"
            if not has_iface
            else "interface and alias are exclusive: send one of them"
        )
    interfaces = f.names("interface") if has_iface else ()
    aliases = f.names("alias") if has_alias else ()

    fmt = f.text("format") or general.format
    if fmt not in FORMATS:
        raise f.fail(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if "lookback" in data:
        raise f.fail("lookback: this node keeps no lookback ring")
    reply_to = f.text("reply_to")
    if reply_to is not None and not _CHANNEL_RE.fullmatch(reply_to):
        raise f.fail("reply_to: expected 1-256 printable characters without spaces")

    tags_value = data.get("tags")
    if isinstance(tags_value, list) and all(isinstance(t, str) for t in tags_value):
        tags_value = ",".join(tags_value)
    tags_text = f.text("tags") if not isinstance(tags_value, str) else tags_value
    if tags_text is not None and len(tags_text) > MAX_TEXT_LEN:
        raise f.fail(f"tags: {len(tags_text)} characters; the limit is {MAX_TEXT_LEN}")
    tags = tuple(t.strip() for t in (tags_text or "").split(",") if t.strip())

    alertid = data.get("alertid")
    if alertid is not None and (
        isinstance(alertid, bool) or not isinstance(alertid, int | str) or len(str(alertid)) > 128
    ):
        raise f.fail(
            f"alertid: expected an integer or a short string, got {json.dumps(alertid)[:80]}"
        )

    ts = data.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise f.fail(f"ts: expected a JSON integer (Unix seconds), got {json.dumps(ts)[:80]}")

    warnings = [f"{name}: unknown field, ignored" for name in sorted(set(data) - KNOWN_FIELDS)]
    packetdebug = bool(f.flag("packetdebug"))
    if packetdebug and not general.packetdebug:
        warnings.append("packetdebug: not allowed by this node's config (general.packetdebug)")
        packetdebug = False

    return CaptureRequest(
        id=request_id,
        node=node,
        nodere=nodere,
        interfaces=interfaces,
        aliases=aliases,
        bpf=f.text("bpf", MAX_BPF_LEN) or "",
        snap=f.integer("snap", general.snaplength, MAX_SNAPLENGTH, "max snaplen"),
        packets=f.integer("packets", general.maxpackets, general.maxpackets, "maxpackets"),
        bytes=f.integer("bytes", general.maxbytes, general.maxbytes, "maxbytes", MIN_BYTES),
        duration=f.integer("duration", general.defaultduration, general.maxduration, "maxduration"),
        timeout=f.integer("timeout", general.defaulttimeout, general.maxtimeout, "maxtimeout"),
        format=fmt,
        tags=tags,
        customer=f.text("customer"),
        alertid=alertid,
        packetdebug=packetdebug,
        logrequest=bool(f.flag("logrequest")),
        reply_to=reply_to,
        folder=f.text("folder"),
        bucket=f.text("bucket"),
        acl=f.text("acl"),
        region=f.text("region"),
        endpoint=f.text("endpoint"),
        encryption=f.flag("encryption"),
        ts=ts,
        sig=f.text("sig"),
        kid=f.text("kid"),
        warnings=tuple(warnings),
    )


def resolve_interfaces(
    request: CaptureRequest, config: Config, available: Collection[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(interfaces to capture on, warnings about the ones skipped).

    As pcapdaemon does, names missing on this node are skipped; the request
    fails only when none is left. Only names in `available` (the host's
    devices) are returned, so pcap never opens a file of that name.
    """
    skipped: list[str] = []
    if request.aliases:
        by_alias = config.aliases()
        wanted: list[str] = []
        for alias in request.aliases:
            if alias not in by_alias:
                skipped.append(f"alias {alias!r}: not configured on this node")
            wanted.extend(by_alias.get(alias, ()))
    else:
        wanted = list(request.interfaces)
    found = []
    for name in dict.fromkeys(wanted):
        if name in available:
            found.append(name)
        else:
            skipped.append(f"interface {name!r}: no such device on this node")
    if not found:
        asked = request.aliases or request.interfaces
        kind = "alias" if request.aliases else "interface"
        raise RequestError(
            f"{kind}: none of {list(asked)} exists on this node ({'; '.join(skipped)})",
            request.id,
        )
    return tuple(found), tuple(skipped)

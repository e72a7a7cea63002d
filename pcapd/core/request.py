"""Capture requests: pcapdaemon's JSON message, checked field by field.

`parse_request` turns raw bytes into a frozen `CaptureRequest` or raises
`RequestError` whose message names the field, the value and the rule
(`packets=900000 exceeds maxpackets=50000`). Fields pcapd does not know are
ignored, as pcapdaemon's JSON decoding ignored them, and reported as warnings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from pcapd.core.config import FORMATS, MAX_SNAPLENGTH, Config
from pcapd.core.errors import RequestError as RequestError  # what parse_request raises
from pcapd.core.fields import (
    CHANNEL_RE,
    ID_RE,
    KNOWN_FIELDS,
    MAX_BPF_LEN,
    MAX_NODE_LEN,
    MAX_NODERE_LEN,
    MAX_TEXT_LEN,
    PCAP_HEADER_LEN,
    Fields,
    bpf_problem,
    endpoint_problem,
    fold_keys,
    given,
    holds_surrogate,
    show,
    text_problem,
)


@functools.lru_cache(maxsize=256)  # addressed_to and parse_fields compile the same one
def compile_nodere(pattern: str) -> re2._Regexp[str]:
    """RE2, as Go's regexp in pcapdaemon: linear time whatever the pattern, so a
    hostile `nodere` cannot stall the daemon. RE2's own stderr logging is off."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


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
    lookback: int = 0  # seconds of packets from before the request, from a ring
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.node is None) == (self.nodere is None):
            raise ValueError("exactly one of node and nodere")
        if not self.interfaces and not self.aliases:
            raise ValueError("one of interfaces and aliases")
        for name in ("snap", "packets", "bytes", "duration", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.lookback < 0:
            raise ValueError("lookback must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists): how the spool keeps a request."""
        data = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptureRequest:
        """The inverse of `to_dict`. Fields a newer or older pcapd wrote that
        this one does not know are dropped, not fatal: spool entries outlive
        upgrades."""
        values = {k: v for k, v in data.items() if k in _REQUEST_FIELDS}
        for name in _TUPLE_FIELDS & values.keys():
            values[name] = tuple(values[name] or ())
        return cls(**values)


_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(CaptureRequest))
_TUPLE_FIELDS = frozenset(
    f.name for f in dataclasses.fields(CaptureRequest) if str(f.type).startswith("tuple")
)


def decode_body(body: bytes | str, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `body`, or RequestError saying why there is none.
    The size is checked first, so an oversized body is never parsed."""
    size = len(body.encode(errors="surrogatepass") if isinstance(body, str) else body)
    if size > max_bytes:
        raise RequestError(
            f"request is {size} bytes; the limit is {max_bytes} (general.max_request_bytes)"
        )
    try:
        if not isinstance(body, str):  # as json.loads reads bytes
            body = body.decode(json.detect_encoding(body), "surrogatepass")
        data = _DECODER.decode(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Made once: json.loads with an option builds a decoder (and its scanner) per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def addressed_to(data: Mapping[str, Any], node: str) -> bool:
    """Whether a decoded request names `node`, judged from `node`/`nodere` alone,
    read as `parse_fields` reads them (keys folded, empty values absent).

    Checked before anything else, so that a malformed request for another
    node stays silent on this one. When the node fields themselves are
    malformed, no node can tell: every node parses and rejects it.
    """
    return _names(fold_keys(data)[0], node)


def _names(fields: Mapping[str, Any], node: str) -> bool:
    """`addressed_to` on fields already folded."""
    name, pattern = given(fields, "node"), given(fields, "nodere")
    if isinstance(name, str) and pattern is None:
        return name in ("any", node)
    if (
        isinstance(pattern, str)
        and name is None
        and len(pattern) <= MAX_NODERE_LEN
        and text_problem(pattern) is None
    ):
        try:
            return compile_nodere(pattern).search(node) is not None
        except re2.error:
            return True
    return True


def request_for(
    fields: Mapping[str, Any], config: Config, default_id: str | None = None
) -> CaptureRequest | None:
    """The request in decoded `fields` if it names this node (`addressed_to`),
    parsed with this node's bounds; None when it names another node.

    The one judgement of "is it for me, and is it sound" that both the
    controller and `pcapd nodes --match` (pcapd/fleet/) make; the second
    half is `resolve_interfaces`. Raises RequestError as `parse_fields` does.
    """
    folded, warnings = fold_keys(fields)  # once, for both halves
    if not _names(folded, config.general.node):
        return None
    return _parse(fields, folded, warnings, config, default_id)


def parse_request(body: bytes | str, config: Config) -> CaptureRequest:
    return parse_fields(decode_body(body, config.general.max_request_bytes), config)


def _request_id(data: Mapping[str, Any], default_id: str | None) -> str:
    """The request's own id, else `default_id` (a durable source's message id, so
    a redelivery keeps its id), else a random one. A bad id is rejected, the
    rejection carrying `default_id` so that the sender can still find it."""
    fallback = default_id if default_id and ID_RE.fullmatch(default_id) else None
    raw_id = data.get("id")
    if raw_id is None:
        return fallback or uuid.uuid4().hex
    if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id):
        return raw_id
    raise RequestError(f"id: {show(raw_id)} is not 1-128 of A-Z a-z 0-9 . _ : -", fallback)


def _check_keys(data: Mapping[str, Any], f: Fields) -> None:
    for key in data:
        problem = text_problem(key)
        if problem is not None:
            raise f.fail(f"field name {show(key)} {problem}")


def _check_ignored(data: Mapping[str, Any], f: Fields) -> None:
    """No field pcapd ignores holds a lone surrogate either: the signature and
    the request log encode the whole request. (Control characters there are
    served, as pcapdaemon ignored such fields.) The fields read were checked."""
    for key, value in data.items():
        if key not in KNOWN_FIELDS and holds_surrogate(value):
            raise f.fail(f"{key}: holds a lone surrogate (not UTF-8 text) in a field pcapd ignores")


def parse_fields(
    data: Mapping[str, Any], config: Config, default_id: str | None = None
) -> CaptureRequest:
    """A request from an already decoded JSON object. Without an `id`, it gets
    `default_id` (a durable source's message id) or a random one.

    Read as pcapdaemon's Go code reads it: keys match its fields whatever
    their case; null, and a zero or empty value where pcapdaemon's code
    treats it so, mean "not given" and take the default.
    """
    return _parse(data, *fold_keys(data), config, default_id)


def _parse(
    raw: Mapping[str, Any],
    data: Mapping[str, Any],
    warnings: list[str],
    config: Config,
    default_id: str | None,
) -> CaptureRequest:
    """`parse_fields` on `raw` folded into `data` (with `warnings`) already."""
    general = config.general
    warnings = list(warnings)
    request_id = _request_id(data, default_id)
    f = Fields(data, request_id)
    _check_keys(raw, f)

    node = f.text("node", MAX_NODE_LEN)
    nodere = f.text("nodere", MAX_NODERE_LEN)
    if (node is None) == (nodere is None):
        raise f.fail("exactly one of node and nodere is required" if node is None else
                     "node and nodere are exclusive: send one of them")  # fmt: skip
    if nodere is not None:
        try:
            compile_nodere(nodere)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise f.fail(f"nodere: {nodere!r} is not a valid regular expression: {text}") from None

    has_iface = f.value("interface") is not None
    has_alias = f.value("alias") is not None
    if has_iface == has_alias:
        raise f.fail(
            "exactly one of interface and alias is required"
            if not has_iface
            else "interface and alias are exclusive: send one of them"
        )
    interfaces = f.names("interface") if has_iface else ()
    aliases = f.names("alias") if has_alias else ()

    bpf = f.text("bpf", MAX_BPF_LEN, bpf_problem) or ""

    fmt = f.text("format") or general.format
    if fmt not in FORMATS:
        raise f.fail(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    # Seconds from the interface's ring; whether it has one is asked per interface.
    lookback = f.integer("lookback", 0, general.maxlookback, "maxlookback")
    reply_to = f.text("reply_to")
    if reply_to is not None and not CHANNEL_RE.fullmatch(reply_to):
        raise f.fail("reply_to: expected 1-256 printable characters without spaces")

    tags_value = f.value("tags")
    if isinstance(tags_value, list) and all(isinstance(t, str) for t in tags_value):
        tags_text: str | None = f.check_text("tags", ",".join(tags_value), MAX_TEXT_LEN)
    else:
        tags_text = f.text("tags")
    tags = tuple(t.strip() for t in (tags_text or "").split(",") if t.strip())

    alertid = f.value("alertid")
    if alertid is not None and (
        isinstance(alertid, bool) or not isinstance(alertid, int | str) or len(str(alertid)) > 128
    ):
        raise f.fail(f"alertid: expected an integer or a short string, got {show(alertid)}")
    if isinstance(alertid, str):
        f.check_text("alertid", alertid, 128)

    ts = data.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise f.fail(f"ts: expected a JSON integer (Unix seconds), got {show(ts)}")

    endpoint = f.text("endpoint")
    problem = None if endpoint is None else endpoint_problem(endpoint)
    if problem is not None:
        raise f.fail(f"endpoint: {show(endpoint)}: {problem}")

    snap = f.integer("snap", general.snaplength, None)
    if snap > MAX_SNAPLENGTH:  # libpcap clamps a larger snaplen to its maximum too
        warnings.append(f"snap={snap} exceeds libpcap's maximum; clamped to {MAX_SNAPLENGTH}")
        snap = MAX_SNAPLENGTH
    nbytes = f.integer("bytes", general.maxbytes, general.maxbytes, "maxbytes")
    if nbytes < PCAP_HEADER_LEN:
        raise f.fail(f"bytes={nbytes}: cannot hold the {PCAP_HEADER_LEN}-byte pcap file header")

    _check_ignored(raw, f)
    warnings.extend(f"{name}: unknown field, ignored" for name in sorted(set(data) - KNOWN_FIELDS))
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
        bpf=bpf,
        snap=snap,
        packets=f.integer("packets", general.maxpackets, general.maxpackets, "maxpackets"),
        bytes=nbytes,
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
        endpoint=endpoint,
        # As pcapdaemon: `false` leaves the site's setting, it never turns it off.
        encryption=f.flag("encryption") or None,
        ts=ts,
        sig=f.text("sig"),
        kid=f.text("kid"),
        lookback=lookback,
        warnings=tuple(warnings),
    )


def lookback_problem(request: CaptureRequest, interface: str, config: Config) -> str | None:
    """Why `request`'s lookback cannot be served on `interface`, or None."""
    if not request.lookback:
        return None
    for index, iface in enumerate(config.interfaces):
        if iface.name == interface and iface.lookback:
            if request.lookback > iface.lookback:
                return (f"lookback={request.lookback} exceeds what the ring on {interface} "
                        f"holds (interface[{index}].lookback={iface.lookback})")  # fmt: skip
            return None
    return f"lookback: interface {interface!r} keeps no lookback ring (no [[interface]] lookback)"


def interface_problem(
    request: CaptureRequest,
    interface: str,
    config: Config,
    *,
    ring: bool,
    ring_error: str | None = None,
) -> str | None:
    """Why `request` cannot be served on `interface` (None: it may be, as far
    as the request and the interface's state go; admission comes after).

    `ring`: a lookback ring was started on `interface`; `ring_error`: it has
    failed since (every capture there is refused with that). The controller
    runs this per interface, and `pcapd nodes --match` on a node's heartbeat."""
    if ring and ring_error is not None:
        return ring_error
    problem = lookback_problem(request, interface, config)
    if problem is None and request.lookback and not ring:
        problem = f"lookback: the ring on {interface!r} is not running on this node"
    return problem


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

"""A decoded request read field by field, as pcapdaemon's Go code reads it.

Each field is checked against this node's bounds; a RequestError names the
field, the value and the rule (`packets=900000 exceeds maxpackets=50000`).
Fields pcapd does not know are ignored and reported as warnings.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from typing import Any

import re2

from pcapd.core.config import FORMATS, MAX_SNAPLENGTH, Config
from pcapd.core.errors import RequestError
from pcapd.core.fields import (
    ID_RE,
    KNOWN_FIELDS,
    MAX_BPF_LEN,
    MAX_NODE_LEN,
    MAX_NODERE_LEN,
    MAX_TEXT_LEN,
    PCAP_HEADER_LEN,
    Fields,
    alias_problem,
    bpf_problem,
    channel_problem,
    endpoint_problem,
    fold_keys,
    holds_surrogate,
    requested_interface_problem,
    show,
    text_problem,
)
from pcapd.core.request.model import CaptureRequest


@functools.lru_cache(maxsize=256)  # addressed_to and parse_fields compile the same one
def compile_nodere(pattern: str) -> re2._Regexp[str]:
    """RE2, as Go's regexp in pcapdaemon: linear time whatever the pattern, so a
    hostile `nodere` cannot stall the daemon. RE2's own stderr logging is off."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


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
    return parse_folded(data, *fold_keys(data), config, default_id)


def parse_folded(
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
    # Not Linux's rule: a name too long for it is skipped on resolving, like any
    # this node lacks, so one such name does not refuse the request fleet-wide.
    interfaces = f.names("interface", requested_interface_problem) if has_iface else ()
    # Matched exactly against the config's; one this node lacks is skipped on resolving.
    aliases = f.names("alias", alias_problem) if has_alias else ()

    bpf = f.text("bpf", MAX_BPF_LEN, bpf_problem) or ""

    fmt = f.text("format") or general.format
    if fmt not in FORMATS:
        raise f.fail(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    # Seconds from the interface's ring; whether it has one is asked per interface.
    lookback = f.integer("lookback", 0, general.maxlookback, "maxlookback")
    reply_to = f.text("reply_to")
    if reply_to is not None and (problem := channel_problem(reply_to)) is not None:
        raise f.fail(f"reply_to: {problem}")

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

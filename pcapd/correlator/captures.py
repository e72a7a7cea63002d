""" "Capture this flow": building, signing and publishing the request, and
reading result events back from the results stream and reply channels.

The request id carries the client and the flow (`c_<client>_<service>_<port>_<hex>`),
so the captures view can filter result events by client or address without
keeping any state of its own: result events echo the id, not the BPF.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from agents.reader_values import ReaderError, parse_address
from pcapd.client import (
    event_json,
    event_of,
    fresh,
    is_message,
    publish_request,
    seen_events,
    subscribe,
)
from pcapd.core.config import Config
from pcapd.core.fields import bpf_problem, whole_number
from pcapd.core.redis_conn import Client
from pcapd.signing import sign

ID_PREFIX = "c"
ID_RE = re.compile(r"c_([0-9a-fA-F.:]+)_([0-9a-fA-F.:]+)_(\d+|any)_[0-9a-f]{12}")
EVENT_POLL = 1.0  # seconds between keep-alives on a live results stream
# s of silence on a live stream's subscription before it PINGs Redis: a
# Redis that hangs (SIGSTOP, a partition) sends nothing, as an idle one does,
# so only an unanswered PING tells them apart.
SILENCE_PING = 5.0
SILENCE_PING_TEXT = "pcapd-correlator-live"


class CaptureFormError(ValueError):
    """A capture form field that cannot be sent; the message names it."""


@dataclass(frozen=True, slots=True)
class CaptureForm:
    client: str
    service: str
    port: int | None
    node: str  # "any" or one of [correlator] nodere
    alias: str | None
    packets: int
    duration: int
    bpf: str

    def request(self) -> dict[str, Any]:
        port = "any" if self.port is None else str(self.port)
        body: dict[str, Any] = {
            "id": f"{ID_PREFIX}_{self.client}_{self.service}_{port}_{uuid.uuid4().hex[:12]}",
            "bpf": self.bpf, "packets": self.packets, "duration": self.duration,
        }  # fmt: skip
        if self.node == "any":
            body["node"] = "any"
        else:
            body["nodere"] = self.node
        if self.alias:
            body["alias"] = [self.alias]
        else:
            body["interface"] = ["any"]
        body["reply_to"] = reply_channel(body["id"])
        return body


def reply_channel(request_id: str) -> str:
    return f"pcapd-reply-{request_id}"


def default_bpf(client: str, service: str, port: int | None) -> str:
    bpf = f"host {client} and host {service}"
    return bpf if port is None else f"{bpf} and port {port}"


def aliases(config: Config) -> tuple[str, ...]:
    """What the form offers: [correlator] aliases, else the interfaces' but
    "" (the form's blank choice is "any interface")."""
    return config.correlator.aliases or tuple(filter(None, config.aliases()))


def parse_form(fields: Mapping[str, str], config: Config) -> CaptureForm:
    """Check every field against the config; the BPF itself is compiled by the node."""
    c = config.correlator
    client = _address(fields, "client")
    service = _address(fields, "service")
    port = _number(fields, "port", None, 1, 65535)
    node = fields.get("node", "any") or "any"
    if node != "any" and node not in c.nodere:
        raise CaptureFormError(f"node: {node[:80]!r} is not 'any' or one of [correlator] nodere")
    alias = fields.get("alias", "") or None
    if alias is not None and alias not in aliases(config):
        raise CaptureFormError(f"alias: {alias[:80]!r} is not a configured interface alias")
    packets = _number(fields, "packets", c.default_packets, 1, c.max_packets)
    duration = _number(fields, "duration", c.default_duration, 1, c.max_duration)
    bpf = " ".join((fields.get("bpf") or default_bpf(client, service, port)).split())
    if len(bpf) > 1024:
        raise CaptureFormError(f"bpf: {len(bpf)} characters; the limit is 1024")
    problem = bpf_problem(bpf)  # the nodes refuse it too, but only once it is sent
    if problem is not None:
        raise CaptureFormError(f"bpf: {problem}")
    assert packets is not None and duration is not None
    return CaptureForm(client, service, port, node, alias, packets, duration, bpf)


def _address(fields: Mapping[str, str], name: str) -> str:
    try:
        return parse_address(fields.get(name, ""), name)
    except ReaderError as exc:
        raise CaptureFormError(str(exc)) from None


def _number(
    fields: Mapping[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    text = (fields.get(name) or "").strip()
    if not text:
        return default
    number = whole_number(text, low, high)
    if number is None:
        raise CaptureFormError(f"{name}: {text[:20]!r} is not a whole number from {low} to {high}")
    return number


def publish(client: Client, config: Config, body: dict[str, Any]) -> dict[str, Any]:
    """Sign (when [correlator] kid is set) and PUBLISH as `pcapd trigger` does;
    returns what was sent."""
    kid = config.correlator.kid
    if kid:
        body = sign(body, kid, config.security.keys[kid], time.time())
    publish_request(
        client, config.redis.channel, json.dumps(body).encode(),
        sharded=config.redis.sharded_pubsub,
    )  # fmt: skip
    return body


def flow_of(request_id: str) -> tuple[str, str, int | None] | None:
    """(client, service, port) from a correlator's request id."""
    match = ID_RE.fullmatch(request_id or "")
    if match is None:
        return None
    port = None if match[3] == "any" else int(match[3])
    return match[1], match[2], port


def recent(
    client: Client, config: Config, filters: Mapping[str, str], count: int
) -> list[dict[str, Any]]:
    """The newest result events (at most `count` read), matching every filter:
    client, address, node, alertid, id. Read newest first, `keys_per_command`
    entries per XREVRANGE, so no one command copies much of the stream. An
    event the stream holds twice (resent after its marker expired) is listed
    once."""
    stream = config.redis.results_stream
    if not stream:
        return []
    entries: list[Any] = []
    newest = "+"
    while len(entries) < count:
        step = min(config.correlator.keys_per_command, count - len(entries))
        part: Any = client.xrevrange(stream, max=newest, count=step)
        entries.extend(part)
        if len(part) < step:
            break
        last = part[-1][0]
        newest = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    shown = []
    ids = seen_events()
    for _entry, fields in entries:
        event = event_json(fields.get(b"event") or fields.get("event"))
        if event is not None and _matches(event, filters) and fresh(event, ids):
            shown.append(event)
    return shown


def _matches(event: dict[str, Any], filters: Mapping[str, str]) -> bool:
    flow = flow_of(str(event.get("id") or ""))
    for name, wanted in filters.items():
        if not wanted:
            continue
        if name == "client" and (flow is None or flow[0] != wanted):
            return False
        if name == "address" and (flow is None or wanted not in flow[:2]):
            return False
        if name in ("node", "id") and str(event.get(name)) != wanted:
            return False
        if name == "alertid" and str(event.get("alertid")) != wanted:
            return False
    return True


def links(event: Mapping[str, Any], config: Config, s3: Any | None) -> dict[str, str]:
    """Where the file is: local path, S3 pre-signed URL, CloudShark view URL."""
    found: dict[str, str] = {}
    locations = event.get("locations") or {}
    if not isinstance(locations, dict):
        return found
    if isinstance(locations.get("local"), str):
        found["local"] = locations["local"]
    uri = locations.get("s3")
    if isinstance(uri, str) and uri.startswith("s3://"):
        found["s3"] = uri
        if s3 is not None:
            parts = urlsplit(uri)
            found["s3_url"] = s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": parts.netloc, "Key": parts.path.lstrip("/")},
                ExpiresIn=config.correlator.s3_url_expiry,
            )
    view = locations.get("cloudshark")
    if isinstance(view, str) and view.startswith(("http://", "https://")):
        found["cloudshark"] = view
    return found


def live_events(
    client: Client,
    config: Config,
    request_id: str,
    wait: float,
    decorate: Callable[[dict[str, Any]], dict[str, Any]],
) -> Iterator[str]:
    """Server-sent events for one request: what already reached the results
    stream, then what arrives on its reply channel, until `wait` seconds pass.

    Subscribing first and reading the stream second means no event can fall
    between the two; an event seen both ways, or twice (a resend), is sent
    once: by its event_id (its links, S3's pre-signed URLs, differ each time),
    by its text for an older pcapd's event without one. Both happen in this
    call, not in the stream it returns: a Redis that cannot serve them raises
    here, before a response has started (a 503 with the reason, where an
    error inside the stream is only a bare 500).
    """
    pubsub = subscribe(client, reply_channel(request_id), sharded=config.redis.sharded_pubsub)
    try:
        earlier = recent(client, config, {"id": request_id}, config.correlator.captures_shown)
    except BaseException:
        pubsub.close()
        raise
    return _stream(client, pubsub, reversed(earlier), request_id, wait, decorate,
                   answer_within=config.correlator.redis_timeout)  # fmt: skip


def _stream(
    client: Client,
    pubsub: Any,
    earlier: Iterable[dict[str, Any]],
    request_id: str,
    wait: float,
    decorate: Callable[[dict[str, Any]], dict[str, Any]],
    answer_within: float,
) -> Iterator[str]:
    """`client` is held while the stream lives: a client dropped closes its
    pool, and with it the connection `pubsub` listens on. After
    SILENCE_PING s without a word from Redis it PINGs; no answer within
    `answer_within` s raises redis.TimeoutError, which the caller sends as
    the stream's `failed` event."""
    sent: set[str] = set()
    ids = seen_events()
    try:
        for event in earlier:
            if fresh(event, ids):
                yield _sse(decorate(event), sent)
        heard = time.monotonic()
        deadline = heard + wait
        pinged: float | None = None
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=EVENT_POLL)
            now = time.monotonic()
            if message is not None:  # an event, a notice or the PING's answer
                heard, pinged = now, None
            elif pinged is not None and now - pinged >= answer_within:
                raise redis.TimeoutError(
                    f"no answer to a PING on the subscription within {answer_within:g} s"
                )
            elif pinged is None and now - heard >= SILENCE_PING and pubsub.connection:
                pubsub.ping(SILENCE_PING_TEXT)
                pinged = now
            if is_message(message):
                published = event_of(message)
                if published and published.get("id") == request_id and fresh(published, ids):
                    yield _sse(decorate(published), sent)
            else:
                yield ": keep-alive\n\n"
        yield "event: end\ndata: {}\n\n"
    finally:
        pubsub.close()


def failed_event(reason: str) -> str:
    """The last event of a stream that failed once under way (Redis gone):
    `failed`, with the reason a 503 would have given. Without it the stream
    just ends, short of its `end`, and EventSource reconnects without a word."""
    return f"event: failed\ndata: {json.dumps({'error': reason})}\n\n"


def _sse(event: dict[str, Any], sent: set[str]) -> str:
    text = json.dumps(event, sort_keys=True)
    if text in sent:
        return ""
    sent.add(text)
    return f"data: {text}\n\n"

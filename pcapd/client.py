"""Client side: publish requests (`pcapd trigger`) and follow results (`pcapd results`)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import redis

from pcapd.core.redis_conn import Client, node_for_channel, publish
from pcapd.dedup import RecentIds

POLL = 0.2
MESSAGE_TYPES = ("message", "smessage")
# A follower drops an event whose event_id it showed already (a resend after
# a lost reply): it keeps at most this many ids (~300 B each), each for
# SEEN_EVENTS_WINDOW s (a resend comes within the publisher's backoff, at
# most 10 s, of Redis answering again).
SEEN_EVENTS = 10_000
SEEN_EVENTS_WINDOW = 3_600.0


def new_request_id() -> str:
    return uuid.uuid4().hex


def publish_request(client: Client, channel: str, body: bytes, *, sharded: bool = False) -> int:
    """PUBLISH (SPUBLISH when `sharded`); returns how many subscribers (nodes,
    result followers) got it: on a cluster, those of the node or shard that
    took it."""
    return int(publish(client, channel, body, sharded=sharded))


def subscribe(client: Client, channel: str, *, sharded: bool = False) -> Any:
    """A subscription to `channel`, on the node it belongs on (a cluster's
    shard for a sharded channel), confirmed before returning."""
    pubsub = node_for_channel(client, channel, sharded=sharded).pubsub()
    if sharded:
        pubsub.ssubscribe(channel)
    else:
        pubsub.subscribe(channel)
    # The subscription is confirmed before anything is published, so no
    # result can slip past between publishing and listening.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=POLL)
        if message and message.get("type") in ("subscribe", "ssubscribe"):
            break
    return pubsub


def is_message(message: dict[str, Any] | None) -> bool:
    """A published message (plain or sharded), not a subscription notice."""
    return bool(message) and message is not None and message.get("type") in MESSAGE_TYPES


def event_json(data: str | bytes | None) -> dict[str, Any] | None:
    """The JSON object `data` (a result's text on a channel or in the stream)
    holds; None for anything else anyone published there (json raises
    RecursionError, not a ValueError, on nesting past ~1,000 levels)."""
    if not data:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def event_of(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON object a published message carries; None for a notice or
    anything else (`event_json`)."""
    if not is_message(message) or message is None:
        return None
    return event_json(message["data"])


def seen_events() -> RecentIds:
    """The event ids a reader of results remembers, to drop resends (`fresh`)."""
    return RecentIds(SEEN_EVENTS_WINDOW, max_ids=SEEN_EVENTS)


def fresh(event: Mapping[str, Any], seen: RecentIds) -> bool:
    """False for an event whose event_id is in `seen` (recorded there now);
    an event without one (an older pcapd's) is always fresh."""
    event_id = event.get("event_id")
    return not (isinstance(event_id, str) and seen.seen(event_id))


def print_events(
    pubsub: Any,
    *,
    timeout: float | None,
    count: int | None,
    accept: Callable[[dict[str, Any]], bool] = lambda _: True,
    until: Callable[[dict[str, Any]], bool] = lambda _: False,
    out: TextIO = sys.stdout,
) -> int:
    """Print matching events, one JSON per line, until `count`, `timeout`, or
    `until` is true of the one just printed; an event resent (its event_id
    printed already) is not printed again."""
    seen = 0
    ids = seen_events()
    deadline = None if timeout is None else time.monotonic() + timeout
    while count is None or seen < count:
        wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
        if wait <= 0:
            break
        parsed = event_of(pubsub.get_message(timeout=wait))
        if parsed is not None and accept(parsed) and fresh(parsed, ids):
            print(json.dumps(parsed), file=out, flush=True)
            seen += 1
            if until(parsed):
                break
    return seen


def _last_id(client: Client, stream: str) -> str:
    """The stream's newest id now, so that following misses nothing added later
    ("$" on every XREAD would skip entries added between two reads)."""
    try:
        info: Any = client.xinfo_stream(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():  # no stream yet: follow it from its start
            return "0"
        # NOPERM, WRONGTYPE: "0" would replay the whole stream as if it were new.
        raise
    last = info["last-generated-id"]
    return last.decode() if isinstance(last, bytes) else str(last)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def follow_stream(
    client: Client,
    stream: str,
    *,
    from_start: bool,
    timeout: float | None = None,
    count: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print the stream's events (from the oldest kept, or from now on) until
    `count` events or `timeout` seconds; returns how many were printed. The
    stream holds an event once (pcapd.core.results), unless it was resent
    after its marker expired: an entry whose event_id was printed is skipped."""
    last = "0" if from_start else _last_id(client, stream)
    ids = seen_events()
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while count is None or seen < count:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        block = 1000 if left is None else max(1, int(min(left, 1.0) * 1000))
        wanted = 100 if count is None else count - seen
        entries: Any = client.xread({stream: last}, block=block, count=wanted)
        for _name, items in entries or []:
            for entry_id, fields in items:
                last = entry_id
                body = fields.get(b"event") or fields.get("event")
                event_id = fields.get(b"event_id") or fields.get("event_id")
                if body is None or (event_id is not None and ids.seen(_text(event_id))):
                    continue
                print(_text(body), file=out, flush=True)
                seen += 1
    return seen

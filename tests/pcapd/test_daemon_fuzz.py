"""Daemon-level fuzz: a flood of poisonous requests, mixed with good ones, over
pub/sub and over a stream into one real `pcapd serve`, with a real Redis.

It ends with the daemon alive, every request answered (by id, or by the
SHA-256 of the body where no id could be read), good requests captured on lo,
answers sent to reply_to where the body's reply_to was sound, and the
daemon's peak RSS within the bound the README states.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pcapd.core.config import DEFAULT_MAX_REQUEST_BYTES, load_config
from pcapd.daemon import memory_bound
from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from triggers.redis_stream import BODY_FIELD

REQUESTS = 10_000  # per source
PIPELINE = 100  # bodies per round trip and source
RATE = 2000  # bodies per second and source
GOOD_EVERY = 250  # one good request in so many
BIG_EVERY = 200  # one 1 MB body in so many
BIG_BODY = 1 << 20
MAX_MEMORY = 32 << 20
REPLIES = "fuzz-replies"
STREAM = "capture-requests"
ANSWER_WAIT = 120.0

POISON: list[Any] = [
    "\ud800", "a\udfffb", "\x00", "x\x00y", "\x01\x02\x1b[31m", "\u202e\u2066", "\n\r\t",
    10**400, -(10**30), 2**63, -1, 0, 1.5, 1e308, True, False, None, [], {}, [[[[]]]],
    {"$gt": 1}, "", " ", "9" * 5000, "A" * 100_000, ["lo"] * 1000, [None], "../../etc/passwd",
]  # fmt: skip
NOT_TEXT = [value for value in POISON if not isinstance(value, str)]
FIELDS = (
    "id", "interface", "alias", "bpf", "snap", "packets", "bytes", "duration", "timeout",
    "tags", "customer", "alertid", "format", "reply_to", "folder", "bucket", "lookback",
    "packetdebug", "encryption", "ts", "sig", "kid", "node",
)  # fmt: skip


def _dumps(value: Any) -> bytes:
    # ensure_ascii writes lone surrogates as \\ud800 escapes: valid JSON text.
    return json.dumps(value).encode()


class Corpus:
    """Bodies, and the id each one's answer carries if the daemon can read it.

    A sender matches an answer by id, or else by `request_sha256`, the digest
    of the body it sent; the test accepts either for every body."""

    def __init__(self, source: str, port: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.source = source
        self.port = port
        self.bodies: list[bytes] = []
        self.ids: list[str | None] = []
        self.good: list[str] = []
        self.reply_to = 0  # bodies whose only sound part is reply_to

    def build(self, count: int) -> None:
        for i in range(count):
            body, request_id = self._one(i)
            self.bodies.append(body)
            self.ids.append(request_id)

    def keys(self) -> list[str]:
        """Per body, what identifies it in the test: its id, else its digest."""
        return [
            i or hashlib.sha256(b).hexdigest() for i, b in zip(self.ids, self.bodies, strict=True)
        ]

    def answered(self, got: set[str]) -> list[str]:
        """Keys of the bodies no answer matches, by id or by digest."""
        return [
            key for key, request_id, body in zip(self.keys(), self.ids, self.bodies, strict=True)
            if request_id not in got and hashlib.sha256(body).hexdigest() not in got
        ]  # fmt: skip

    def _base(self, i: int) -> dict[str, Any]:
        return {
            "id": f"{self.source}-{i}", "node": "testnode", "interface": "lo",
            "bpf": f"udp and dst port {self.port}", "packets": 1, "timeout": 2, "duration": 2,
            "bytes": 65536,
        }  # fmt: skip

    def _one(self, i: int) -> tuple[bytes, str | None]:
        rng = self.rng
        request = self._base(i)
        if i % GOOD_EVERY == GOOD_EVERY // 2:
            request["packets"] = 2
            self.good.append(request["id"])
            return _dumps(request), request["id"]
        if i % BIG_EVERY == 0:
            pad = "x" * (BIG_BODY - 200)
            return _dumps({**request, "pad": pad}), None
        kind = rng.randrange(10)
        if kind == 0:  # not JSON, or not an object, or not UTF-8
            text = rng.choice([
                b'{"id": "%d", "node": ', b"\xff\xfe\xfd%d", b"[%d]", b'"%d"', b"%d",
                b"{'id': %d}", b'{"id": NaN, "n": "%d"}', b"\x00%d\x00", b"[" * 5000 + b"%d",
            ])  # fmt: skip
            return text.replace(b"%d", f"{self.source}{i}".encode()), None
        if kind == 1:  # no usable id, but a sound reply_to
            self.reply_to += 1
            request["id"] = rng.choice(POISON[:12])
            request["reply_to"] = REPLIES
            request["n"] = f"{self.source}{i}"
            return _dumps(request), None
        field = rng.choice(FIELDS[1:-1])  # node poisoned with a string is another node's
        request[field] = rng.choice(POISON)
        for _ in range(rng.randrange(3)):
            request[rng.choice(FIELDS[1:])] = rng.choice(NOT_TEXT)
        if rng.random() < 0.1:
            request = dict(rng.sample(list(request.items()), k=len(request)))
        body = _dumps(request)
        # Over max_request_bytes the body is refused unparsed: no id is read.
        return body, None if len(body) > DEFAULT_MAX_REQUEST_BYTES else request["id"]


class Answers:
    """Every result event in the results stream, read on from where it left off."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.events: list[dict[str, Any]] = []
        self.keys: set[str] = set()  # ids and request digests answered
        self._start = "-"

    def read(self) -> set[str]:
        while chunk := self._chunk():
            for _, fields in chunk:
                answer = json.loads(fields[b"event"])
                self.events.append(answer)
                self.keys.update(k for k in (answer["id"], answer["request_sha256"]) if k)
            self._start = "(" + chunk[-1][0].decode()
        return self.keys

    def _chunk(self) -> Any:
        return self.client.xrange("capture-results", min=self._start, count=5000)


def describe(missing: set[str], *corpora: Corpus) -> list[str]:
    out: list[str] = []
    for corpus in corpora:
        for key, body in zip(corpus.keys(), corpus.bodies, strict=True):
            if key in missing and len(out) < 8:
                out.append(f"{corpus.source}: {body[:120]!r} ({len(body)} bytes)")
    return out


def group_ready(server: RedisServer) -> bool:
    try:
        return bool(server.client().xinfo_groups(STREAM))
    except redis.RedisError:
        return False


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
def blast() -> Iterator[int]:
    """A UDP sender to a free port on lo, so good requests capture something."""
    port, stop = free_port(), threading.Event()

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not stop.wait(0.002):
                sock.sendto(b"fuzz", ("127.0.0.1", port))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(2)


def test_daemon_survives_and_answers_a_poisonous_flood_within_its_memory_bound(
    redis_srv: RedisServer, blast: int
) -> None:
    # Captures go to tmpfs: what is measured is the daemon, not fsync.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        flood(redis_srv, Path(tmp), blast)


def flood(redis_srv: RedisServer, tmp_path: Path, blast: int) -> None:
    client = redis_srv.client()
    daemon = Daemon(
        redis_srv, tmp_path, max_memory=MAX_MEMORY,
        extra_redis=f'stream_listen = true\nstream = "{STREAM}"\nresults_stream_maxlen = 200000',
    )  # fmt: skip
    replies = Results(redis_srv, REPLIES)
    pubsub, stream = Corpus("ps", blast, 1), Corpus("st", blast, 2)
    pubsub.build(REQUESTS)
    stream.build(REQUESTS)
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        wait_for(lambda: group_ready(redis_srv), timeout=15)
        idle = rss(pid, "VmRSS")
        started = time.monotonic()
        for n, lo in enumerate(range(0, REQUESTS, PIPELINE)):
            # Paced at RATE per source: Redis drops any subscriber that a
            # sender on loopback outruns by its 32 MB output buffer.
            time.sleep(max(0.0, started + n * PIPELINE / RATE - time.monotonic()))
            pipe = client.pipeline(transaction=False)
            for body in pubsub.bodies[lo : lo + PIPELINE]:
                pipe.publish("capture", body)
            for body in stream.bodies[lo : lo + PIPELINE]:
                pipe.xadd(STREAM, {BODY_FIELD: body})
            pipe.execute()
        sent = time.monotonic() - started
        answers = Answers(redis_srv)
        assert len(set(pubsub.keys() + stream.keys())) == 2 * REQUESTS, "a key per body"
        deadline = time.monotonic() + ANSWER_WAIT
        while True:
            got = answers.read()
            missing = set(pubsub.answered(got) + stream.answered(got))
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log = daemon.log()
        assert not missing, (
            f"{len(missing)} requests unanswered, e.g. {describe(missing, pubsub, stream)}; "
            f"log: {Counter(w.split('=')[1] for w in log.split() if w.startswith('event='))}"
        )
        elapsed = time.monotonic() - started
        assert daemon.proc.poll() is None, "the daemon died"
        events = answers.events
        by_key: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            if e["id"]:
                by_key.setdefault(e["id"], []).append(e)
        statuses = Counter(e["status"] for e in events)
        overloaded = sum(1 for e in events if (e["error"] or "").startswith("overloaded"))
        peak, after = rss(pid, "VmHWM"), rss(pid, "VmRSS")
        bound = memory_bound(load_config(str(daemon.config_path)), idle)
        print(
            f"\nfuzz: {2 * REQUESTS} requests sent in {sent:.1f} s, all answered in "
            f"{elapsed:.1f} s ({2 * REQUESTS / elapsed:.0f}/s); {len(events)} answers "
            f"{dict(statuses)}; overloaded {overloaded}; RSS idle {idle >> 20} MB, "
            f"peak {peak >> 20} MB, after {after >> 20} MB, bound {bound >> 20} MB"
        )
        assert not [e for e in events if "internal error" in (e["error"] or "")]
        assert all(e["error"] for e in events if e["status"] == "rejected")
        for corpus in (pubsub, stream):
            first = [by_key[i][0] for i in corpus.good]
            captured = [e for e in first if e["status"] == "ok"]
            # Over pub/sub a good request may meet a full queue; the stream
            # waits for a free slot, so only pub/sub's captures compete with it.
            wanted = 1 if corpus is pubsub else len(first) // 2
            assert len(captured) >= wanted, f"{corpus.source}: {first}"
            assert all(e["packets"] == 2 for e in captured)
            # The one refusal a good request may meet: the daemon is busy.
            busy = ("max_concurrent=", "overloaded:")
            assert all(any(b in e["error"] for b in busy) for e in first if e["status"] != "ok")
        wait_for(lambda: replies.events.qsize() >= pubsub.reply_to + stream.reply_to, timeout=10)
        assert peak <= bound, f"peak RSS {peak} over the bound {bound}"
        assert "event=subscribed" in daemon.log()
        assert "cause=" not in daemon.log(), "the subscription was lost during the flood"
    finally:
        replies.close()
        daemon.stop()


def test_a_subscriber_dropped_by_redis_says_why_and_how_long_it_was_deaf(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    client = redis_srv.client()
    client.config_set("client-output-buffer-limit", "pubsub 1048576 0 0")
    daemon = Daemon(redis_srv, tmp_path)
    results = Results(redis_srv)
    try:
        daemon.start()
        assert daemon.proc is not None
        # A frozen node reads nothing: Redis's buffer for it passes 1 MB.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(40):
                client.publish("capture", b"x" * 500_000)
            wait_for(lambda: not daemon_subscribed(redis_srv), timeout=10)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "deaf_seconds=" in daemon.log().partition("event=redis_unavailable")[2])
        log = daemon.log()
        assert 'cause="redis is up and did not restart, so it closed the subscription itself: ' \
            "most likely its pub/sub client-output-buffer-limit (hard 1048576 bytes, soft 0 " \
            'bytes for 0 s) was passed because requests arrived faster than this node read them"' \
            in log  # fmt: skip
        deaf = float(log.rsplit("deaf_seconds=", 1)[1].split()[0])
        assert 0 < deaf < 10  # from the last bytes read to subscribed again
        client.publish("capture", json.dumps({"id": "after", "node": "testnode", "alias": "nil"}))
        assert results.for_id("after")["error"].startswith("alias: none of ['nil']")
    finally:
        results.close()
        daemon.stop()


def daemon_subscribed(server: RedisServer) -> bool:
    counts: Any = server.client().pubsub_numsub("capture")
    return bool(counts and counts[0][1])


def test_a_body_without_a_usable_id_is_answered_with_its_digest_and_to_its_reply_to(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path)
    results, replies = Results(redis_srv), Results(redis_srv, REPLIES)
    try:
        daemon.start()
        daemon.publish(b"not json")
        answer = results.next()
        assert answer["id"] is None and answer["status"] == "rejected"
        assert (
            answer["error"]
            == "request is not valid JSON: Expecting value: line 1 column 1 (char 0)"
        )
        assert answer["request_sha256"] == hashlib.sha256(b"not json").hexdigest()
        body = json.dumps({"id": 5, "node": "testnode", "interface": "lo", "reply_to": REPLIES})
        daemon.publish(body)
        answer, replied = results.next(), replies.next()
        assert answer == replied
        assert answer["id"] is None
        assert answer["error"].startswith("id: 5 is not 1-128 of")
        assert answer["request_sha256"] == hashlib.sha256(body.encode()).hexdigest()
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        results.close()
        replies.close()
        daemon.stop()

"""The parse cache (agents.dnswire.agent): answers kept by their bytes after
the ID record what parsing each one records, the parses are held to
dnspython, and bad messages are never kept: each is counted by reason."""

from __future__ import annotations

import itertools
import random
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import dns.message
import dns.rcode
import pytest
import redis

from agents.dnswire import agent as wire_agent
from agents.dnswire.agent import WireAgent
from agents.dnswire.config import parse_dnswire_config
from agents.redis_writer import make_writer
from tests.agents.dnstap.builders import reference
from tests.agents.dnstap.harness import redis_dump
from tests.agents.dnswire import wire as w
from tests.helpers import RedisServer

Traffic = list[tuple[bytes, bytes]]


def templates() -> list[bytes]:
    out = []
    for k in range(40):
        name = f"host{k}.example.test"
        answers: list[w.Answer] = []
        owner = name
        if k % 4 == 0:
            for depth in range(1 + k % 3):
                target = f"edge{k}-{depth}.cdn.example.test"
                answers.append((owner, "CNAME", target + "."))
                owner = target
        qtype = "AAAA" if k % 5 == 1 else "A"
        value = f"2001:db8::{k:x}" if qtype == "AAAA" else f"198.51.100.{k}"
        answers += [(owner, qtype, value), (owner, qtype, value.replace("100", "101", 1))]
        out.append(w.response(name, qtype, answers))
    out.append(w.response("nope.example.test", "A", rcode=dns.rcode.NXDOMAIN))
    out.append(w.response("we\\;ird\\032name.example.test", "A",
                          [("we\\;ird\\032name.example.test", "A", "192.0.2.1")]))  # fmt: skip
    out.append(w.response("nodata.example.test", "AAAA"))
    out.append(w.response("mx.example.test", "MX", [("mx.example.test", "MX", "10 a.test.")]))
    return out


def mutate(rng: random.Random, message: bytes) -> bytes:
    """Bytes after the ID changed, cut or a count made to lie."""
    data = bytearray(message)
    kind = rng.random()
    if kind < 0.4:
        data[rng.randrange(2, len(data))] = rng.randrange(256)
    elif kind < 0.7:
        del data[rng.randrange(2, len(data)) :]
    else:
        at = rng.randrange(4, 11)
        data[at : at + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x00\x07"))
    return bytes(data)


def traffic(seed: int, n: int = 3000) -> Traffic:
    rng = random.Random(seed)
    base = templates()
    clients = [bytes((10, 0, 0, c)) for c in range(1, 30)] + [bytes(15) + b"\x09"]
    bad = [mutate(rng, rng.choice(base)) for _ in range(300)]
    out = []
    for _ in range(n):
        roll = rng.random()
        message = rng.choice(bad) if roll < 0.2 else base[min(int(rng.expovariate(0.15)), 43)]
        out.append((rng.choice(clients), rng.randbytes(2) + message[2:]))
    return out


def run(
    url: str, packets: Traffic
) -> tuple[dict[str, str], dict[str, Any], WireAgent, list[bytes]]:
    """The key space, the counters, the agent and the export packets sent."""
    redis.Redis.from_url(url).flushall()
    config = parse_dnswire_config({"read": "-", "dedup_window": 0.5})
    writer = make_writer(config, lambda: redis.Redis.from_url(url, socket_timeout=5))
    steps = itertools.count()
    clock: Callable[[], float] = lambda: next(steps) * 0.01  # noqa: E731 (same in both runs)
    exported: list[bytes] = []
    agent = WireAgent(config, writer, exported.append, clock=clock)
    writer.start()
    for client, message in packets:
        agent.on_message(client, b"\x0a\x00\x00\x35", message)
    agent.finish()  # hands what the recorder gathered to the writer, sends the last packet
    writer.stop(30)
    stats = agent.snapshot()
    for volatile in ("parse_cache_hits", "queue_depth"):
        stats.pop(volatile)
    assert stats["keys_dropped"] == 0
    return redis_dump(redis.Redis.from_url(url)), stats, agent, exported


@pytest.mark.parametrize("seed", [1, 2])
def test_cached_parses_record_what_parsing_each_records(
    redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    packets = traffic(seed)
    cached_keys, cached_stats, agent, cached_export = run(redis_srv.url, packets)
    assert agent.parse_hits > 1500  # most answers repeat
    assert sum(agent.dns_errors.values()) > 100 and "truncated" in agent.dns_errors
    monkeypatch.setattr(wire_agent, "PARSE_CACHE_MAX_MESSAGE", -1)  # keep nothing
    plain_keys, plain_stats, plain, plain_export = run(redis_srv.url, packets)
    assert plain.parse_hits == 0
    assert cached_keys == plain_keys and len(cached_keys) > 100
    assert cached_export == plain_export and len(cached_export) > 10  # the cached export sets
    assert cached_stats == plain_stats  # bad messages counted by reason each time


def test_what_the_cache_holds_is_what_dnspython_reads(redis_srv: RedisServer) -> None:
    _keys, _stats, agent, _exported = run(redis_srv.url, traffic(3))
    held = {**agent._parsed_old, **agent._parsed}
    good = {t[2:] for t in templates()}
    checked = 0
    for key, (resp, _prepared, _body, _cost) in held.items():
        message = b"\x00\x00" + key
        if key not in good:
            continue  # a mutation the narrow parser accepts: dnspython may read more
        ref = reference(message)
        assert (resp.qname, resp.qtype, resp.rcode, resp.chain) == (
            ref.qname, ref.qtype, ref.rcode, ref.chain,
        )  # fmt: skip
        assert sorted(set(resp.addresses)) == sorted(ref.addresses)
        checked += 1
    assert checked >= 30


def test_the_cache_is_bounded(redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_agent, "PARSE_CACHE_ENTRIES", 8)
    _keys, _stats, agent, _exported = run(redis_srv.url, traffic(4, n=500))
    assert len(agent._parsed) <= 8 and len(agent._parsed_old) <= 8


def long_chain(ttl: int, fill: bytes) -> bytes:
    """A response of at most PARSE_CACHE_MAX_MESSAGE bytes that parses into as
    much text as it can: a 244-byte question name, then CNAMEs each adding
    one label in front of it (16 bytes of message for ~245 characters), an
    address at the end. `fill` b"\\0" makes every character an escape."""
    label = bytes([63]) + fill * 63
    qname = label * 3 + bytes([50]) + fill * 50 + b"\0"
    question = qname + struct.pack(">HH", 1, 1)
    answers, owner, at, links = b"", 12, 12 + len(question), 0
    while 12 + len(question) + len(answers) + 16 + 16 + 16 <= wire_agent.PARSE_CACHE_MAX_MESSAGE:
        rdata = bytes([1, 0x61 + links % 26]) + struct.pack(">H", 0xC000 | 12)
        answers += struct.pack(">HHHIH", 0xC000 | owner, 5, 1, ttl, len(rdata)) + rdata
        owner, at, links = at + 12, at + 16, links + 1
    answers += struct.pack(">HHHIH", 0xC000 | owner, 1, 1, ttl, 4) + b"\x01\x02\x03\x04"
    header = struct.pack(">HHHHHH", 0, 0x8180, 1, links + 1, 0, 0)
    return header + question + answers


@pytest.mark.parametrize("kind", ["typical", "long chains", "escaped long chains"])
def test_an_entrys_estimated_cost_is_at_least_what_it_holds(kind: str) -> None:
    """The byte budget bounds the cache only if `_entry_cost` does not
    undercount: measured with tracemalloc over 500 distinct entries,
    recording and exporting (the most an entry holds)."""
    if kind == "typical":
        messages = [
            w.response(f"host{i}.example.test", "A", [(f"host{i}.example.test", "A", "192.0.2.1")])
            for i in range(500)
        ]
    else:
        messages = [long_chain(ttl, b"\0" if kind.startswith("escaped") else b"a")
                    for ttl in range(500)]  # fmt: skip
    assert dns.message.from_wire(messages[0]).answer  # a real response, as dnspython reads it
    config = parse_dnswire_config({"read": "-", "dedup_window": 0})  # the deduper holds nothing
    writer = make_writer(config, lambda: redis.Redis(port=1))  # never started: ops just queue
    agent = WireAgent(config, writer, lambda packet: None, clock=lambda: 0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for message in messages:
            agent.on_message(b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x35", message)
        agent.ops.keys.clear()  # type: ignore[union-attr]  # the writer's share, not the cache's
        agent.ops.args.clear()  # type: ignore[union-attr]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimated = sum(entry[3] for entry in agent._parsed.values())
    assert len(agent._parsed) == len(messages) and agent.parse_hits == 0
    assert held <= estimated, (
        f"{held / len(messages):.0f} B held per entry, {estimated / len(messages):.0f} estimated"
    )


def test_the_byte_budget_turns_the_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire_agent, "PARSE_CACHE_BYTES", 200_000)
    config = parse_dnswire_config({"read": "-"})
    agent = WireAgent(config, None, lambda packet: None, clock=lambda: 0.0)
    for ttl in range(300):  # ~15 KB each by the estimate
        agent.on_message(b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x35", long_chain(ttl, b"a"))
    for generation in (agent._parsed, agent._parsed_old):
        assert 0 < sum(entry[3] for entry in generation.values()) <= 200_000
    assert len(agent._parsed) + len(agent._parsed_old) < 40
    assert agent.packer is not None and agent.packer.stats.too_large == 300  # each counted
    assert all(entry[2] is not None and entry[2].tail == b"" for entry in agent._parsed.values())

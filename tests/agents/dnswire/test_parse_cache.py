"""The parse cache (agents.dnswire.agent): answers kept by their bytes after
the ID record what parsing each one records, the parses are held to
dnspython, and bad messages are never kept: each is counted by reason."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

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
    for key, (resp, _prepared, _body) in held.items():
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

"""`Recorder`: the outcome of each kind of response, and its keys in a real
redis-server (the values ShoDoHFlo's agents write, see test_agent.py)."""

from __future__ import annotations

import dns.rcode
import redis

from agents.dnstap import record
from agents.dnstap.dedup import Deduper
from agents.dnstap.response import parse_response
from agents.redis_writer import RedisWriter
from tests.agents.dnstap.builders import response_wire
from tests.agents.dnstap.harness import redis_dump
from tests.helpers import RedisServer

WWW = parse_response(
    response_wire("www.example.test.", "A", [("www.example.test.", "A", "192.0.2.10")])
)
NODATA = parse_response(response_wire("v6only.example.test.", "A"))
NX = parse_response(response_wire("nope.example.test.", "A", rcode=dns.rcode.NXDOMAIN))


def _recorder(url: str, global_dedup: bool) -> tuple[record.Recorder, RedisWriter]:
    writer = RedisWriter(lambda: redis.Redis.from_url(url, socket_timeout=2))
    writer.start()
    return record.Recorder(writer, Deduper(30, 1000), global_dedup), writer


def test_outcomes_per_client(redis_srv: RedisServer) -> None:
    rec, writer = _recorder(redis_srv.url, global_dedup=False)
    got = [rec.record(c, rec.prepare(r)) for c, r in
           [("10.0.0.1", WWW), ("10.0.0.2", WWW), ("10.0.0.1", WWW), ("10.0.0.1", NODATA),
            ("10.0.0.1", NX), ("10.0.0.1", NX)]]  # fmt: skip
    assert got == [record.RECORDED, record.RECORDED, record.DEDUPED, record.NO_ADDRESS,
                   record.NXDOMAIN, record.NXDOMAIN]  # fmt: skip
    writer.stop()
    assert redis_dump(redis_srv.client()) == {
        "client;10.0.0.1": "3",
        "10.0.0.1;192.0.2.10;dns": ";www.example.test.;",
        "10.0.0.1;nope.example.test.;nx": "2",
        "client;10.0.0.2": "1",
        "10.0.0.2;192.0.2.10;dns": ";www.example.test.;",
    }


def test_global_dedup_ignores_the_client(redis_srv: RedisServer) -> None:
    rec, writer = _recorder(redis_srv.url, global_dedup=True)
    assert [rec.record(c, rec.prepare(WWW)) for c in ("10.0.0.1", "10.0.0.2")] == [
        record.RECORDED, record.DEDUPED,
    ]  # fmt: skip
    writer.stop()

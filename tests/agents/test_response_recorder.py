"""`ResponseRecorder`, the filters and counters both DNS agents share: each
filter counted under its own name, only what passes written, into a real
redis-server."""

from __future__ import annotations

import ipaddress

import dns.rcode
import redis

from agents.dnstap.config import parse_dnstap_config
from agents.dnstap.response import parse_response
from agents.redis_writer import make_writer
from agents.response_recorder import ResponseRecorder
from tests.agents.dnstap.builders import response_wire
from tests.agents.dnstap.harness import redis_dump
from tests.helpers import RedisServer

CLIENT = ipaddress.ip_address("10.0.0.1").packed


def _answer(name: str, qtype: str = "A", value: str = "192.0.2.1") -> bytes:
    return response_wire(name, qtype, [(name, qtype, value)])


def test_each_filter_is_counted_and_only_what_passes_is_written(redis_srv: RedisServer) -> None:
    config = parse_dnstap_config({"ignore": ["Internal.Example."], "flush_interval": 0.01})
    writer = make_writer(config, lambda: redis.Redis.from_url(redis_srv.url, socket_timeout=2))
    writer.start()
    rec = ResponseRecorder(writer, config)
    for wire in (
        _answer("www.example.test."),  # recorded
        _answer("mail.example.test.", "MX", "10 mx.example.test."),  # not a recorded type
        response_wire("broken.example.test.", "A", rcode=dns.rcode.SERVFAIL),
        _answer("internal.example."),  # the ignored name itself
        _answer("db.internal.example."),  # under it
        _answer("notinternal.example."),  # only a suffix of its text: recorded
        response_wire("empty.example.test.", "A"),  # NODATA: no address
        response_wire("nope.example.test.", "A", rcode=dns.rcode.NXDOMAIN),
    ):
        rec.record(CLIENT, parse_response(wire))
    writer.stop()
    stats = rec.stats
    assert (stats.responses, stats.nxdomain, stats.other_qtype, stats.other_rcode) == (3, 1, 1, 1)
    assert (stats.ignored, stats.no_address, stats.deduped) == (2, 1, 0)
    assert redis_dump(redis_srv.client()) == {
        "client;10.0.0.1": "3",  # an address each, and the NXDOMAIN
        "10.0.0.1;192.0.2.1;dns": ";www.example.test.;;notinternal.example.;",
        "10.0.0.1;nope.example.test.;nx": "1",
    }

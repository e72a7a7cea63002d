"""The key schema and the batched writer against a real redis-server."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis

from agents.redis_writer import RedisWriter
from agents.store import (
    APPEND_SCRIPT,
    client_key,
    cname_key,
    dns_key,
    flow_key,
    icmp_key,
    nx_key,
    peer_key,
    rst_key,
)
from tests.agents.writes import record_answer, record_nxdomain
from tests.helpers import RedisServer, free_port, logged, wait_for


def writer_for(url: str, **options: Any) -> RedisWriter:
    writer = RedisWriter(lambda: redis.Redis.from_url(url, socket_timeout=2), ttl=900, **options)
    writer.start()
    return writer


def test_keys_are_spelled_as_shodohflo_reads_them() -> None:
    assert client_key("10.0.0.1") == "client;10.0.0.1"
    assert dns_key("10.0.0.1", "1.2.3.4") == "10.0.0.1;1.2.3.4;dns"
    assert cname_key("10.0.0.1", "b.example.") == "10.0.0.1;b.example.;cname"
    assert nx_key("10.0.0.1", "nope.example.") == "10.0.0.1;nope.example.;nx"
    assert flow_key("10.0.0.1", "1.2.3.4", 443) == "10.0.0.1;1.2.3.4;443;flow"
    assert peer_key("a", "b") == "a;b;peer"
    assert rst_key("10.0.0.1", "1.2.3.4", 5555, 80) == "10.0.0.1;1.2.3.4;5555:80;rst"
    assert icmp_key("10.0.0.1", "1.2.3.4", 5555, 53, 3) == "10.0.0.1;1.2.3.4;5555:53;3;icmp"


def test_incr_and_append_once_with_ttl(redis_srv: RedisServer) -> None:
    writer = writer_for(redis_srv.url)
    for _ in range(3):
        writer.incr("client;c")
        writer.append("c;1.2.3.4;dns", "a.example.")
    writer.append("c;1.2.3.4;dns", "b.example.")
    writer.stop()
    client = redis_srv.client()
    assert client.get("client;c") == b"3"
    assert client.get("c;1.2.3.4;dns") == b";a.example.;;b.example.;"
    assert 890 <= client.ttl("client;c") <= 900 and 890 <= client.ttl("c;1.2.3.4;dns") <= 900
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (7, 0)


def test_recording_an_answer_and_an_nxdomain(redis_srv: RedisServer) -> None:
    """ShoDoHFlo's values: `client;` +1 per distinct address (dnspython's rrset
    holds an address once; dns_agent `answer_to_redis_` runs per address),
    nothing for a chain without one, `\\;` unescaped in `nx` (`nx_to_redis`)."""
    writer = writer_for(redis_srv.url)
    chain = ("a.example.", "b.example.")
    assert record_answer(writer, "c", chain, ("192.0.2.1", "192.0.2.2", "192.0.2.1")) == 2
    assert record_answer(writer, "c", ("dangling.example.", "x.invalid."), ()) == 0
    record_nxdomain(writer, "c", "semi\\;colon.example.")
    writer.stop()
    client = redis_srv.client()
    assert {key.decode(): client.get(key) for key in client.scan_iter()} == {
        "client;c": b"3",
        "c;b.example.;cname": b";a.example.;",
        "c;192.0.2.1;dns": b";b.example.;",
        "c;192.0.2.2;dns": b";b.example.;",
        "c;semi;colon.example.;nx": b"1",
    }


def test_incr_by_an_amount_is_one_operation(redis_srv: RedisServer) -> None:
    writer = writer_for(redis_srv.url)
    writer.incr("client;c", 3)
    writer.incr("client;c")
    with pytest.raises(ValueError, match="non-empty member"):
        writer.append("c;1.2.3.4;dns", "")
    writer.append("c;1.2.3.4;dns", "\0x")  # a member, whatever it holds: ops are typed
    writer.stop()
    assert redis_srv.client().get("client;c") == b"4"
    assert redis_srv.client().get("c;1.2.3.4;dns") == b";\0x;"
    assert writer.stats.written_ops == 3


def test_a_key_of_another_type_costs_that_key_not_the_batch(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    client = redis_srv.client()
    client.rpush("c;9.9.9.9;dns", "a list, not a string")
    client.set("client;x", "not a number")
    writer = writer_for(redis_srv.url)
    writer.append("c;9.9.9.9;dns", "a.example.")
    writer.incr("client;x")
    writer.incr("client;c")
    writer.stop()
    assert client.get("client;c") == b"1"
    assert (writer.stats.rejected_ops, writer.stats.written_ops) == (2, 1)
    assert writer.stats.dropped_ops == 2  # refused is dropped: the agents' keys_dropped
    # One line per cause (Redis's own code for each), however many keys.
    assert {(line["cause"], line["ops"]) for line in refusals(caplog)} == {
        ("WRONGTYPE", 1), ("ERR", 1)}  # fmt: skip
    # Another application's keys keep their TTL (none): no EXPIRE follows a refusal.
    assert client.ttl("c;9.9.9.9;dns") == client.ttl("client;x") == -1
    assert 0 < client.ttl("client;c") <= 900
    again = writer_for(redis_srv.url)  # the queue is not wedged behind them
    again.incr("client;c")
    again.stop()
    assert client.get("client;c") == b"2"


def refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return logged(caplog, "redis_writes_refused")


def test_a_read_only_replica_holds_the_writes_until_it_is_promoted(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """READONLY is "not now" (a primary demoted mid-failover, reached by
    address), as for the daemon's results: nothing is dropped while Redis
    is a replica; promoted, it takes every write, each once."""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    admin = private_redis.client()
    admin.replicaof("127.0.0.1", free_port())
    writer = writer_for(private_redis.url, batch_ops=2)
    for index in range(6):
        writer.incr(f"client;{index}")
    writer.incr("client;0")
    writer.flush()
    wait_for(lambda: writer.stats.redis_errors >= 2)
    assert writer.stats.dropped_ops == 0 and writer.stats.written_ops == 0
    failures = logged(caplog, "redis_write_failed")
    assert failures and "read only replica" in failures[0]["error"]
    admin.replicaof("NO", "ONE")
    wait_for(lambda: writer.stats.written_ops == 7, timeout=30)
    writer.stop()
    assert (writer.stats.rejected_ops, writer.stats.dropped_ops) == (0, 0)
    assert admin.mget([f"client;{index}" for index in range(6)]) == [b"2"] + [b"1"] * 5
    assert 0 < admin.ttl("client;5") <= 900
    assert refusals(caplog) == []


def refusing_url(server: RedisServer) -> str:
    """A URL for `server` as an ACL user Redis refuses the writer's writes
    (NOPERM: a lasting "no", counted as dropped)."""
    server.client().acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"],
                                commands=["+@all", "-evalsha", "-incrby"])  # fmt: skip
    return f"redis://agent:pw@127.0.0.1:{server.port}/0"


def test_an_acl_denying_a_command_drops_the_keys(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    admin = private_redis.client()
    admin.set("client;d", 3)  # existed: the follow-up leaves it be
    writer = writer_for(refusing_url(private_redis))
    writer.incr("client;c")
    writer.incr("client;d")
    writer.append("c;1.2.3.4;dns", "a.")
    writer.stop()
    # The counter's SET NX (allowed) made it at "0", a value ShoDoHFlo never
    # writes: the follow-up took it away again.
    assert writer.stats.dropped_ops == 3 and admin.get("client;c") is None
    assert admin.get("client;d") == b"3"
    lines = refusals(caplog)  # the first, then what the rate limit held, at stop
    assert {line["cause"] for line in lines} == {"NOPERM"}  # the code redis-py cut off
    assert sum(line["ops"] for line in lines) == 3


def test_a_refused_expire_is_counted_and_logged(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A counter that existed, Redis took, but whose EXPIRE it refused
    stands without its TTL: counted (expires_lost) and logged, never
    silent. A counter the write made has its TTL from the first round trip
    (SET NX EX), the follow-up's EXPIRE refused or not."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    admin = private_redis.client()
    admin.set("client;c", 5)
    admin.hset("client;h", "field", "another application's")
    admin.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-expire"])  # fmt: skip
    port = admin.connection_pool.connection_kwargs["port"]
    writer = writer_for(f"redis://agent:pw@127.0.0.1:{port}/0")
    writer.incr("client;c")
    writer.incr("client;new")
    writer.incr("client;h")  # WRONGTYPE: its SET NX did nothing either
    writer.stop()
    assert admin.hgetall("client;h") == {b"field": b"another application's"}
    assert admin.ttl("client;h") == -1 and writer.stats.rejected_ops == 1
    assert admin.get("client;c") == b"6" and admin.ttl("client;c") == -1
    assert admin.get("client;new") == b"1" and 0 < admin.ttl("client;new") <= 900
    assert writer.stats.written_ops == 2 and writer.stats.expires_lost == 1
    (line,) = logged(caplog, "redis_expires_refused")
    assert (line["cause"], line["keys"]) == ("NOPERM", 1)


def test_an_append_whose_expire_is_refused_is_counted_logged_and_fails_access(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL allowing APPEND but not EXPIRE: the script's keys are written
    without their TTL, which the writer counts, logs and keeps for
    readiness (redis_access), as for a counter's refused EXPIRE."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    admin = private_redis.client()
    admin.set("10.0.9.2;192.0.2.2;dns", ";old.;")
    admin.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-expire"])  # fmt: skip
    port = admin.connection_pool.connection_kwargs["port"]
    writer = writer_for(f"redis://agent:pw@127.0.0.1:{port}/0")
    writer.append("10.0.9.1;192.0.2.1;dns", "a.")
    writer.append("10.0.9.2;192.0.2.2;dns", "b.")
    writer.stop()
    assert admin.get("10.0.9.1;192.0.2.1;dns") == b";a.;"
    assert admin.get("10.0.9.2;192.0.2.2;dns") == b";old.;;b.;"
    assert admin.ttl("10.0.9.1;192.0.2.1;dns") == -1
    assert writer.stats.written_ops == 2 and writer.stats.expires_lost == 2
    (line,) = logged(caplog, "redis_expires_refused")
    assert (line["cause"], line["keys"]) == ("NOPERM", 2)
    assert writer.access_refused is not None
    assert writer.access_refused[1] == (
        "ERR The user executing the script can't run this command or subcommand"
        " (the append script's EXPIRE)"
    )


def test_refused_expires_and_index_sadds_are_each_logged(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The rate limit is per event: a refused EXPIRE logged does not hide
    the refused index SADDs of the same round trip."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    admin = private_redis.client()
    admin.set("client;c", 5)
    admin.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-expire", "-sadd"])  # fmt: skip
    port = admin.connection_pool.connection_kwargs["port"]
    writer = writer_for(f"redis://agent:pw@127.0.0.1:{port}/0", index=True)
    writer.incr("client;c")
    writer.append("10.0.9.1;192.0.2.1;dns", "a.")
    writer.stop()
    assert writer.stats.written_ops == 2 and writer.stats.index_lost == 1
    names = [r.getMessage() for r in caplog.records]
    assert names.count("redis_expires_refused") == 1 and names.count("redis_index_refused") == 1


def test_full_queue_drops_and_counts_never_blocks() -> None:
    writer = RedisWriter(
        lambda: redis.Redis(port=free_port(), socket_timeout=0.2),
        max_queue_ops=10, batch_ops=5,
    )  # fmt: skip
    for index in range(40):
        writer.incr(f"k{index}")
    writer.flush()
    assert writer.stats.dropped_ops == 30
    assert writer.queue_depth == 10


def test_extend_queues_what_fits_and_counts_the_rest() -> None:
    writer = RedisWriter(
        lambda: redis.Redis(port=free_port(), socket_timeout=0.2),
        max_queue_ops=10, batch_ops=4,
    )  # fmt: skip
    writer.extend(["a", "b", "c"], [1, "x", 2])
    writer.extend([f"k{i}" for i in range(9)], ["y"] * 9)  # 7 fit
    writer.extend(["z"], [1])  # full: all dropped
    writer.flush()
    assert writer.stats.dropped_ops == 3
    assert writer.queue_depth == 10 and writer.stats.queued_ops == 10


def test_waiting_for_room_gives_up_when_redis_is_down() -> None:
    writer = RedisWriter(
        lambda: redis.Redis(port=free_port(), socket_timeout=0.2),
        max_queue_ops=10, batch_ops=5,
    )  # fmt: skip
    writer.extend([f"k{i}" for i in range(10)], [1] * 10)
    assert writer.wait_for_room(0, patience=5.0)  # nothing more needed: at once
    started = time.monotonic()
    assert not writer.wait_for_room(5, patience=0.3)  # no writer thread: never shrinks
    assert 0.3 <= time.monotonic() - started < 5.0


def test_waiting_for_room_returns_once_a_live_writer_has_sent(redis_srv: RedisServer) -> None:
    """A full queue, a flush interval an hour long: the waiting producer is
    let go once the sender has drained the queue, and nothing is dropped."""
    writer = writer_for(redis_srv.url, max_queue_ops=10, batch_ops=5, flush_interval=3600)
    writer.extend([f"room:k{i}" for i in range(10)], [1] * 10)
    started = time.monotonic()
    assert writer.wait_for_room(5, patience=10.0)
    assert time.monotonic() - started < 5.0
    writer.extend([f"room:k{i}" for i in range(5)], [1] * 5)
    writer.stop()
    assert writer.stats.dropped_ops == 0 and writer.stats.written_ops == 15
    client = redis_srv.client()
    assert [client.get(f"room:k{i}") for i in (0, 9)] == [b"2", b"1"]


def test_what_is_queued_when_stopping_with_redis_down_is_counted_as_lost() -> None:
    writer = writer_for(f"redis://127.0.0.1:{free_port()}/0")
    for index in range(7):
        writer.incr(f"k{index}")
    writer.stop(timeout=0.5)
    assert writer.stats.dropped_ops == 7 and writer.queue_depth == 0
    assert writer.stats.redis_errors >= 1


def test_an_idle_writer_pings_every_ping_interval(private_redis: RedisServer) -> None:
    """Readiness follows Redis within a ping_interval while nothing is
    written (the default, 5 s, would outlast the 3 s allowed here)."""
    writer = writer_for(private_redis.url, ping_interval=0.1)
    try:
        wait_for(lambda: writer.connected, timeout=10)
        private_redis.stop()
        wait_for(lambda: not writer.connected, timeout=3)
        private_redis.start()
        wait_for(lambda: writer.connected, timeout=15)
    finally:
        writer.stop()


def test_writes_resume_after_redis_comes_back(private_redis: RedisServer) -> None:
    writer = writer_for(private_redis.url)
    private_redis.stop()
    writer.incr("client;late")
    writer.flush()
    wait_for(lambda: writer.stats.redis_errors >= 1)
    private_redis.start()
    wait_for(lambda: writer.stats.written_ops == 1, timeout=15)
    writer.stop()
    assert private_redis.client().get("client;late") == b"1"


@pytest.mark.parametrize("report", ["0", "1", "2"])
def test_the_append_script_per_key_state(redis_srv: RedisServer, report: str) -> None:
    """Each state a key can be in when the script meets it, in one call: absent
    with one member (appended at once) or two, holding the member already or
    another one, of another type. Values, TTLs and the reply are what one
    append at a time gives, for each thing the index asks (`report`)."""
    client = redis_srv.client()
    client.flushall()
    client.set("held;dns", ";a.;")
    client.set("other;dns", ";x.;")
    client.rpush("list;dns", "v")
    keys = ["new;dns", "pair;dns", "pair;dns", "held;dns", "other;dns", "list;dns"]
    members = ["a.", "a.", "b.", "a.", "a.", "a."]
    reply = client.eval(APPEND_SCRIPT, len(keys), *keys, 900, report, *members)
    assert client.get("new;dns") == b";a.;"
    assert client.get("pair;dns") == b";a.;;b.;"
    assert client.get("held;dns") == b";a.;"
    assert client.get("other;dns") == b";x.;;a.;"
    for key in ("new;dns", "pair;dns", "held;dns", "other;dns"):
        assert 890 <= client.ttl(key) <= 900
    assert client.ttl("list;dns") == -1  # refused: its TTL left alone
    assert reply[0] == [6] and len(reply[1]) == 1 and b"WRONGTYPE" in reply[1][0]
    # "2" (a lost reply's resend) also names a key its members begin.
    created = {"0": [], "1": [b"new;dns", b"pair;dns"], "2": [b"new;dns", b"pair;dns", b"held;dns"]}
    assert reply[2] == []  # no EXPIRE refused
    assert reply[3:] == created[report]

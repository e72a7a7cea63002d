"""One round trip of the agents' writer and how its replies are counted
(agents/redis_send.py), on a real redis-server and the cluster fixture:
what Redis ran is never sent again, what it did not answer is."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from agents.redis_wire import _SHA
from agents.redis_writer import RedisWriter
from agents.store import APPEND_SCRIPT, INCR, index_of
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.redis_wire import pack_command
from pcapd.core.secret import Secret
from tests.agents.test_redis_writer_cluster import slots_of
from tests.agents.test_store import refusals
from tests.agents.writes import writer_metric
from tests.helpers import (
    RedisCluster,
    RedisServer,
    ReplyCutter,
    free_cluster_port,
    free_port,
    logged,
    redis_server,
    run_until_killed,
    stop_process,
    wait_for,
)


def started(connect: Any, **options: Any) -> RedisWriter:
    writer = RedisWriter(connect, ttl=900, flush_interval=0.02, **options)
    writer.start()
    return writer


def test_a_cluster_node_reached_through_redis_url_refuses_what_it_does_not_own(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """MOVED on a plain connection is a refusal, counted and logged saying
    what to do; the slots the node owns are written once, never resent.
    (Appends go in script calls of many slots' keys: CROSSSLOT there.)"""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    port = redis_cluster.ports[0]
    counters = [f"client;10.0.3.{index}" for index in range(60)]
    writer = started(lambda: redis.Redis(port=port, socket_timeout=5))
    try:
        for key in counters:
            writer.incr(key)
        writer.append("10.0.3.1;192.0.2.1;dns", "a.")
        wait_for(lambda: writer.stats.written_ops + writer.stats.rejected_ops == 61, timeout=30)
        wait_for(lambda: writer.queue_depth == 0)
    finally:
        writer.stop(10)
    owned = slots_of(redis_cluster, port)
    mine = [key for key in counters if key_slot(key.encode()) in owned]
    assert 0 < len(mine) < 60
    stats = writer.stats
    assert stats.written_ops + stats.rejected_ops == 61 and stats.redis_errors == 0
    assert stats.written_ops - len(mine) in (0, 1)  # the append: its slot's or not
    with redis_cluster.node(port) as node:
        assert [node.get(key) for key in mine] == ["1"] * len(mine)  # once: not resent
        assert all(0 < node.ttl(key) <= 900 for key in mine)
    lines = refusals(caplog)
    assert {line["cause"] for line in lines} == {"MOVED"}
    assert "a cluster node: use redis+cluster://" in lines[0]["error"]
    assert sum(line["ops"] for line in lines) == stats.rejected_ops


@contextmanager
def half_served_node(workdir: Path) -> Iterator[redis.Redis]:
    """A one-node cluster serving slots 0-8191 only (full coverage not
    required): the other slots answer CLUSTERDOWN until they are added."""
    port = free_cluster_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(workdir / "nodes.conf"),
         "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    node = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
    try:
        wait_for(RedisServer(port=port, workdir=workdir).ready)  # its ping, not its process
        _add_slots(node, 0, 8191)
        wait_for(lambda: node.cluster("info")["cluster_state"] == "ok")
        yield node
    finally:
        node.close()
        stop_process(proc)


def _add_slots(node: redis.Redis, first: int, last: int) -> None:
    node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]


def test_clusterdown_on_a_plain_connection_resends_only_those_entries(tmp_path: Path) -> None:
    """Entries answered CLUSTERDOWN are sent again after the backoff, alone:
    the ones Redis ran beside them are counted once and never resent."""
    with half_served_node(tmp_path) as node:
        port = node.connection_pool.connection_kwargs["port"]
        keys = [f"client;10.0.7.{index}" for index in range(40)]
        served = [key for key in keys if key_slot(key.encode()) <= 8191]
        assert 0 < len(served) < 40
        writer = started(lambda: redis.Redis(port=port, socket_timeout=5))
        try:
            for key in keys:
                writer.incr(key)
            wait_for(lambda: writer.stats.written_ops == len(served), timeout=30)
            wait_for(lambda: writer.stats.redis_errors >= 2, timeout=30)  # resent, refused again
            assert [node.get(key) for key in served] == ["1"] * len(served)
            _add_slots(node, 8192, 16383)
            wait_for(lambda: writer.stats.written_ops == 40 and writer.queue_depth == 0,
                     timeout=30)  # fmt: skip
        finally:
            writer.stop(5)
        assert [node.get(key) for key in keys] == ["1"] * 40
        assert writer.stats.rejected_ops == 0 and writer.stats.dropped_ops == 0


def test_an_index_follow_up_that_got_no_answer_is_sent_again(redis_srv: RedisServer) -> None:
    """The second round trip (the index's SADDs) lost: counted as a failed
    round trip, and sent again once Redis answers, so the index the
    correlator reads holds every key created."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    proxy = ReplyCutter(redis_srv.port, b"SADD")
    proxy.swallow = True  # the SADDs run, their replies never come
    keys = [f"10.0.4.1;192.0.2.{index};dns" for index in range(5)]
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5), index=True)
    try:
        for key in keys:
            writer.append(key, "a.")
        wait_for(lambda: writer.stats.written_ops == 5 and writer.stats.redis_errors >= 1,
                 timeout=30)  # fmt: skip
        admin.delete(index_of(keys[0]))  # as if those SADDs had never run
        proxy.swallow = False
        proxy.cut()
        wait_for(lambda: admin.smembers(index_of(keys[0])) == set(keys), timeout=30)
    finally:
        writer.stop(5)
        proxy.close()
    assert writer.stats.written_ops == 5 and writer.stats.index_lost == 0
    assert 0 < admin.ttl(index_of(keys[0])) <= 900
    admin.close()


def test_replies_read_before_a_connection_fails_are_counted_once(redis_srv: RedisServer) -> None:
    """One server stops answering partway through a round trip's replies:
    each round, only the first two counters' replies come (SET NX's and
    INCRBY's, 9 bytes each). Those two are counted, once, and only the rest
    go again, so each round makes progress and the writes all end counted.
    Sending the whole batch again (as before) never got past the first
    round, and counted the first counters again on every one. The ones whose
    replies were lost had run: sent again, they count twice (at least once:
    Redis's reply is the only word on what it ran)."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    proxy = ReplyCutter(redis_srv.port, b"INCRBY", pass_bytes=18)
    proxy.swallow = True
    keys = [f"client;10.0.9.{index}" for index in range(6)]
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5))
    try:
        for key in keys:
            writer.incr(key)
        wait_for(lambda: writer.stats.written_ops == len(keys), timeout=60)
        assert writer.stats.redis_errors >= 2  # rounds that left some unanswered
    finally:
        writer.stop(5)
        proxy.close()
    values = [int(admin.get(key) or 0) for key in keys]
    assert values[:2] == [1, 1]  # answered in the first round: counted once
    assert all(value >= 1 for value in values)
    admin.close()


def test_a_counter_made_before_the_link_broke_is_still_indexed(redis_srv: RedisServer) -> None:
    """Only the SET NX's reply comes (5 bytes), then the link breaks: the
    counter was made here, so it goes into its client's index, though the
    resend finds it existing; and it counts its write."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    proxy = ReplyCutter(redis_srv.port, b"INCRBY", pass_bytes=5)
    proxy.swallow = True
    key = "10.0.9.77;example.test.;nx"
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5), index=True)
    try:
        writer.incr(key)
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        proxy.swallow = False
        proxy.cut()
        wait_for(lambda: writer.stats.written_ops == 1 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: admin.smembers(index_of(key)) == {key}, timeout=30)
    finally:
        writer.stop(5)
        proxy.close()
    admin.close()


@pytest.mark.parametrize("then", ["answered", "never-sent"])
def test_a_counter_made_by_a_round_trip_whose_replies_were_all_lost_is_indexed(
    redis_srv: RedisServer, then: str
) -> None:
    """Redis ran SET NX and INCRBY (it made the key) and not one reply was
    read: sent again, the key holds what the lost pair left, so it goes
    into its client's index as in a clean run; a key that held something
    else (another writer's) does not. With `never-sent`, a second round
    trip whose replies were lost too never reached Redis: the key then
    holds less than every lost send's amount, and is indexed all the same
    (before, only a key holding all of them was)."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    proxy = ReplyCutter(redis_srv.port, b"INCRBY", pass_bytes=0)
    proxy.swallow = True
    client = "10.0.9.78" if then == "answered" else "10.0.9.79"
    mine, theirs = f"{client};example.test.;nx", f"{client};other.test.;nx"
    admin.set(theirs, 41)
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5), index=True)
    try:
        writer.extend([mine, theirs], [INCR, INCR])
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        assert admin.mget(mine, theirs) == ["1", "42"]  # Redis ran both pairs
        proxy.swallow = False
        if then == "never-sent":
            proxy.drop = True
            proxy.cut()
            wait_for(lambda: writer.stats.redis_errors >= 2, timeout=30)
            assert admin.mget(mine, theirs) == ["1", "42"]  # the second never reached it
            proxy.drop = False
        proxy.cut()
        wait_for(lambda: writer.stats.written_ops == 2 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: admin.smembers(index_of(mine)) == {mine}, timeout=30)
    finally:
        writer.stop(5)
        proxy.close()
    assert admin.mget(mine, theirs) == ["2", "43"]  # at least once: counted twice
    assert admin.smembers(index_of(mine)) == {mine}
    assert writer.stats.index_lost == 0
    admin.close()


def test_a_noscript_right_after_script_load_leaves_the_appends_queued(
    redis_srv: RedisServer,
) -> None:
    """A SCRIPT FLUSH between the writer's SCRIPT LOAD and its call: the
    appends stay queued and are sent again after the backoff, never lost.
    The connection sends the SCRIPT LOAD (pipelined ahead of the calls
    again), waits until Redis ran it, has another client flush the
    scripts, then sends the calls: the flush at the worst moment."""
    flushing = [True]
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    load = pack_command(("SCRIPT", "LOAD", APPEND_SCRIPT))

    class FlushedAfterLoad(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = command if isinstance(command, bytes) else b"".join(command)
            at = data.find(load)
            if flushing[0] and at >= 0:
                super().send_packed_command([data[: at + len(load)]], check_health)  # type: ignore[no-untyped-call]
                wait_for(lambda: admin.script_exists(_SHA)[0], timeout=10)
                admin.script_flush()
                data = data[at + len(load) :]
            super().send_packed_command([data], check_health)  # type: ignore[no-untyped-call]

    admin.script_flush()  # the first call meets NOSCRIPT
    keys = [f"10.0.5.1;192.0.2.{index};dns" for index in range(3)]
    writer = started(lambda: redis.Redis(connection_pool=redis.ConnectionPool(
        port=redis_srv.port, socket_timeout=5, connection_class=FlushedAfterLoad)))  # fmt: skip
    try:
        for key in keys:
            writer.append(key, "a.")
        writer.flush()
        wait_for(lambda: writer.stats.redis_errors >= 2, timeout=30)
        assert (writer.stats.written_ops, writer.stats.dropped_ops) == (0, 0)
        assert writer.queue_depth == 3
        flushing[0] = False
        wait_for(lambda: writer.stats.written_ops == 3, timeout=30)
    finally:
        writer.stop(5)
    assert writer.stats.dropped_ops == 0
    assert admin.mget(keys) == [";a.;"] * 3
    admin.close()


@pytest.mark.parametrize("on_cluster", [False, True])
def test_a_name_with_a_lone_surrogate_is_refused_and_the_rest_written(
    on_cluster: bool,
    redis_srv: RedisServer,
    redis_cluster: RedisCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    if on_cluster:
        url = redis_cluster.url
        writer = started(lambda: connect(RedisConfig(url=Secret(url))))
    else:
        writer = started(lambda: redis.Redis(port=redis_srv.port, socket_timeout=5))
    try:
        writer.append("10.0.5.2;\ud800.example.;dns", "a.")
        writer.append("10.0.5.2;192.0.2.1;dns", "bad\udc00.")
        writer.incr("client;\ud800")
        writer.incr("client;10.0.5.2")
        writer.append("10.0.5.2;192.0.2.2;dns", "good.")
        wait_for(lambda: writer.stats.written_ops == 2 and writer.stats.rejected_ops == 3,
                 timeout=30)  # fmt: skip
        writer.incr("client;10.0.5.2")  # and the writer goes on
        wait_for(lambda: writer.stats.written_ops == 3 and writer.queue_depth == 0, timeout=30)
        assert writer.stats.redis_errors == 0
    finally:
        writer.stop(5)
    lines = refusals(caplog)
    assert {line["cause"] for line in lines} == {"ENCODING"}
    assert "surrogates not allowed" in lines[0]["error"]


class MiscountingWriter(RedisWriter):
    """A bug in counting an answered script call (a TypeError, as a reply
    of an unexpected shape would raise)."""

    def _count_answer(self, batch: Any, reply: list[Any], *, cluster: bool) -> None:
        raise TypeError("a bug in counting")


@pytest.mark.parametrize("cluster", [False, True])
def test_a_bug_in_counting_answered_replies_never_sends_them_again(
    redis_srv: RedisServer,
    redis_cluster: RedisCluster,
    caplog: pytest.LogCaptureFixture,
    cluster: bool,
) -> None:
    """Once replies are counted nothing raises to the sender (which would
    send the whole round trip again, and INCR each counter again): the bug
    is logged with its traceback, and the writer goes on."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    url = redis_cluster.url if cluster else redis_srv.url
    writer = MiscountingWriter(lambda: connect(RedisConfig(url=Secret(url))), ttl=900,
                               flush_interval=0.02)  # fmt: skip
    writer.start()
    admin = redis.Redis.from_url(url) if not cluster else redis_cluster.client()
    key = "client;10.200.75.1"
    try:
        writer.incr(key)
        writer.append("10.200.75.1;192.0.2.1;dns", "a.example.")
        writer.flush()
        wait_for(lambda: any(r.getMessage() == "redis_count_failed" for r in caplog.records))
        writer.incr("client;10.200.75.2")
        writer.flush()
        wait_for(lambda: admin.get("client;10.200.75.2") is not None)
        assert admin.get(key) in (b"1", "1")  # sent once: never again
        failed = next(r for r in caplog.records if r.getMessage() == "redis_count_failed")
        assert failed.exc_info is not None and "a bug in counting" in str(failed.exc_info[1])
    finally:
        writer.stop(5)
        admin.delete(key, "client;10.200.75.2", "10.200.75.1;192.0.2.1;dns")
        admin.close()


def test_a_not_now_to_the_index_follow_up_keeps_it_for_the_next(tmp_path: Path) -> None:
    """A plain connection's follow-up answered CLUSTERDOWN (the index set's
    slot not served yet) is "not now", as on a cluster: kept and sent
    again, never counted lost, so the index ends up whole."""
    key = next(k for n in range(1000) if key_slot((k := f"10.0.9.{n};192.0.2.1;dns").encode())
               <= 8191 < key_slot(index_of(k).encode()))  # fmt: skip
    with half_served_node(tmp_path) as node:
        port = node.connection_pool.connection_kwargs["port"]
        writer = started(lambda: redis.Redis(port=port, socket_timeout=5), index=True)
        try:
            writer.append(key, "a.")
            wait_for(lambda: writer.stats.written_ops == 1 and writer.stats.redis_errors >= 2,
                     timeout=30)  # fmt: skip
            assert writer.stats.index_lost == 0
            _add_slots(node, 8192, 16383)
            wait_for(lambda: node.smembers(index_of(key)) == {key}, timeout=30)
        finally:
            writer.stop(5)
        assert writer.stats.index_lost == 0 and writer.stats.expires_lost == 0
        assert 0 < node.ttl(index_of(key)) <= 900


def test_the_retry_line_names_redis_s_error_with_its_code(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A "not now" (OOM: Redis at maxmemory) is sent again after the
    backoff; the line that says so quotes Redis's error as Redis spelled
    it, its code first (redis-py cuts it off the message)."""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.config_set("maxmemory", 1)
    writer = started(lambda: redis.Redis(port=redis_srv.port, socket_timeout=5))
    try:
        writer.incr("client;10.0.11.1")
        wait_for(lambda: "redis_write_failed" in caplog.text, timeout=30)
        admin.config_set("maxmemory", 0)
        wait_for(lambda: writer.stats.written_ops == 1, timeout=30)
    finally:
        writer.stop(5)
        admin.config_set("maxmemory", 0)
    failed = [line for line in caplog.text.splitlines() if "redis_write_failed" in line]
    assert all('error="OOM command not allowed' in line for line in failed), failed
    assert admin.get("client;10.0.11.1") == "1" and writer.stats.dropped_ops == 0
    admin.close()


def test_a_counter_made_here_whose_resent_incrby_is_refused_leaves_no_zero(
    redis_srv: RedisServer,
) -> None:
    """An ACL denies INCRBY. Only the first SET NX's reply comes (5 bytes),
    then the link breaks: that counter was made here, at "0", and its
    INCRBY's refusal went unheard. Sent again, the SET NX finds the key and
    the INCRBY is refused: the "0" made here is taken away all the same, as
    when the refusal is heard at once. A "0" another writer made is left be."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-incrby"])  # fmt: skip
    mine, theirs = "client;10.0.14.1", "client;10.0.14.2"
    admin.set(theirs, 0)
    proxy = ReplyCutter(redis_srv.port, b"INCRBY", pass_bytes=5)
    proxy.swallow = True
    writer = started(lambda: redis.Redis(port=proxy.port, username="agent", password="pw",
                                         socket_timeout=0.5))  # fmt: skip
    try:
        writer.incr(mine)
        writer.incr(theirs)
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        assert admin.get(mine) == "0"  # made by the SET NX whose reply came
        proxy.swallow = False
        proxy.cut()
        wait_for(lambda: writer.stats.rejected_ops == 2 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: not admin.exists(mine), timeout=30)
    finally:
        writer.stop(5)
        proxy.close()
    assert admin.get(theirs) == "0"  # not made here: never touched
    stats = writer.stats
    assert (stats.written_ops, stats.dropped_ops, stats.rejected_ops) == (0, 2, 2)
    admin.close()


@pytest.mark.parametrize("pass_bytes", [0, 9], ids=["nothing-read", "counter-read"])
def test_a_key_made_by_a_script_call_whose_reply_was_lost_is_indexed(
    redis_srv: RedisServer, pass_bytes: int
) -> None:
    """The append script ran (it made the key) and its reply, which names
    the keys it made, was lost: with no reply read (the round trip raises)
    or after a counter's two (9 bytes: only the script call goes again).
    Sent again, the call finds the key as it left it, so the key still goes
    into its client's index; one that existed before (another writer's) is
    not indexed, as in a clean run."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.script_load(APPEND_SCRIPT)  # no NOSCRIPT: the call runs in the first exchange
    mine, theirs = "10.0.15.1;192.0.2.1;dns", "10.0.15.1;192.0.2.9;dns"
    admin.set(theirs, ";other.example.;")
    proxy = ReplyCutter(redis_srv.port, b"EVALSHA", pass_bytes=pass_bytes)
    proxy.swallow = True
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5), index=True)
    try:
        writer.incr("client;10.0.15.1")
        writer.append(mine, "a.example.")
        writer.append(theirs, "a.example.")
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        assert admin.get(mine) == ";a.example.;"  # Redis ran the call
        proxy.swallow = False
        proxy.cut()
        wait_for(lambda: writer.stats.written_ops >= 3 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: admin.smembers(index_of(mine)) == {mine}, timeout=30)
    finally:
        writer.stop(5)
        proxy.close()
    assert admin.mget(mine, theirs) == [";a.example.;", ";other.example.;;a.example.;"]
    assert 0 < admin.ttl(index_of(mine)) <= 900
    assert writer.stats.index_lost == 0 and writer.stats.dropped_ops == 0
    admin.close()


def test_a_round_trip_cut_partway_is_one_failure_and_not_ready(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two counters' replies come (18 bytes), then the link breaks under
    the writer's read (Redis ran all six), and the follow-up's connection is
    refused too: that is one failed round trip, counted once as it is
    logged once, and the writer is not ready from then until a round trip
    is answered whole."""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    keys = [f"client;10.0.16.{index}" for index in range(6)]
    admin.mset(dict.fromkeys(keys, 5))  # they exist: the follow-up refreshes their TTL
    proxy = ReplyCutter(redis_srv.port, b"INCRBY", pass_bytes=18)
    port = [proxy.port]
    # Past any wait below: a read that timed out before the proxy is closed
    # (a loaded machine) would be a second failure, through the live proxy.
    writer = started(lambda: redis.Redis(port=port[0], socket_timeout=120))
    ready_as_failed: list[bool] = []  # `connected` as each failure is logged

    class Readiness(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "redis_write_failed":
                ready_as_failed.append(writer.connected)

    handler = Readiness()
    logging.getLogger("pcapd.agents.store").addHandler(handler)
    try:
        writer.incr("client;10.0.16.99")
        wait_for(lambda: writer.connected and writer.stats.written_ops == 1, timeout=30)
        proxy.swallow = True
        # One extend: one window, so the six go in one round trip (six incr
        # calls could be sealed in two windows, the second sent only after
        # the first's socket timeout).
        writer.extend(keys, [INCR] * len(keys))
        wait_for(lambda: admin.mget(keys) == ["6"] * 6, timeout=30)
        # The two replies are in the writer's socket before the link breaks,
        # not still in the proxy (then none would come, and all six go again).
        wait_for(lambda: proxy.passed == 18, timeout=30)
        port[0] = redis_srv.port  # where the writer's next client connects
        proxy.close()
        wait_for(lambda: writer.stats.written_ops == 7 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: writer.connected, timeout=30)
    finally:
        writer.stop(5)
        logging.getLogger("pcapd.agents.store").removeHandler(handler)
    assert ready_as_failed and not any(ready_as_failed)
    assert writer.stats.redis_errors == len(ready_as_failed)  # one count per failure
    assert writer.stats.redis_not_now == 0  # no answer is no "not now"
    # Answered before the break: once; the rest ran, their replies lost: sent again.
    assert admin.mget(keys) == ["6", "6", "7", "7", "7", "7"]
    assert all(0 < admin.ttl(key) <= 900 for key in keys)
    admin.close()


NOT_NOW = "pcapd_agent_redis_not_now_total"


def _written_once_taken(writer: RedisWriter, admin: redis.Redis, let_in: Any) -> None:
    """Appends and a counter the server answers "not now" (inside the
    script for the append) are sent again, never refused, until `let_in()`
    lets them in: then each is written once."""
    dns, counter = "10.0.17.1;192.0.2.1;dns", "client;10.0.17.1"
    try:
        writer.append(dns, "a.example.")
        writer.incr(counter)
        # Sent again, not now again: each such round trip counted once.
        wait_for(lambda: writer_metric(writer, NOT_NOW) >= 2, timeout=30)
        assert (writer.stats.written_ops, writer.stats.dropped_ops) == (0, 0)
        assert writer.queue_depth == 2
        let_in()
        wait_for(lambda: writer.stats.written_ops == 2 and writer.queue_depth == 0, timeout=30)
    finally:
        writer.stop(5)
    assert admin.mget(dns, counter) == [";a.example.;", "1"]
    stats = writer.stats
    assert (stats.rejected_ops, stats.dropped_ops) == (0, 0)
    assert writer_metric(writer, NOT_NOW) == stats.redis_not_now == stats.redis_errors


def test_an_append_redis_has_no_memory_for_is_sent_again(redis_srv: RedisServer) -> None:
    """At maxmemory (noeviction) the script's APPEND is answered OOM, an
    error inside the call's reply: "not now", as for the counter beside it.
    (Before, the append was counted refused and lost.)"""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    writer = started(lambda: redis.Redis(port=redis_srv.port, socket_timeout=5))
    try:
        _written_once_taken(writer, admin, lambda: admin.config_set("maxmemory", 0))
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_an_append_sent_to_a_replica_is_written_once_it_is_promoted(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """A replica answers the script's APPEND READONLY: "not now" (a failover
    promotes it), kept and sent again until it takes writes."""
    with redis_server(tmp_path) as replica_srv:
        replica = redis.Redis(port=replica_srv.port, decode_responses=True)
        replica.replicaof("127.0.0.1", redis_srv.port)
        writer = started(lambda: redis.Redis(port=replica_srv.port, socket_timeout=5))
        try:
            _written_once_taken(writer, replica, lambda: replica.replicaof("NO", "ONE"))
        finally:
            replica.close()


def test_a_round_trip_whose_follow_up_alone_fails_is_logged_once(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The counter is written, and only the follow-up (its EXPIRE: the key
    existed) gets no answer: that round trip failed, so it is counted once,
    logged once naming the error, and readiness fails; the EXPIRE goes again
    until it is answered. (Before, nothing was logged: not ready, and no
    line said why.)"""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    key = "client;10.0.19.1"
    admin.set(key, 5)  # exists: the follow-up EXPIREs it
    proxy = ReplyCutter(redis_srv.port, b"EXPIRE")
    proxy.swallow = True
    writer = started(lambda: redis.Redis(port=proxy.port, socket_timeout=0.5))
    try:
        writer.incr(key)
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        assert writer.stats.written_ops == 1 and not writer.connected
        proxy.swallow = False
        proxy.cut()
        wait_for(lambda: writer.connected, timeout=30)  # the EXPIRE answered, sent again
    finally:
        writer.stop(5)
        proxy.close()
    failed = logged(caplog, "redis_write_failed")
    assert len(failed) == writer.stats.redis_errors >= 1
    assert [line["error"] for line in failed] == ["no answer from Redis"] * len(failed)
    assert writer.stats.redis_not_now == 0
    assert writer.stats.expires_lost == 0 and admin.get(key) == "6"
    assert 0 < admin.ttl(key) <= 900
    admin.close()


@pytest.mark.parametrize("first", ["refused", "busy"])
def test_a_call_redis_never_ran_leaves_another_writers_key_unindexed(
    redis_srv: RedisServer, first: str
) -> None:
    """Another writer made the key with the same member. The writer's first
    attempt is never sent (connection refused) or answered BUSY (another
    client's script runs): Redis ran nothing, so the call that goes again
    asks for the keys it makes, as in a clean run, and the key, not made
    here, is not indexed. (Before, both marked the call's reply lost, and
    the resend reported the key as one it had made.)"""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.script_load(APPEND_SCRIPT)
    theirs = "10.0.20.1;192.0.2.9;dns"
    admin.set(theirs, ";a.example.;")
    port = [free_port() if first == "refused" else redis_srv.port]
    busy = threading.Thread(target=run_until_killed, args=(redis_srv.port,))
    if first == "busy":
        admin.config_set("busy-reply-threshold", 10)  # ms: BUSY after that
        busy.start()
        wait_for(lambda: _busy(admin), timeout=10)
    writer = started(lambda: redis.Redis(port=port[0], socket_timeout=5), index=True)
    try:
        writer.append(theirs, "a.example.")
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        port[0] = redis_srv.port
        if first == "busy":
            admin.script_kill()
            busy.join(10)
        wait_for(lambda: writer.stats.written_ops == 1 and writer.queue_depth == 0, timeout=30)
        wait_for(lambda: writer.connected, timeout=30)
    finally:
        writer.stop(5)
        admin.config_set("busy-reply-threshold", 5000)
    assert admin.get(theirs) == ";a.example.;"
    assert admin.smembers(index_of(theirs)) == set()
    admin.close()


def _busy(admin: redis.Redis) -> bool:
    try:
        admin.ping()
    except redis.exceptions.BusyLoadingError:
        return True
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY") or "busy" in str(exc)
    return False

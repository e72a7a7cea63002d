"""One batch of results on the wire (pcapd/core/result_send.py): packed
RESP with the add-once script as EVALSHA, loaded again where Redis lost it;
a read-only node waited out. Real redis-server and the cluster fixture."""

from __future__ import annotations

import functools
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.result_send import ADD_ONCE_SHA
from pcapd.core.results import ResultPublisher, Sent
from pcapd.core.secret import Secret
from tests.helpers import RedisCluster, RedisServer, redis_server, wait_for
from tests.pcapd.core.test_results import ChannelIds, result, stream_events
from tests.pcapd.daemon_fixture import Results


def test_a_flushed_script_is_loaded_again_in_the_same_send(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SCRIPT FLUSH while the publisher is connected: the next batch meets
    NOSCRIPT, loads the script and sends the script call again in one more
    round trip; the event is in the stream once, on the channel once, and
    nothing is logged failed or lost."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    client = redis_srv.client()
    channel = Results(redis_srv)
    config = RedisConfig(port=redis_srv.port)
    pub = ResultPublisher(functools.partial(connect, config), config)
    pub.start()
    try:
        pub.submit(result(0))
        assert channel.next(timeout=20)["id"] == "r0"
        client.script_flush()
        pub.submit(result(1))
        assert channel.next(timeout=20)["id"] == "r1"
        wait_for(lambda: [e["id"] for _, e in stream_events(client)] == ["r0", "r1"], timeout=20)
        assert client.script_exists(ADD_ONCE_SHA) == [True]
    finally:
        assert pub.stop(10) == 0
        channel.close()
    assert channel.unclaimed() == []
    assert "result_publish_failed" not in caplog.text and "result_lost" not in caplog.text


def test_a_flushed_script_on_a_cluster_is_loaded_on_that_primary_only(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Every primary without the script: the one owning the stream's slot
    says NOSCRIPT and is the only one it is loaded on; the events go on."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    stream = "{s}x"
    owner = next(
        p for p in redis_cluster.ports if key_slot(stream.encode()) in redis_cluster.slots_of(p)
    )
    config = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), results_stream=stream)
    own = connect(config)
    client = redis_cluster.client()
    try:
        pub = ResultPublisher(functools.partial(lambda c: c, own), config)
        assert pub.publish(result(1))  # loads it first, where the stream is
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                node.script_flush()
        assert pub.publish(result(2))
        assert pub.publish(result(3))
        assert [e["id"] for _, e in stream_events(client, stream)] == ["r1", "r2", "r3"]
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                assert node.script_exists(ADD_ONCE_SHA) == [port == owner], port
    finally:
        own.close()
        client.close()
    assert "result_publish_failed" not in caplog.text and "result_lost" not in caplog.text


def test_a_read_only_replica_is_waited_out_and_the_event_added_once(
    private_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The publisher's server becomes a replica (a failover that demoted
    it): PUBLISH still goes, the stream's script meets READONLY and is sent
    again, alone, after a backoff, until the server is a primary again. The
    user sees `result_publish_failed` naming READONLY; the event is on the
    channel once and in the stream once; later results flow."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    channel = Results(private_redis)
    config = RedisConfig(port=private_redis.port)
    pub = ResultPublisher(functools.partial(connect, config, socket_timeout=2), config)
    replica = private_redis.client()
    (tmp_path / "primary").mkdir()
    with redis_server(tmp_path / "primary") as primary:
        pub.start()
        try:
            pub.submit(result(0))
            assert channel.next(timeout=20)["id"] == "r0"
            replica.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))  # type: ignore[no-untyped-call]
            # r0's entry goes with the primary's (empty) data at the sync.
            wait_for(lambda: replica.info("replication")["master_link_status"] == "up", timeout=30)
            pub.submit(result(1))
            assert channel.next(timeout=20)["id"] == "r1"
            wait_for(lambda: caplog.text.count("READONLY") >= 2, timeout=60)  # two rounds
            replica.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            wait_for(lambda: [e["id"] for _, e in stream_events(replica)] == ["r1"], timeout=60)
            pub.submit(result(2))
            assert channel.next(timeout=20)["id"] == "r2"
        finally:
            replica.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            assert pub.stop(10) == 0
            channel.close()
    assert [e["id"] for _, e in stream_events(replica)] == ["r1", "r2"]
    assert channel.unclaimed() == []  # r1 was not published again each round
    failed = [line for line in caplog.text.splitlines() if "result_publish_failed" in line]
    assert failed and all("READONLY" in line for line in failed)
    assert "result_lost" not in caplog.text and pub.dropped == 0


def test_redis_py_crashing_inside_connect_is_a_connection_error(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py 8 was seen to raise AttributeError inside connect(): there
    (and only there) it is Redis not reached, logged `result_publish_failed`
    and sent again after the backoff; the result arrives once."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    crashes = [2]

    class Crashing(redis.Connection):
        def connect(self) -> None:
            if crashes[0]:
                crashes[0] -= 1
                raise AttributeError("'NoneType' object has no attribute 'settimeout'")
            super().connect()  # type: ignore[no-untyped-call]

    config = RedisConfig(port=redis_srv.port)
    pool = redis.ConnectionPool(port=redis_srv.port, connection_class=Crashing)
    pub = ResultPublisher(lambda: redis.Redis(connection_pool=pool), config)
    channel = Results(redis_srv)
    pub.start()
    try:
        pub.submit(result(1))
        assert channel.next(timeout=30)["id"] == "r1"
    finally:
        assert pub.stop(10) == 0
        channel.close()
        pool.disconnect()
    failed = [line for line in caplog.text.splitlines() if "result_publish_failed" in line]
    assert len(failed) == 2 and all("connect failed" in line for line in failed), failed
    assert "result_publisher_failed" not in caplog.text  # not taken for a bug
    assert [e["id"] for _, e in stream_events(redis_srv.client())] == ["r1"]


def test_a_primary_silent_mid_batch_has_only_its_part_sent_again(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's primary stops answering mid-batch (SIGSTOP: it has the
    commands, the replies do not come, as a cut connection leaves them):
    PUBLISH, on another primary, went; the script call times out and is
    sent again alone after the backoff. Resumed, the primary runs the first
    call too, and the marker keeps the stream at one entry; the channel got
    the event once, and the publisher goes on."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    channel_owner = owner_of(private_cluster, "capture-results")
    stream = next(
        name for name in (f"{{s{n}}}x" for n in range(100))
        if owner_of(private_cluster, name) != channel_owner
    )  # fmt: skip
    silent = private_cluster.procs[owner_of(private_cluster, stream)]
    config = RedisConfig(cluster=True, nodes=tuple(private_cluster.nodes), results_stream=stream)
    pub = ResultPublisher(functools.partial(connect, config, socket_timeout=1), config)
    client = private_cluster.client()
    channel_ids = ChannelIds(client)
    heard, listen = channel_ids.ids, channel_ids.listen

    pub.start()
    try:
        wait_for(listen, timeout=20)  # subscribed
        silent.send_signal(signal.SIGSTOP)
        pub.submit(result(1))
        # Resumed within the cluster's node timeout (2 s): no failover.
        wait_for(lambda: "result_publish_failed" in caplog.text, timeout=20)
        silent.send_signal(signal.SIGCONT)
        wait_for(lambda: [e["id"] for _, e in stream_events(client, stream)] == ["r1"], timeout=30)
        pub.submit(result(2))
        wait_for(lambda: len(stream_events(client, stream)) == 2, timeout=30)
        assert pub.stop(10) == 0
        client.publish("capture-results", json.dumps({"id": "end"}))  # behind every copy
        wait_for(lambda: not listen() and heard[-1:] == ["end"], timeout=20)
    finally:
        silent.send_signal(signal.SIGCONT)
        pub.stop(1)
        channel_ids.pubsub.close()
        client.close()
    assert [e["id"] for _, e in stream_events(private_cluster.client(), stream)] == ["r1", "r2"]
    assert heard == ["r1", "r2", "end"]
    assert "result_lost" not in caplog.text and pub.dropped == 0


def owner_of(cluster: RedisCluster, key: str) -> int:
    return next(p for p in cluster.ports if key_slot(key.encode()) in cluster.slots_of(p))


UNENCODABLE: list[Any] = ["\ud800", 5]  # a lone surrogate, a non-string


def _unencodable_given_up_alone(
    pub: ResultPublisher, client: Any, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Results whose reply_to cannot be encoded, queued ahead of one that
    can: each is logged lost once ("cannot encode"), not resent; the one
    behind is in the stream (no traceback, no backoff round)."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    pub.start()
    try:
        for n, bad in enumerate(UNENCODABLE):
            pub.submit(result(n), reply_to=bad)
        pub.submit(result(9))
        wait_for(lambda: [e["id"] for _, e in stream_events(client, stream)] == ["r9"], timeout=20)
        assert pub.publish(result(8), reply_to="\udfff") is Sent.REFUSED
    finally:
        assert pub.stop(10) == 0
    lost = [line for line in caplog.text.splitlines() if "result_lost" in line]
    assert len(lost) == 3 and all("cannot encode its commands" in line for line in lost), lost
    assert "UnicodeEncodeError" in lost[0] and "AttributeError" in lost[1]
    assert pub.dropped == 2  # the queued ones; publish() says REFUSED
    assert "result_publisher_failed" not in caplog.text
    assert "result_publish_failed" not in caplog.text


def test_a_result_that_cannot_be_encoded_does_not_hold_up_the_rest(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = RedisConfig(port=redis_srv.port)
    pub = ResultPublisher(functools.partial(connect, config), config)
    _unencodable_given_up_alone(pub, redis_srv.client(), config.results_stream, caplog)


def test_a_result_that_cannot_be_encoded_on_a_cluster_is_given_up_alone(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    config = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), results_stream="{s}x")
    pub = ResultPublisher(functools.partial(connect, config), config)
    client = redis_cluster.client()
    try:
        _unencodable_given_up_alone(pub, client, config.results_stream, caplog)
    finally:
        client.close()


# An ACL that runs scripts by EVAL and EVALSHA but may not SCRIPT LOAD (as
# behind a proxy or rename-command that refuses it).
NO_SCRIPT_LOAD = ["-@all", "+publish", "+eval", "+evalsha", "+exists", "+xadd", "+set", "+ping",
                  "+client|setname", "+cluster|slots", "+cluster|shards", "+command"]  # fmt: skip


def no_script_load(node: redis.Redis) -> None:
    node.acl_setuser("pcapd", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                     commands=NO_SCRIPT_LOAD)  # fmt: skip


def test_where_script_load_is_refused_eval_carries_the_script(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SCRIPT LOAD refused (NOPERM) where EVAL is allowed: the calls Redis
    answered NOSCRIPT go as EVAL, so a site whose results went by EVAL
    keeps them; after a flush too. Nothing lost, nothing logged failed."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    client = redis_srv.client()
    no_script_load(client)
    config = RedisConfig(port=redis_srv.port, username="pcapd", auth=Secret("pw"))
    pub = ResultPublisher(functools.partial(connect, config), config)
    assert pub.publish(result(1))
    client.script_flush()
    assert pub.publish(result(2))
    assert pub.publish(result(3))
    assert [e["id"] for _, e in stream_events(client)] == ["r1", "r2", "r3"]
    assert "result_publish_failed" not in caplog.text and "result_lost" not in caplog.text


def test_where_script_load_is_refused_on_a_cluster_eval_carries_the_script(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    stream = "{s}x"
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            no_script_load(node)
    config = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), results_stream=stream,
                         username="pcapd", auth=Secret("pw"))  # fmt: skip
    pub = ResultPublisher(functools.partial(connect, config), config)
    client = redis_cluster.client()
    try:
        assert pub.publish(result(1))
        assert pub.publish(result(2))
        assert [e["id"] for _, e in stream_events(client, stream)] == ["r1", "r2"]
    finally:
        client.close()
    assert "result_publish_failed" not in caplog.text and "result_lost" not in caplog.text

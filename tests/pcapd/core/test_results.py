"""Result events reach the channel, the capped stream and reply_to, and wait
(bounded) for Redis instead of holding up the threads that report them."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from pcapd.core import results as results_module
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import connect
from pcapd.core.results import (
    PUBLISH_BACKOFF,
    Commands,
    ResultPublisher,
    Sent,
    event_mark_key,
    with_event_id,
)
from pcapd.core.secret import Secret
from tests.helpers import RedisCluster, RedisServer, reply_cutter, wait_for
from tests.pcapd.daemon_fixture import Results


def publisher(server: RedisServer, **fields: Any) -> ResultPublisher:
    config = RedisConfig(port=server.port, results_stream_maxlen=50, **fields)
    return ResultPublisher(lambda: connect(config, socket_timeout=1, socket_connect_timeout=1),
                           config)  # fmt: skip


def result(n: int) -> ResultEvent:
    return ResultEvent(id=f"r{n}", node="n1", status="empty", interface="lo")


def test_channel_stream_and_reply_to(redis_srv: RedisServer) -> None:
    channel, reply = Results(redis_srv), Results(redis_srv, channel="mine")
    try:
        assert publisher(redis_srv).publish(result(1), reply_to="mine")
        assert channel.next()["id"] == reply.next()["id"] == "r1"
    finally:
        channel.close()
        reply.close()
    stream: Any = redis_srv.client().xrange("capture-results")
    assert [json.loads(fields[b"event"])["id"] for _, fields in stream] == ["r1"]


def test_stream_is_capped(redis_srv: RedisServer) -> None:
    pub = publisher(redis_srv)
    for n in range(500):
        pub.publish(result(n))
    # MAXLEN ~ trims by whole macro-nodes: about the cap (50), never below it
    # and never unbounded.
    assert 50 <= redis_srv.client().xlen("capture-results") < 250


def test_queued_results_wait_for_redis_without_blocking(private_redis: RedisServer) -> None:
    pub = publisher(private_redis)
    pub.start()
    private_redis.stop()
    began = time.monotonic()
    for n in range(20):
        pub.submit(result(n))
    assert time.monotonic() - began < 0.5  # the caller never waits on Redis
    time.sleep(0.5)
    private_redis.start()
    wait_for(lambda: private_redis.client().xlen("capture-results") == 20, timeout=20)
    assert pub.stop(5) == 0 and pub.dropped == 0


def test_queue_is_bounded_and_losses_are_counted(
    private_redis: RedisServer, monkeypatch: Any
) -> None:
    monkeypatch.setattr(results_module, "MAX_PENDING", 5)
    pub = publisher(private_redis)
    pub.start()
    private_redis.stop()
    for n in range(12):
        pub.submit(result(n))
    assert pub.stop(0.5) == 5  # the newest MAX_PENDING were kept until the end
    assert pub.dropped == 12


def push(value: str) -> Commands:
    return Commands((("order", ("RPUSH", "order", value)),))


def test_later_commands_go_in_order_with_the_results(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    pub = publisher(redis_srv)
    pub.later(push("unthreaded"))  # no thread: sent now
    assert client.lrange("order", 0, -1) == [b"unthreaded"]
    pub.start()
    try:
        channel = Results(redis_srv)
        try:
            for n in range(3):
                pub.submit(result(n))
                pub.later(push(f"after r{n}"))
            wait_for(lambda: client.llen("order") == 4, timeout=10)
            assert [channel.next()["id"] for _ in range(3)] == ["r0", "r1", "r2"]
        finally:
            channel.close()
    finally:
        assert pub.stop(5) == 0
    assert client.lrange("order", 1, -1) == [b"after r0", b"after r1", b"after r2"]
    stream: Any = client.xrange("capture-results")
    assert [json.loads(fields[b"event"])["id"] for _, fields in stream] == ["r0", "r1", "r2"]


class ChannelIds:
    """The ids of the results heard on a cluster client's `channel`, read a
    message at a time (`listen`: True if one came, of any type)."""

    def __init__(self, client: Any, channel: str = "capture-results") -> None:
        self.pubsub: Any = client.pubsub()
        self.pubsub.subscribe(channel)
        self.ids: list[str] = []

    def listen(self) -> bool:
        message = self.pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            self.ids.append(json.loads(message["data"])["id"])
        return message is not None


def stream_events(client: Any, stream: str = "capture-results") -> list[tuple[str, dict[str, Any]]]:
    """(the entry's event_id field, its event) for each stream entry, from a
    client that decodes replies or one that does not."""
    found = []
    for _, raw in client.xrange(stream):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        found.append((fields["event_id"], json.loads(fields["event"])))
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_a_lost_reply_puts_each_event_once_in_the_stream(redis_srv: RedisServer) -> None:
    """Redis runs a batch, its replies are lost with the connection, the
    publisher sends the batch again: the stream holds each event once, and a
    subscriber that gets one twice sees the same event_id and body."""
    channel = Results(redis_srv)
    client = redis_srv.client()
    with reply_cutter(redis_srv.port) as proxy:
        config = RedisConfig(port=proxy.port)
        pub = ResultPublisher(functools.partial(connect, config, socket_timeout=30), config)
        proxy.swallow = True
        pub.start()
        try:
            pub.submit(result(0))  # sent alone: the thread waits for its replies
            wait_for(lambda: client.xlen("capture-results") == 1, timeout=20)
            for n in range(1, 20):
                pub.submit(result(n))  # queued behind it
            proxy.cut()  # r0's replies lost; r0-r19 go as one batch, run, replies lost
            wait_for(lambda: client.xlen("capture-results") == 20, timeout=20)
            proxy.swallow = False
            proxy.cut()  # that batch goes again, and its replies come back
            got = [channel.next(timeout=20) for _ in range(3 + 19 * 2)]
        finally:
            assert pub.stop(10) == 0
            channel.close()
    assert proxy.accepted == 3
    entries = stream_events(client)
    assert [event["id"] for _, event in entries] == [f"r{n}" for n in range(20)]
    ids = [event_id for event_id, _ in entries]
    assert len(set(ids)) == 20 and ids == [event["event_id"] for _, event in entries]
    copies: dict[str, list[dict[str, Any]]] = {}
    for event in got + channel.unclaimed():
        copies.setdefault(event["event_id"], []).append(event)
    assert [len(copies[event_id]) for event_id in ids] == [3] + [2] * 19
    for same in copies.values():
        assert all(e == same[0] for e in same)


def test_redis_py_does_not_resend_behind_the_publisher(redis_srv: RedisServer) -> None:
    """Every reply lost: each of the publisher's attempts reaches Redis once
    (redis-py resending inside one would show as more copies, and `publish`
    would not give up), and the stream still holds the event once."""
    channel = Results(redis_srv)
    outcome: list[Sent] = []
    with reply_cutter(redis_srv.port) as proxy:
        config = RedisConfig(port=proxy.port)
        pub = ResultPublisher(functools.partial(connect, config, socket_timeout=30), config)
        proxy.swallow = True
        sender = threading.Thread(target=lambda: outcome.append(pub.publish(result(1))))
        sender.start()
        try:
            for _ in range(results_module.PUBLISH_ATTEMPTS):
                channel.next(timeout=20)
                proxy.cut()
            sender.join(20)
            assert outcome == [Sent.UNREACHABLE]
        finally:
            proxy.cut()
            sender.join(20)
            channel.close()
    assert channel.unclaimed() == []
    assert proxy.accepted == results_module.PUBLISH_ATTEMPTS
    assert [event["id"] for _, event in stream_events(redis_srv.client())] == ["r1"]


def test_a_resend_on_a_cluster_adds_the_event_once(redis_cluster: RedisCluster) -> None:
    """The marker shares the stream's slot (no CROSSSLOT), also for a stream
    name whose braces are no hash tag."""
    clients: list[Any] = [redis_cluster.client()]
    try:
        for stream in ("capture-results", "res}ults"):
            config = RedisConfig(
                cluster=True, nodes=tuple(redis_cluster.nodes), results_stream=stream
            )
            clients.append(connect(config))
            pub = ResultPublisher(functools.partial(lambda c: c, clients[-1]), config)
            event = with_event_id(result(1))
            assert pub._send_all([(event, None)]) == (None, {})
            assert pub._send_all([(event, None)]) == (None, {})  # the resend
            assert pub.publish(result(2))
            assert [e["id"] for _, e in stream_events(clients[0], stream)] == ["r1", "r2"]
    finally:
        for client in clients:
            client.close()


def resent(
    server: RedisServer, event: ResultEvent, reply_to: str | None = None, *, expired: bool = False
) -> ResultEvent:
    """`event` published, then sent again as after a lost reply (its marker
    gone first when `expired`, so the stream holds it twice): what readers
    of results must show once. Returns it with its event_id."""
    config = RedisConfig(port=server.port)
    pub = ResultPublisher(functools.partial(connect, config), config)
    event = with_event_id(event)
    assert pub._send_all([(event, reply_to)]) == (None, {})
    if expired:
        server.client().delete(event_mark_key(config.results_stream, str(event.event_id)))
    assert pub._send_all([(event, reply_to)]) == (None, {})
    return event


def test_a_resend_after_the_marker_expired_is_in_the_stream_twice(redis_srv: RedisServer) -> None:
    """What the window bounds (readers drop the second: tests of each reader)."""
    event = resent(redis_srv, result(1), expired=True)
    assert stream_events(redis_srv.client()) == [(event.event_id, event.as_dict())] * 2


def test_a_refused_xadd_leaves_no_marker(redis_srv: RedisServer) -> None:
    """The stream key of the wrong type: XADD fails, and no marker is left to
    make the resend (once the key is fixed) look done."""
    client = redis_srv.client()
    config = RedisConfig(port=redis_srv.port)
    pub = ResultPublisher(functools.partial(connect, config), config)
    event = with_event_id(result(1))
    client.set(config.results_stream, "not a stream")
    error, refused = pub._send_all([(event, None)])
    assert error is None and "WRONGTYPE" in refused[0]
    assert client.exists(event_mark_key(config.results_stream, str(event.event_id))) == 0
    client.delete(config.results_stream)
    assert pub._send_all([(event, None)]) == (None, {})
    assert stream_events(client) == [(event.event_id, event.as_dict())]


def test_the_marker_lives_results_dedup_window(redis_srv: RedisServer) -> None:
    config = RedisConfig(port=redis_srv.port, results_dedup_window=1234)
    pub = ResultPublisher(functools.partial(connect, config), config)
    event = with_event_id(result(1))
    assert pub._send_all([(event, None)]) == (None, {})
    ttl = redis_srv.client().ttl(event_mark_key(config.results_stream, str(event.event_id)))
    assert ttl == 1234


def test_publish_waits_out_a_redis_restart(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`pcapd spool retry`'s one-shot publish backs off between attempts: a
    Redis that is back within a few seconds gets the result."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    pub = publisher(private_redis)
    private_redis.stop()
    outcome: list[Sent] = []
    sender = threading.Thread(target=lambda: outcome.append(pub.publish(result(1))))
    sender.start()
    try:
        wait_for(lambda: "result_publish_failed" in caplog.text, timeout=20)
        private_redis.start()
    finally:
        sender.join(30)
    assert outcome == [Sent.SENT]
    assert [e["id"] for _, e in stream_events(private_redis.client())] == ["r1"]


def test_publish_gives_up_after_its_attempts_spaced_out(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    pub = publisher(private_redis)
    private_redis.stop()
    began = time.monotonic()
    assert not pub.publish(result(1))
    waits = [PUBLISH_BACKOFF.cap(n) / 2 for n in range(1, results_module.PUBLISH_ATTEMPTS)]
    assert time.monotonic() - began >= sum(waits)
    assert caplog.text.count("result_publish_failed") == results_module.PUBLISH_ATTEMPTS
    assert "result_lost" in caplog.text and "Redis unreachable after" in caplog.text


def deny(server: RedisServer, *commands: str) -> RedisConfig:
    """A user that may do all but `commands`; a config logging in as it."""
    server.client().acl_setuser(
        "pcapd", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", *(f"-{c}" for c in commands)],
    )  # fmt: skip
    return RedisConfig(port=server.port, username="pcapd", auth=Secret("pw"))


@pytest.mark.parametrize("cause", ["NOPERM", "WRONGTYPE"])
def test_a_refused_result_is_dropped_and_the_rest_flow(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture, cause: str
) -> None:
    """Redis refuses the stream's script for good (an ACL without EVALSHA, a
    stream key of another type): each result is logged lost, naming the
    cause, once; the queue does not resend it for ever; the channel and the
    results after it still get through."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    client = redis_srv.client()
    if cause == "NOPERM":
        config = deny(redis_srv, "evalsha")
    else:
        config = RedisConfig(port=redis_srv.port)
        client.set(config.results_stream, "not a stream")
    channel = Results(redis_srv)
    pub = ResultPublisher(functools.partial(connect, config), config)
    pub.start()
    try:
        for n in range(3):
            pub.submit(result(n))
        assert [channel.next(timeout=20)["id"] for _ in range(3)] == ["r0", "r1", "r2"]
        wait_for(lambda: caplog.text.count("result_lost") == 3, timeout=20)
        if cause == "WRONGTYPE":
            client.delete(config.results_stream)
        else:
            client.acl_setuser("pcapd", commands=["+evalsha"])
        pub.submit(result(3))
        wait_for(lambda: [e["id"] for _, e in stream_events(client)] == ["r3"], timeout=20)
        assert channel.next(timeout=20)["id"] == "r3"
    finally:
        assert pub.stop(10) == 0
        channel.close()
    lost = [line for line in caplog.text.splitlines() if "result_lost" in line]
    assert len(lost) == 3 and pub.dropped == 3
    assert all(cause in line and "refused by Redis" in line for line in lost), lost
    assert all("(not sent: stream; sent: channel)" in line for line in lost), lost
    assert "result_publish_failed" not in caplog.text  # no resend round
    assert channel.unclaimed() == []  # each went to the channel once


def test_publish_refused_gives_up_at_once(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    config = deny(redis_srv, "evalsha")
    pub = ResultPublisher(functools.partial(connect, config), config)
    assert pub.publish(result(1)) is Sent.REFUSED
    assert "result_publish_failed" not in caplog.text
    assert "result_lost" in caplog.text and "NOPERM" in caplog.text


def test_the_acl_the_readme_names_is_enough_for_results(redis_srv: RedisServer) -> None:
    """README, `[redis]`: the publisher's commands, and those its script runs."""
    redis_srv.client().acl_setuser(
        "pcapd", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["-@all", "+publish", "+evalsha", "+script|load", "+exists", "+xadd", "+set",
                  "+ping", "+client|setname"],
    )  # fmt: skip
    config = RedisConfig(port=redis_srv.port, username="pcapd", auth=Secret("pw"))
    pub = ResultPublisher(functools.partial(connect, config), config)
    assert pub.publish(result(1), reply_to="mine")
    assert [e["id"] for _, e in stream_events(redis_srv.client())] == ["r1"]


def test_a_refusal_on_a_cluster_is_the_event_s_alone(redis_cluster: RedisCluster) -> None:
    """Per slot there: the refused script is noted, the event's reply_to
    still gets it, and what is queued behind it is sent."""
    client = redis_cluster.client()
    config = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), results_stream="{s}x")
    own = connect(config)
    pubsub: Any = client.pubsub()
    messages: list[Any] = []

    def message() -> bool:
        messages.append(pubsub.get_message(timeout=0.1))
        return messages[-1] is not None

    try:
        client.set("{s}x", "not a stream")
        pub = ResultPublisher(functools.partial(lambda c: c, own), config)
        pubsub.subscribe("mine")
        wait_for(message, timeout=20)  # subscribed
        batch = [(with_event_id(result(1)), "mine"), (push("after"), None)]
        error, refused = pub._send_all(batch)  # type: ignore[arg-type]
        assert error is None and list(refused) == [0] and "WRONGTYPE" in refused[0]
        wait_for(message, timeout=20)
        assert json.loads(messages[-1]["data"])["id"] == "r1"
        assert client.lrange("order", 0, -1) == ["after"]
    finally:
        pubsub.close()
        own.close()
        client.close()


def test_a_busy_redis_is_waited_out_not_taken_for_a_refusal(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A long script elsewhere: Redis answers BUSY to every command (PUBLISH
    too) until it is killed. The result is resent, not dropped, and arrives
    once the script is gone."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    admin = private_redis.client()
    admin.config_set("busy-reply-threshold", 100)  # ms before BUSY replies
    channel = Results(private_redis)
    looping = private_redis.client()
    script = threading.Thread(target=_run_forever, args=(looping,), daemon=True)
    pub = publisher(private_redis)
    pub.start()
    try:
        pub.submit(result(0))  # connected before: BUSY then answers the pipeline itself
        assert channel.next(timeout=30)["id"] == "r0"
        script.start()
        wait_for(lambda: _busy(admin), timeout=20)
        pub.submit(result(1))
        wait_for(lambda: "BUSY" in caplog.text, timeout=20)  # refused, resent later
        admin.script_kill()
        assert channel.next(timeout=30)["id"] == "r1"
        wait_for(lambda: [e["id"] for _, e in stream_events(admin)] == ["r0", "r1"], timeout=30)
    finally:
        with contextlib.suppress(redis.RedisError):
            admin.script_kill()
        if script.ident is not None:
            script.join(10)
        assert pub.stop(10) == 0
        channel.close()
    assert "result_lost" not in caplog.text and pub.dropped == 0


def _run_forever(client: redis.Redis) -> None:
    """A script that never ends by itself; SCRIPT KILL makes it an error reply."""
    with contextlib.suppress(redis.RedisError):
        client.eval("while true do end", 0)


def _busy(client: redis.Redis) -> bool:
    try:
        client.get("x")
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def test_submit_after_stop_is_refused_and_logged(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Once stopping, a result is not queued where nothing would send it: the
    caller hears so (the drainer keeps its entry) and the loss is logged."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    pub = publisher(redis_srv)
    pub.start()
    assert pub.submit(result(1))
    assert pub.stop(10) == 0
    assert not pub.submit(result(2))
    assert pub.dropped == 1 and pub.queue_depth == 0
    (lost,) = [line for line in caplog.text.splitlines() if "result_lost" in line]
    assert "r2" in lost and "stopped" in lost
    assert [e["id"] for _, e in stream_events(redis_srv.client())] == ["r1"]


def test_publish_keeps_the_event_id_it_is_given(redis_srv: RedisServer) -> None:
    """The same result published twice (a spool entry kept after its first
    send): one stream entry; a result without an id gets a new one each time."""
    pub = publisher(redis_srv)
    again = with_event_id(result(1))
    assert pub.publish(again) is Sent.SENT and pub.publish(again) is Sent.SENT
    assert pub.publish(result(2)) and pub.publish(result(2))
    found = stream_events(redis_srv.client())
    assert [(event_id, e["id"]) for event_id, e in found][:1] == [(again.event_id, "r1")]
    assert [e["id"] for _, e in found] == ["r1", "r2", "r2"]


def test_a_slot_no_node_serves_does_not_stop_the_publisher(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's slot left unassigned (CLUSTER DELSLOTS on every node):
    redis-py raises its own cluster errors there, which are not RedisError.
    The publisher waits them out like Redis away, and once the slot is served
    again the result is in the stream, and so are those after it."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    stream = "{s}x"
    slot = key_slot(stream.encode())
    owner = next(p for p in private_cluster.ports if slot in private_cluster.slots_of(p))
    config = RedisConfig(cluster=True, nodes=tuple(private_cluster.nodes), results_stream=stream)
    pub = ResultPublisher(functools.partial(connect, config, socket_timeout=2), config)
    client = private_cluster.client()
    pub.start()
    try:
        pub.submit(result(0))
        wait_for(lambda: [e["id"] for _, e in stream_events(client, stream)] == ["r0"], timeout=30)
        for port in private_cluster.ports:
            with private_cluster.node(port) as node:
                node.execute_command("CLUSTER", "DELSLOTS", slot)
        pub.submit(result(1))
        wait_for(lambda: caplog.text.count("result_publish_failed") >= 2, timeout=60)
        with private_cluster.node(owner) as node:
            node.execute_command("CLUSTER", "ADDSLOTS", slot)
        wait_for(private_cluster.ok, timeout=60)
        pub.submit(result(2))
        wait_for(
            lambda: [e["id"] for _, e in stream_events(client, stream)] == ["r0", "r1", "r2"],
            timeout=60,
        )
    finally:
        client.close()
        assert pub.stop(10) == 0
    assert "result_lost" not in caplog.text and "result_publisher_failed" not in caplog.text


def test_out_of_memory_resends_only_the_stream_script(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory reached: PUBLISH still goes, the stream's XADD meets OOM.
    Each backoff round sends the script alone, so the channel and reply_to
    get the event once however long it lasts; the stream gets it once
    memory is back."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    admin = private_redis.client()
    channel, reply = Results(private_redis), Results(private_redis, channel="mine")
    pub = publisher(private_redis)
    pub.start()
    try:
        admin.config_set("maxmemory", 1)
        pub.submit(result(1), reply_to="mine")
        wait_for(lambda: caplog.text.count("OOM") >= 3, timeout=60)  # three rounds, at least
        admin.config_set("maxmemory", 0)
        wait_for(lambda: [e["id"] for _, e in stream_events(admin)] == ["r1"], timeout=60)
        assert channel.next()["id"] == reply.next()["id"] == "r1"
        assert pub.stop(10) == 0
        for name, heard in (("capture-results", channel), ("mine", reply)):
            admin.publish(name, json.dumps({"id": "end"}))  # behind every copy sent
            assert heard.next()["id"] == "end", name
    finally:
        admin.config_set("maxmemory", 0)
        pub.stop(1)
        channel.close()
        reply.close()
    assert "result_lost" not in caplog.text and pub.dropped == 0


def test_out_of_memory_on_a_cluster_resends_only_the_stream_script(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The same on a cluster, where commands go per slot: the stream's
    primary out of memory, the event is on the channel once, and in the
    stream once that primary has room again."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    stream = "{s}x"
    owner = next(
        p for p in redis_cluster.ports if key_slot(stream.encode()) in redis_cluster.slots_of(p)
    )
    config = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), results_stream=stream)
    pub = ResultPublisher(functools.partial(connect, config, socket_timeout=2), config)
    client = redis_cluster.client()
    channel_ids = ChannelIds(client)
    heard, listen = channel_ids.ids, channel_ids.listen

    pub.start()
    try:
        wait_for(listen, timeout=20)  # subscribed
        with redis_cluster.node(owner) as node:
            node.config_set("maxmemory", 1)
        pub.submit(result(1))
        wait_for(lambda: caplog.text.count("OOM") >= 3, timeout=60)  # three rounds, at least
        with redis_cluster.node(owner) as node:
            node.config_set("maxmemory", 0)
        wait_for(lambda: [e["id"] for _, e in stream_events(client, stream)] == ["r1"], timeout=60)
        assert pub.stop(10) == 0
        client.publish("capture-results", json.dumps({"id": "end"}))  # behind every copy
        wait_for(lambda: not listen() and heard[-1:] == ["end"], timeout=20)  # all read
        assert heard == ["r1", "end"]
    finally:
        with redis_cluster.node(owner) as node:
            node.config_set("maxmemory", 0)
        pub.stop(1)
        channel_ids.pubsub.close()
        client.close()
    assert "result_lost" not in caplog.text and pub.dropped == 0


def test_a_resend_refused_for_good_names_what_went_in_earlier_rounds(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's script meets OOM (the channel and reply_to got the
    event), then, resent alone, is refused for good: the loss says the
    channel and reply_to did get it, not that nothing was sent."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    admin = private_redis.client()
    config = deny(private_redis)  # may do all, for now
    channel, reply = Results(private_redis), Results(private_redis, channel="mine")
    pub = ResultPublisher(
        lambda: connect(config, socket_timeout=1, socket_connect_timeout=1), config
    )
    pub.start()
    try:
        admin.config_set("maxmemory", 1)
        pub.submit(result(1), reply_to="mine")
        wait_for(lambda: caplog.text.count("OOM") >= 2, timeout=60)  # resent alone, at least once
        assert channel.next()["id"] == reply.next()["id"] == "r1"
        admin.acl_setuser("pcapd", enabled=True, commands=["-evalsha"])
        wait_for(lambda: "result_lost" in caplog.text, timeout=60)
    finally:
        admin.config_set("maxmemory", 0)
        assert pub.stop(10) == 0
        channel.close()
        reply.close()
    lost = [line for line in caplog.text.splitlines() if "result_lost" in line]
    assert len(lost) == 1 and pub.dropped == 1, lost
    assert "NOPERM" in lost[0] and "(not sent: stream; sent: channel, reply_to)" in lost[0], lost

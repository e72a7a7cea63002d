"""`pcapd serve` as the Redis user docs/operations.md gives it ("The daemon's
Redis user"), its `ACL SETUSER` lines applied as written there: requests by
pub/sub and by the stream, results on the channel and the stream, a
duplicate, the heartbeat, and nothing it needs in Redis's `ACL LOG`; with
the channels narrowed, `pcapd trigger --wait` served and another reply_to
refused (its result still on the results channel and stream)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from pcapd.core.config import DEFAULT_FLEET_PREFIX
from pcapd.fleet import node_key
from tests.helpers import RedisServer, documented_acl, free_port, set_acl_user, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from triggers.redis_stream import BODY_FIELD

ACL_USER = "pcapd-daemon"
ACL_PASSWORD = "daemon-secret"
# What the documented line leaves out, as docs/operations.md says: each is
# refused (and logged by Redis), and the daemon goes on without it.
OPTIONAL = {"info", "config|get"}
REQUEST_STREAM = "capture-requests"
OUTSIDE = "alerts-replies"  # a reply_to the narrowed channels leave out
# The daemon's [redis] as that user; its idle subscription PINGs after 1 s
# (the default, 15 s, is past these tests).
THE_USER = f"""username = "{ACL_USER}"
auth = "{ACL_PASSWORD}"
health_check_interval = 1
"""
AS_THE_USER = THE_USER + "stream_listen = true\n"  # reading the stream too


def pings(admin: redis.Redis) -> int:
    """PINGs Redis took or refused since the stats were reset: only the
    daemon's pub/sub source sends them here, after `health_check_interval`
    (1 s) of silence."""
    stats = admin.info("commandstats").get("cmdstat_ping", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


def test_the_documented_acl_serves_every_request_source_dedup_and_heartbeat(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    one_server, _sharded, _narrowed, _cluster = documented_acl(ACL_USER, ACL_PASSWORD)
    set_acl_user(private_redis.port, ACL_USER, one_server)
    with redis.Redis(port=private_redis.port, decode_responses=True) as admin:
        admin.config_resetstat()  # the fixture's PING, at start, is not the daemon's
        results = Results(private_redis)
        daemon = Daemon(
            private_redis, tmp_path,
            extra_redis=AS_THE_USER,
            extra_sections="[fleet]\nheartbeat_interval = 1\n",
        )  # fmt: skip
        try:
            daemon.start()
            wait_for(lambda: "event=stream_group_created" in daemon.log(), timeout=15)
            heartbeat = node_key(DEFAULT_FLEET_PREFIX, "testnode")
            wait_for(lambda: admin.hget(heartbeat, "instance") is not None, timeout=15)
            wait_for(lambda: pings(admin) > 0)  # the idle subscription's, allowed or refused
            port = free_port()
            by_pubsub = udp_request(port, id="acl-pubsub", packets=2)
            daemon.publish(by_pubsub)
            traffic(port, 10, ready=lambda: daemon.started("acl-pubsub"))
            by_stream = udp_request(port, id="acl-stream", packets=2)
            admin.xadd(REQUEST_STREAM, {BODY_FIELD: json.dumps(by_stream)})
            traffic(port, 10, ready=lambda: daemon.started("acl-stream"))
            done = {i: results.for_id(i, timeout=20) for i in ("acl-pubsub", "acl-stream")}
            daemon.publish(by_pubsub)
            admin.xadd(REQUEST_STREAM, {BODY_FIELD: json.dumps(by_stream)})
            again = {i: results.for_id(i, timeout=20) for i in ("acl-pubsub", "acl-stream")}
            wait_for(lambda: [g["pending"] for g in admin.xinfo_groups(REQUEST_STREAM)] == [0])
            daemon.signal()
            assert daemon.wait() == 0, daemon.log()
        finally:
            daemon.stop()
            results.close()
        for event in done.values():
            assert (event["status"], event["packets"]) == ("ok", 2), event
        assert [event["status"] for event in again.values()] == ["duplicate"] * 2, again
        stream: Any = admin.xrange("capture-results")
        streamed = [json.loads(fields["event"]) for _, fields in stream]
        assert sorted((e["id"], e["status"]) for e in streamed) == [
            ("acl-pubsub", "duplicate"), ("acl-pubsub", "ok"),
            ("acl-stream", "duplicate"), ("acl-stream", "ok"),
        ]  # fmt: skip
        assert not admin.exists(heartbeat)  # removed at shutdown, by its own instance
        log = daemon.log()
        assert not [word for word in ("result_lost", "NOPERM", "Traceback") if word in log], log
        refused = {(entry["reason"], entry["object"]) for entry in admin.acl_log()}
        assert refused <= {("command", name) for name in OPTIONAL}, refused


def test_narrowed_channels_serve_pcapd_trigger_and_refuse_another_reply_to(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The documented narrowed channels: `pcapd trigger --wait` (reply_to
    `pcapd-reply-<id>`) gets its result; a request whose reply_to is outside
    them is served, its result on the results channel and stream, the
    refused publish logged `result_lost`, and nothing reaches that reply_to."""
    one_server, _sharded, narrowed, _cluster = documented_acl(ACL_USER, ACL_PASSWORD)
    set_acl_user(private_redis.port, ACL_USER, [*one_server, *narrowed])
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    elsewhere = admin.pubsub()
    elsewhere.subscribe(OUTSIDE)
    results = Results(private_redis)
    daemon = Daemon(private_redis, tmp_path, extra_redis=AS_THE_USER)
    try:
        daemon.start()
        port = free_port()
        traffic(port, 10, ready=lambda: daemon.started("acl-trigger"))
        request = udp_request(port, id="acl-trigger", packets=2)
        waited = subprocess.run(
            [sys.executable, "-m", "pcapd", "trigger", "--redis-url", private_redis.url,
             "--stdin", "--wait", "20", "--count", "1"],
            input=json.dumps(request), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stderr + daemon.log()
        by_trigger = json.loads(waited.stdout)
        traffic(port, 10, ready=lambda: daemon.started("acl-outside"))
        daemon.publish(udp_request(port, id="acl-outside", packets=2, reply_to=OUTSIDE))
        outside = results.for_id("acl-outside", timeout=20)
        wait_for(lambda: "event=result_lost id=acl-outside " in daemon.log())
        unheard = elsewhere.get_message(timeout=1)
        while unheard is not None and unheard["type"] == "subscribe":
            unheard = elsewhere.get_message(timeout=1)
    finally:
        daemon.stop()
        results.close()
        elsewhere.close()
    assert (by_trigger["id"], by_trigger["status"], by_trigger["packets"]) == (
        "acl-trigger", "ok", 2)  # fmt: skip
    assert (outside["status"], outside["packets"]) == ("ok", 2), outside
    assert unheard is None, unheard
    stream: Any = admin.xrange("capture-results")
    streamed = {json.loads(fields["event"])["id"] for _, fields in stream}
    assert streamed == {"acl-trigger", "acl-outside"}
    (lost,) = [line for line in daemon.log().splitlines() if "event=result_lost" in line]
    assert "id=acl-outside " in lost and "NOPERM" in lost, lost
    assert "(not sent: reply_to; sent: channel, stream)" in lost, lost  # it reached those
    refused = {(entry["reason"], entry["object"]) for entry in admin.acl_log()}
    admin.close()
    assert refused <= {("channel", OUTSIDE)} | {("command", name) for name in OPTIONAL}, refused
    assert ("channel", OUTSIDE) in refused

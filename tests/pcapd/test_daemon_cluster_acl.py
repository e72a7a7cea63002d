"""`pcapd serve` on a real 3-primary Redis Cluster as the Redis user
docs/operations.md gives it ("The daemon's Redis user"), its lines applied as
written there on every node (ACLs are per node): the one server's, the
cluster's and, with `sharded_pubsub = true`, the sharded one. Requests by
pub/sub and by the request stream from `pcapd trigger --wait`, results on
reply_to, the results channel and the stream, a duplicate, the heartbeat
written and removed at shutdown, and nothing in any node's `ACL LOG` but
what the doc calls optional."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.config import DEFAULT_FLEET_PREFIX
from pcapd.fleet import node_key
from tests.helpers import RedisCluster, documented_acl, free_port, set_acl_user, wait_for
from tests.pcapd.test_daemon import traffic, udp_request
from tests.pcapd.test_daemon_acl import ACL_PASSWORD, ACL_USER, OPTIONAL, THE_USER
from tests.pcapd.test_daemon_cluster import REPO, cluster_config, serve

NODE = "clusternode"  # as test_daemon_cluster's config names it
HEARTBEAT = "[fleet]\nheartbeat_interval = 1\n"


def trigger(config: Path, request: dict[str, Any], *how: str) -> dict[str, Any]:
    """`pcapd trigger --wait` as the admin (`config` names no user): the one
    result it printed, read from the request's reply_to."""
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "trigger", "-c", str(config), "--stdin", "--wait", "20",
         "--count", "1", *how],
        input=json.dumps(request), cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    event: dict[str, Any] = json.loads(line)
    return event


def started(config: Path, request_id: str) -> Callable[[], bool]:
    """Whether the capture for `request_id` has started, in the log `serve` writes."""
    return lambda: (
        f"event=capture_started id={request_id} " in config.with_suffix(".log").read_text()
    )


@pytest.mark.parametrize("sharded", [False, True], ids=["pubsub", "sharded"])
def test_the_documented_acl_on_every_node_serves_the_daemon_on_a_cluster(
    redis_cluster: RedisCluster, tmp_path: Path, sharded: bool
) -> None:
    one_server, sharded_line, _narrowed, cluster_extra = documented_acl(ACL_USER, ACL_PASSWORD)
    rules = [*one_server, *(sharded_line if sharded else []), *cluster_extra]
    for port in redis_cluster.ports:
        set_acl_user(port, ACL_USER, rules)
    admin = cluster_config(tmp_path / "admin.toml", redis_cluster, sharded=sharded)
    config = cluster_config(tmp_path / "pcapd.toml", redis_cluster, sharded=sharded,
                            extra_redis=THE_USER, extra_sections=HEARTBEAT)  # fmt: skip
    heartbeat = node_key(DEFAULT_FLEET_PREFIX, NODE)
    client = redis_cluster.client()
    try:
        with serve(config) as daemon:
            wait_for(lambda: client.hget(heartbeat, "instance") is not None, timeout=15)
            port = free_port()
            done = {}
            for request_id, how in (("acl-pubsub", ()), ("acl-stream", ("--stream",))):
                traffic(port, 10, ready=started(config, request_id))
                request = udp_request(port, id=request_id, node=NODE, packets=2)
                done[request_id] = trigger(admin, request, *how)
            again = trigger(admin, udp_request(port, id="acl-pubsub", node=NODE, packets=2))
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
        log = config.with_suffix(".log").read_text()
        stream: Any = client.xrange("capture-results")
        gone = not client.exists(heartbeat)
    finally:
        client.close()
    for event in done.values():
        assert (event["status"], event["packets"], event["node"]) == ("ok", 2, NODE), event
    assert again["status"] == "duplicate", again
    streamed = sorted((json.loads(fields["event"])["id"], json.loads(fields["event"])["status"])
                      for _, fields in stream)  # fmt: skip
    assert streamed == [("acl-pubsub", "duplicate"), ("acl-pubsub", "ok"), ("acl-stream", "ok")]
    assert gone  # removed at shutdown, by its own instance
    assert not [word for word in ("result_lost", "NOPERM", "Traceback") if word in log], log
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            refused = {(entry["reason"], entry["object"]) for entry in node.acl_log()}
        assert refused <= {("command", name) for name in OPTIONAL}, (port, refused)


def test_a_user_that_cannot_read_the_slot_map_is_said_and_waited_for(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Without the cluster line the daemon's client cannot read the slot map:
    it said so with a traceback and died; now it logs why, with what to grant,
    and serves once the rules are there."""
    one_server, _sharded, _narrowed, cluster_extra = documented_acl(ACL_USER, ACL_PASSWORD)
    for port in redis_cluster.ports:
        set_acl_user(port, ACL_USER, one_server)
    config = cluster_config(tmp_path / "pcapd.toml", redis_cluster, sharded=False,
                            extra_redis=THE_USER)  # fmt: skip
    log = config.with_suffix(".log")

    def refused() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if "event=redis_cluster_unreachable" in line]

    def grant_once_refused() -> None:
        wait_for(lambda: bool(refused()), timeout=20)
        for port in redis_cluster.ports:
            set_acl_user(port, ACL_USER, cluster_extra)

    granting = threading.Thread(target=grant_once_refused)
    granting.start()
    try:
        with serve(config) as daemon:  # ready: subscribed and reading the stream
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
    finally:
        granting.join(30)
    line = refused()[0]
    assert "level=error" in line and "Cluster mode is not enabled on this node" in line, line
    assert "+cluster|slots +command on every node" in line, line


def waiting_for_the_slot_map(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`pcapd serve -c config`, logging to `log`, once it has said twice
    that no seed gave it the slot map."""
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "pcapd", "serve", "-c", str(config)],
                                  cwd=REPO, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: log.read_text().count("event=redis_cluster_unreachable") >= 2, timeout=20)
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    return daemon


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_cluster_down_at_start_is_said_and_a_stop_leaves_cleanly(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """No seed listening: the wait above, then SIGTERM (systemctl stop) or
    SIGINT (Ctrl-C) ends it with a line and exit 0, as a stop while serving
    does: SIGTERM killed it silently (status -15), Ctrl-C exited 1, which
    systemd records as a failed stop."""
    config = tmp_path / "down.toml"
    config.write_text(
        f'[general]\nnode = "{NODE}"\nwritelocal = true\nlocaldir = "{tmp_path}"\n'
        f'[redis]\ncluster = true\nnodes = ["127.0.0.1:{free_port()}"]\n'
    )
    log = tmp_path / "down.log"
    daemon = waiting_for_the_slot_map(config, log)
    try:
        daemon.send_signal(stop)
        assert daemon.wait(10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    text = log.read_text()
    assert "Connection refused" in text and "Traceback" not in text, text
    stopped = f'event=stopped clean=true reason="stopped before serving" signal={stop.name}'
    assert stopped in text, text


def test_a_wrong_password_on_a_cluster_is_said_as_one(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """The user exists with every rule, the config's auth is wrong: the wait
    said the ACL lacked +cluster|slots; now its hint names the credentials."""
    one_server, _sharded, _narrowed, cluster_extra = documented_acl(ACL_USER, ACL_PASSWORD)
    for port in redis_cluster.ports:
        set_acl_user(port, ACL_USER, [*one_server, *cluster_extra])
    wrong = f'username = "{ACL_USER}"\nauth = "not-{ACL_PASSWORD}"\n'
    config = cluster_config(tmp_path / "pcapd.toml", redis_cluster, sharded=False,
                            extra_redis=wrong)  # fmt: skip
    log = config.with_suffix(".log")
    daemon = waiting_for_the_slot_map(config, log)
    try:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    line = next(line for line in log.read_text().splitlines()
                if "event=redis_cluster_unreachable" in line)  # fmt: skip
    assert "invalid username-password pair" in line, line
    assert "refuse [redis] username and auth" in line and "+cluster|slots" not in line, line

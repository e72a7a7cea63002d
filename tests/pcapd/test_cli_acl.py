"""`pcapd trigger` (with and without `--wait`, and `--stream`), `pcapd results`
(channel and stream) and `pcapd nodes` (list and `--match`) as the Redis user
docs/operations.md gives operators ("The operators' Redis user"), its `ACL
SETUSER` line applied as written there, against a real `pcapd serve` running
as the documented daemon user: every command does its job, and Redis's `ACL
LOG` holds no refusal of the operator's."""

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
from tests.pcapd.daemon_fixture import Daemon
from tests.pcapd.test_daemon import traffic, udp_request
from tests.pcapd.test_daemon_acl import ACL_PASSWORD, ACL_USER, AS_THE_USER, OPTIONAL

OPERATOR = "pcapd-operator"
OPERATOR_PASSWORD = "operator-secret"
# The operator's [redis]; an idle subscription PINGs after 1 s (the default,
# 15 s, is past this test), as a long `--wait` does.
OPERATOR_CONFIG = """[redis]
port = {port}
username = "{user}"
auth = "{password}"
health_check_interval = 1
"""
IDLE = 1.5  # s a follower waits for its event: past its health check


def cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", *args, "-c", str(config)],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def follow(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pcapd", "results", "-c", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def ended(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


def blocked_in_xread(admin: redis.Redis) -> bool:
    return any(c.get("cmd") == "xread" for c in admin.client_list())


def capture(daemon: Daemon, config: Path, request_id: str, *options: str) -> tuple[int, str]:
    """`pcapd trigger --stdin OPTIONS` for a 2-packet capture of traffic sent
    IDLE s after it started; (exit status, stdout + stderr)."""
    port = free_port()
    body = json.dumps(udp_request(port, id=request_id, packets=2))
    traffic(port, 10, delay=IDLE, ready=lambda: daemon.started(request_id))
    done = cli(config, "trigger", "--stdin", *options, stdin=body)
    return done.returncode, done.stdout + done.stderr


def operator_problems(
    server: RedisServer, daemon: Daemon, config: Path, tag: str = ""
) -> list[str]:
    """Runs each command as the operator against the running `daemon`, its
    request ids ending in `tag`, on an empty results stream; what went wrong,
    one line each (none: every command did its job)."""
    problems: list[str] = []
    wait, pubsub, stream_id = (f"op-{kind}{tag}" for kind in ("wait", "pubsub", "stream"))
    admin = redis.Redis(port=server.port, decode_responses=True)
    listed = cli(config, "nodes", "--json")
    if listed.returncode != 0 or "testnode" not in listed.stdout:
        problems.append(f"nodes: {listed.returncode} {listed.stdout}{listed.stderr}")
    match = cli(config, "nodes", "--match", json.dumps({"node": "testnode", "interface": "lo"}))
    if match.returncode != 0:
        problems.append(f"nodes --match: {match.returncode} {match.stdout}{match.stderr}")
    status, out = capture(daemon, config, wait, "--wait", "30", "--count", "1")
    if status != 0 or '"status": "ok"' not in out:
        problems.append(f"trigger --wait: {status} {out}")
    # Followers from now on: the stream holds `wait`'s result already, and is not to print it.
    listeners = admin.pubsub_numsub("capture-results")[0][1]
    channel, stream = (follow(config, *args, "--count", "1", "--timeout", "30")
                       for args in ((), ("--stream",)))  # fmt: skip
    try:
        wait_for(lambda: admin.pubsub_numsub("capture-results")[0][1] > listeners, timeout=20)
        wait_for(lambda: blocked_in_xread(admin), timeout=20)
    except AssertionError:
        problems.append("results: a follower did not start")
    status, out = capture(daemon, config, pubsub)
    if status != 0:
        problems.append(f"trigger: {status} {out}")
    for name, proc in (("results", channel), ("results --stream", stream)):
        code, events, err = ended(proc)
        if code != 0 or [(e["id"], e["status"]) for e in events] != [(pubsub, "ok")]:
            problems.append(f"{name}: {code} {events} {err}")
    status, out = capture(daemon, config, stream_id, "--stream")
    if status != 0:
        problems.append(f"trigger --stream: {status} {out}")
    replay = cli(config, "results", "--stream", "--from-start", "--count", "3", "--timeout", "30")
    ids = sorted(json.loads(line)["id"] for line in replay.stdout.splitlines())
    if replay.returncode != 0 or ids != sorted([wait, pubsub, stream_id]):
        problems.append(f"results --stream --from-start: {replay.returncode} {ids}")
    refused = [entry for entry in admin.acl_log() if entry["username"] == OPERATOR]
    problems.extend(f"ACL LOG: {entry['reason']} {entry['object']}" for entry in refused)
    return problems


def test_the_documented_operator_acl_serves_trigger_results_and_nodes(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    daemon_rules, _sharded, _narrowed, _cluster = documented_acl(ACL_USER, ACL_PASSWORD)
    set_acl_user(private_redis.port, ACL_USER, daemon_rules)
    [operator_rules] = documented_acl(OPERATOR, OPERATOR_PASSWORD)
    set_acl_user(private_redis.port, OPERATOR, operator_rules)
    config = tmp_path / "operator.toml"
    config.write_text(
        OPERATOR_CONFIG.format(port=private_redis.port, user=OPERATOR, password=OPERATOR_PASSWORD)
    )
    daemon = Daemon(
        private_redis, tmp_path / "daemon", extra_redis=AS_THE_USER,
        extra_sections="[fleet]\nheartbeat_interval = 1\n",
    )  # fmt: skip
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    try:
        daemon.start()
        wait_for(lambda: "event=stream_group_created" in daemon.log(), timeout=15)
        heartbeat = node_key(DEFAULT_FLEET_PREFIX, "testnode")
        wait_for(lambda: admin.hget(heartbeat, "instance") is not None, timeout=15)
        assert operator_problems(private_redis, daemon, config) == []
    finally:
        daemon.stop()
    assert "NOPERM" not in daemon.log()
    refused = {(entry["reason"], entry["object"]) for entry in admin.acl_log()}
    assert refused <= {("command", name) for name in OPTIONAL}, refused

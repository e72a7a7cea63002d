"""The batched writer on a real 3-primary Redis Cluster: the same keys as on one
server, refusals counted, a primary killed and started again mid-run."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from agents.metrics import writer_check
from agents.redis_writer import RedisWriter
from agents.store import APPEND_SCRIPT, client_key
from agents.write_window import Batch
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import SOCKET_TIMEOUT, connect, is_cluster
from pcapd.core.redis_slots import send_by_slot
from pcapd.core.secret import Secret
from tests.agents.flow import frames as f
from tests.agents.test_store import refusals
from tests.agents.writes import (
    ACL_PASSWORD,
    ACL_USER,
    record_answer,
    record_nxdomain,
    writer_metric,
)
from tests.helpers import (
    RedisCluster,
    RedisServer,
    documented_acl,
    keyspace,
    run_until_killed,
    set_acl_user,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]


def cluster_writer(url: str, **options: Any) -> RedisWriter:
    writer = RedisWriter(lambda: connect(RedisConfig(url=Secret(url))), ttl=900, **options)
    writer.start()
    return writer


def owners(cluster: RedisCluster, keys: list[str]) -> set[int]:
    """The ports of the primaries holding `keys`."""
    found = set()
    for port in cluster.ports:
        with cluster.node(port) as node:
            if set(node.scan_iter(count=1000)) & set(keys):
                found.add(port)
    return found


def fill(writer: RedisWriter, clients: int) -> None:
    """What the dnstap and flow agents write, for `clients` clients."""
    for index in range(clients):
        client = f"10.200.70.{index}"
        record_answer(writer, client, ("www.example.", "cdn.example."), ("192.0.2.1", "192.0.2.2"))
        record_nxdomain(writer, client, "nope.example.")
        writer.incr(f"{client};192.0.2.1;443;flow")
        writer.append(f"{client};192.0.2.1;dns", "other.example.")


def test_the_cluster_holds_the_same_keys_and_values_as_one_server(
    redis_cluster: RedisCluster, redis_srv: RedisServer
) -> None:
    for index in (False, True):
        single = RedisWriter(lambda: connect(RedisConfig(port=redis_srv.port)), index=index)
        clustered = cluster_writer(redis_cluster.url, index=index, batch_ops=50)
        single.start()
        fill(single, 40)
        fill(clustered, 40)
        single.stop(30)
        clustered.stop(30)
        with redis.Redis(port=redis_srv.port, decode_responses=True) as plain:
            plain_text = keyspace(plain)
        assert redis_cluster.keyspace() == plain_text
        assert len(plain_text) == 40 * (6 + index)
        assert clustered.stats.written_ops == single.stats.written_ops == 40 * 8
        assert clustered.stats.dropped_ops == 0
        assert len(owners(redis_cluster, list(plain_text))) == 3
        redis_cluster.reset()
        with redis_srv.client() as plain:
            plain.flushall()


def test_the_documented_cluster_acl_lets_the_writer_write_everything(
    redis_cluster: RedisCluster, redis_srv: RedisServer
) -> None:
    """docs/operations.md's ACL lines for a cluster, as written there: every
    write lands on every primary, nothing is refused, the key space is one
    server's with the same writes."""
    one_server, cluster_extra = documented_acl(ACL_USER, ACL_PASSWORD)
    try:
        for port in redis_cluster.ports:
            set_acl_user(port, ACL_USER, [*one_server, *cluster_extra])
        url = redis_cluster.url.replace("//", f"//{ACL_USER}:{ACL_PASSWORD}@", 1)
        writer = cluster_writer(url, index=True, batch_ops=50)
        fill(writer, 40)
        writer.stop(30)
        single = RedisWriter(lambda: connect(RedisConfig(port=redis_srv.port)), index=True)
        single.start()
        fill(single, 40)
        single.stop(30)
        with redis.Redis(port=redis_srv.port, decode_responses=True) as plain:
            assert redis_cluster.keyspace() == keyspace(plain)
        assert (writer.stats.written_ops, writer.stats.dropped_ops) == (40 * 8, 0)
        assert writer.access_refused is None
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                assert node.execute_command("ACL", "LOG") == []
    finally:
        for port in redis_cluster.ports:
            with redis_cluster.node(port) as node:
                node.execute_command("ACL", "DELUSER", ACL_USER)
                node.execute_command("ACL", "LOG", "RESET")


# What the writer logs when the cluster line lacks each rule: redis-py says
# NOPERM for COMMAND, and takes the refused CLUSTER SLOTS for a node that is
# no cluster's.
WITHOUT_CLUSTER_RULE = {
    "+cluster|slots": "Cluster mode is not enabled on this node",
    "+command": "NOPERM this user has no permissions to run the 'command' command",
}


@pytest.mark.parametrize("withheld", list(WITHOUT_CLUSTER_RULE))
def test_without_a_rule_of_the_documented_cluster_line_the_writer_is_unreachable(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture, withheld: str
) -> None:
    """docs/operations.md: on a cluster, without `cluster|slots` or `command`
    the connection itself is refused: `redis` is `unreachable`, and the log
    says why, as WITHOUT_CLUSTER_RULE has it."""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    one_server, cluster_extra = documented_acl(ACL_USER, ACL_PASSWORD)
    assert withheld in cluster_extra
    for port in redis_cluster.ports:
        set_acl_user(port, ACL_USER, [*one_server, *(r for r in cluster_extra if r != withheld)])
    url = redis_cluster.url.replace("//", f"//{ACL_USER}:{ACL_PASSWORD}@", 1)
    writer = cluster_writer(url, flush_interval=0.02)
    try:
        writer.incr(client_key("10.200.70.1"))
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        [check] = writer_check(writer)
    finally:
        writer.stop(0)
    assert not check.ok and check.detail.startswith("unreachable ("), check
    assert "event=redis_write_failed" in caplog.text
    assert WITHOUT_CLUSTER_RULE[withheld] in caplog.text, caplog.text


def test_a_key_of_another_type_costs_that_key_on_a_cluster(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    admin = redis_cluster.client()
    admin.rpush("c;9.9.9.9;dns", "a list, not a string")
    writer = cluster_writer(redis_cluster.url)
    writer.append("c;9.9.9.9;dns", "a.example.")
    for index in range(20):
        writer.incr(client_key(f"10.0.0.{index}"))
    writer.stop(30)
    assert (writer.stats.rejected_ops, writer.stats.written_ops) == (1, 20)
    assert writer.stats.dropped_ops == 1
    (line,) = refusals(caplog)
    assert (line["cause"], line["ops"]) == ("WRONGTYPE", 1)


def deny_writes(cluster: RedisCluster) -> str:
    """An ACL user on every node that may neither run scripts nor INCRBY
    (what the writer appends and counts with); its seed URL."""
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                             commands=["+@all", "-evalsha", "-eval", "-incrby"])  # fmt: skip
    return f"redis+cluster://agent:pw@127.0.0.1:{cluster.ports[0]}"


def test_a_write_the_cluster_refuses_is_counted_and_logged_once(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    writer = cluster_writer(deny_writes(redis_cluster))
    for index in range(30):
        writer.incr(client_key(f"10.0.0.{index}"))
    writer.stop(30)
    assert (writer.stats.dropped_ops, writer.stats.written_ops) == (30, 0)
    assert writer.stats.rejected_ops == 30
    lines = refusals(caplog)
    assert {line["cause"] for line in lines} == {"NOPERM"}
    assert sum(line["ops"] for line in lines) == 30 and len(lines) <= 2  # first, then the rest


def test_flow_read_into_a_refusing_cluster_exits_1(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """The issue's case: a file read into a cluster that wrote none of it
    must say so and exit non-zero."""
    url = deny_writes(redis_cluster)
    pcap = tmp_path / "one.pcap"
    packets = [f.ip4("192.0.2.7", f"10.200.71.{i}", 17, f.udp(53, 4000 + i)) for i in range(30)]
    f.write_pcap(pcap, [f.ether(frame) for frame in packets])
    result = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "flow", "--read", str(pcap), "10.200.71.0/24",
         "--redis", url],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "event=redis_writes_refused cause=NOPERM" in result.stderr
    assert "event=keys_dropped agent=flow keys=" in result.stderr
    assert "keys_written=0" in result.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_primary_restarted_mid_run_loses_nothing_acknowledged(
    private_cluster: RedisCluster, how: signal.Signals
) -> None:
    """Writes go on while one primary is killed and started again with its
    cluster config and AOF: every write the writer counted as written is in
    the cluster, and it writes to the primary again once it is back."""
    keys = [client_key(f"10.200.72.{i}") for i in range(200)]
    victim = private_cluster.ports[1]
    writer = cluster_writer(private_cluster.url, batch_ops=100, flush_interval=0.01)
    rounds, done = 60, threading.Event()

    def produce() -> None:
        for _ in range(rounds):
            for key in keys:
                writer.incr(key)
            time.sleep(0.05)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: writer.stats.written_ops > 2_000, timeout=60)
    private_cluster.kill(victim, how)
    time.sleep(3)  # past cluster-node-timeout: the cluster says CLUSTERDOWN meanwhile
    private_cluster.start_node(victim)
    wait_for(private_cluster.ok, timeout=60, interval=0.1)
    producer.join(120)
    assert done.is_set()
    writer.stop(60)
    total = rounds * len(keys)
    assert writer.stats.dropped_ops == 0 and writer.stats.written_ops == total
    assert writer.stats.redis_errors > 0  # it did see the primary go
    admin = private_cluster.client()
    values = [int(admin.get(key) or 0) for key in keys]
    # Nothing acknowledged is lost; a write sent as the primary died may have
    # landed without its answer and been sent again.
    assert total <= sum(values) <= total + 100
    assert len(owners(private_cluster, keys)) == 3


@pytest.mark.timeout(120)
def test_what_a_dead_primary_never_took_is_counted_as_dropped(
    private_cluster: RedisCluster,
) -> None:
    writer = cluster_writer(private_cluster.url)
    private_cluster.kill(private_cluster.ports[0])
    keys = [client_key(f"10.200.73.{i}") for i in range(100)]
    for key in keys:
        writer.incr(key)
    time.sleep(2)
    writer.stop(1)
    assert writer.stats.written_ops + writer.stats.dropped_ops == 100
    assert writer.stats.dropped_ops > 0


def _node_id(cluster: RedisCluster, port: int) -> str:
    return str(cluster.node(port).cluster("MYID"))


def test_a_slot_moved_or_migrating_is_followed(redis_cluster: RedisCluster) -> None:
    """MOVED (the slot went to another primary after the writer read the
    slot map) and ASK (the slot is being migrated and the key is new) both
    land the write on the node that now owns the key."""
    writer = cluster_writer(redis_cluster.url)
    moved, asked = client_key("10.200.74.1"), client_key("10.200.74.2")
    writer.incr(moved)
    writer.incr(asked)
    writer.flush()
    wait_for(lambda: writer.stats.written_ops == 2, timeout=20)
    admin = redis_cluster.client()
    for key in (moved, asked):
        slot = key_slot(key.encode())
        source = admin.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        target = next(p for p in redis_cluster.ports if p != source)
        ids = {port: _node_id(redis_cluster, port) for port in (source, target)}
        redis_cluster.node(target).cluster("SETSLOT", slot, "IMPORTING", ids[source])
        redis_cluster.node(source).cluster("SETSLOT", slot, "MIGRATING", ids[target])
        if key == moved:  # finish the move: the key and the slot go to the target
            redis_cluster.node(source).migrate("127.0.0.1", target, [key], 0, 5000)
            for port in redis_cluster.ports:
                redis_cluster.node(port).cluster("SETSLOT", slot, "NODE", ids[target])
            writer.incr(key)
        else:  # mid-migration: the key already went, so the source answers ASK
            redis_cluster.node(source).migrate("127.0.0.1", target, [key], 0, 5000)
            writer.incr(key)
        writer.flush()
        wait_for(lambda k=key: writer.stats.written_ops >= 3 + (k == asked), timeout=20)
        if key == asked:  # end the migration: the shared cluster stays whole
            for port in redis_cluster.ports:
                redis_cluster.node(port).cluster("SETSLOT", slot, "NODE", ids[target])
        assert redis_cluster.node(target).get(key) == "2"
    writer.stop(10)
    assert writer.stats.dropped_ops == 0 and writer.stats.written_ops == 4


def test_a_failed_script_load_costs_only_the_slots_that_needed_it(
    redis_cluster: RedisCluster,
) -> None:
    """A primary flushed its scripts and refuses SCRIPT LOAD and EVAL: its
    slots' appends are refused (NOPERM), the other primaries' written. The
    script is loaded only where Redis said NOSCRIPT: another primary
    refusing SCRIPT LOAD too costs nothing. (With EVAL allowed, EVAL
    carries the script: tests/pcapd/core/test_result_send.py.)"""
    keys = [f"10.0.1.{index};192.0.2.1;dns" for index in range(30)]
    flushed, also_denied = redis_cluster.ports[0], redis_cluster.ports[1]
    denied = (flushed, also_denied)
    writer = cluster_writer(redis_cluster.url)
    try:
        for key in keys:
            writer.append(key, "a.")
        wait_for(lambda: writer.stats.written_ops == 30, timeout=30)
        theirs = slots_of(redis_cluster, flushed)
        on_flushed = {key for key in keys if key_slot(key.encode()) in theirs}
        with redis_cluster.node(flushed) as node:
            node.script_flush()  # its slots answer NOSCRIPT: the writer loads the script
        for port in denied:  # and the load is refused there
            with redis_cluster.node(port) as node:
                node.execute_command("ACL", "SETUSER", "default", "-script|load", "-eval")
        for key in keys:
            writer.append(key, "b.")
        wait_for(lambda: writer.stats.written_ops + writer.stats.rejected_ops >= 60, timeout=30)
    finally:
        writer.stop(10)
        for port in denied:
            with redis_cluster.node(port) as node:
                node.execute_command("ACL", "SETUSER", "default", "+script|load", "+eval")
    # The other slots' writes stand, applied and counted once.
    values = {key: redis_cluster.client().get(key) for key in keys}
    assert values == {key: ";a.;" if key in on_flushed else ";a.;;b.;" for key in keys}
    assert writer.stats.rejected_ops == len(on_flushed) > 0
    assert writer.stats.written_ops == 60 - len(on_flushed)


def slots_of(cluster: RedisCluster, port: int) -> set[int]:
    with cluster.node(port) as node:
        ranges = node.execute_command("CLUSTER", "SLOTS")
    found: set[int] = set()
    for start, end, primary, *_ in ranges:
        if int(primary[1]) == port:
            found.update(range(int(start), int(end) + 1))
    return found


def test_a_slots_call_carries_at_most_batch_ops_entries(redis_cluster: RedisCluster) -> None:
    """A round trip joins up to 8 batches; one slot's share of them still goes
    in calls of at most `batch_ops` entries, so none holds its node longer."""
    keys = [f"{{10.0.2.1}};192.0.2.{index};dns" for index in range(80)]  # one hash slot
    slot = key_slot(keys[0].encode())
    (port,) = [p for p in redis_cluster.ports if slot in slots_of(redis_cluster, p)]
    with redis_cluster.node(port) as node:
        node.script_load(APPEND_SCRIPT)
        node.config_resetstat()
        writer = cluster_writer(redis_cluster.url, batch_ops=10, flush_interval=30.0)
        writer.extend(keys, ["m."] * 80)
        writer.stop(30)
        assert writer.stats.written_ops == 80
        assert int(node.info("commandstats")["cmdstat_evalsha"]["calls"]) == 8


def test_a_command_moved_to_a_node_that_then_times_out_is_sent_there_once(
    redis_cluster: RedisCluster,
) -> None:
    """`send_by_slot` (the writer's cluster transport): a command answered
    MOVED goes to the new owner; when that node does not answer in time
    (CLIENT PAUSE WRITE, longer than the socket timeout), its reply is the
    timeout, handed back to the caller, never the old MOVED, which would
    send it again within the same call (an INCR run twice or thrice)."""
    client = connect(RedisConfig(url=Secret(redis_cluster.url)), socket_timeout=0.5)
    assert is_cluster(client)
    key = client_key("10.200.74.9")
    slot = key_slot(key.encode())
    source = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
    target = next(p for p in redis_cluster.ports if p != source)
    ids = {port: _node_id(redis_cluster, port) for port in (source, target)}
    admin = redis_cluster.node(target)
    try:
        for port in redis_cluster.ports:  # the client's slot map still names the source
            redis_cluster.node(port).cluster("SETSLOT", slot, "NODE", ids[target])
        admin.client_pause(3000, all=False)
        replies = send_by_slot(client, [(slot, ("INCR", key))])
        assert isinstance(replies[0], redis.TimeoutError), replies
        admin.client_unpause()
        # Sent there once (Redis drops a paused command whose client left).
        assert admin.get(key) in (None, "1")
    finally:
        admin.client_unpause()
        admin.delete(key)
        for port in redis_cluster.ports:
            redis_cluster.node(port).cluster("SETSLOT", slot, "NODE", ids[source])
        client.close()


CONNECTED = "pcapd_agent_redis_connected"


@pytest.mark.timeout(120)
def test_a_cluster_none_of_whose_nodes_answers_is_not_connected(
    redis_cluster: RedisCluster,
) -> None:
    """Every node stopped (SIGSTOP) while writes come: each round trip gets
    no answer from any primary, so agent_redis_connected goes 0 with the
    first failure and stays 0 however many follow, then is 1 again once the
    nodes answer, and every write lands. (Before, a cluster round trip that
    failed whole still set it to 1: it flapped.)"""
    keys = [client_key(f"10.200.75.{i}") for i in range(60)]  # over the three primaries
    writer = RedisWriter(
        lambda: connect(RedisConfig(url=Secret(redis_cluster.url)), socket_timeout=0.3),
        ttl=900, flush_interval=0.02,
    )  # fmt: skip
    writer.start()
    seen: list[float] = []  # the gauge, sampled after the first failure while paused
    try:
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: writer.stats.written_ops == 60 and writer.connected, timeout=30)
        assert writer_metric(writer, CONNECTED) == 1
        with redis_cluster.paused():
            writer.extend(keys, [1] * len(keys))
            wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
            while writer.stats.redis_errors < 3:  # failures after the first, each retried
                seen.append(writer_metric(writer, CONNECTED))
                time.sleep(0.01)
            seen.append(writer_metric(writer, CONNECTED))
        wait_for(lambda: writer.stats.written_ops == 120 and writer.queue_depth == 0, timeout=60)
        wait_for(lambda: writer.connected, timeout=30)
        assert writer_metric(writer, CONNECTED) == 1
    finally:
        writer.stop(10)
    assert seen and set(seen) == {0}
    assert writer.stats.dropped_ops == 0
    with redis_cluster.client() as admin:
        # Sent as the nodes stopped, a write may have run with its reply lost: sent again.
        assert all(int(admin.get(key) or 0) >= 2 for key in keys)


def test_a_stopped_cluster_writer_leaves_no_connection_open(
    private_cluster: RedisCluster,
) -> None:
    """The cluster client's connections (to each primary, the idle PINGs'
    included) are closed as the writer stops, not left to the garbage
    collector: a ResourceWarning, and connections each node keeps open."""

    def writers_connections() -> int:
        count = 0
        for port in private_cluster.ports:
            with private_cluster.node(port) as node:
                count += sum(c["name"] == "pcapd" for c in node.client_list())
        return count

    gc.disable()  # what the writer does not close stays open
    try:
        writer = cluster_writer(private_cluster.url, flush_interval=0.01, ping_interval=0.05)
        keys = [client_key(f"10.200.82.{i}") for i in range(30)]
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: writer.stats.written_ops == 30 and len(writer.heard_nodes) == 3)
        time.sleep(0.2)  # idle PINGs
        assert writers_connections() >= 3
        writer.stop(5)
        wait_for(lambda: writers_connections() == 0, timeout=5)
    finally:
        gc.enable()


def lose_a_primary(cluster: RedisCluster) -> str:
    """The others keep serving their own slots (no full coverage needed)
    when one primary, killed, is gone: its name."""
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.config_set("cluster-require-full-coverage", "no")
    victim = cluster.ports[1]  # not the URL's seed
    cluster.kill(victim)
    return f"127.0.0.1:{victim}"


@pytest.mark.timeout(60)
def test_readiness_names_a_dead_primary_s_slots_while_the_others_answer(
    private_cluster: RedisCluster,
) -> None:
    """Writes go on to three primaries, one dies: the writer stays connected
    (two answer) through its retries of the dead one's slots alone, and
    readiness names that primary's slots."""
    keys = [client_key(f"10.200.77.{i}") for i in range(60)]
    writer = cluster_writer(private_cluster.url, flush_interval=0.01)
    try:
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: writer.stats.written_ops == 60, timeout=30)
        names = {f"127.0.0.1:{port}" for port in private_cluster.ports}
        assert writer.heard_nodes == names
        dead = lose_a_primary(private_cluster)
        theirs = private_cluster.slots_of(int(dead.rpartition(":")[2]))
        lost = [key for key in keys if key_slot(key.encode()) in theirs]
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: writer.stats.written_ops == 120 - len(lost), timeout=30)
        seen = []
        while writer.stats.redis_errors < 3:  # the dead one's slots, retried alone
            seen.append(writer.connected)
            time.sleep(0.01)
        assert set(seen) == {True} and writer.connected
        assert writer.heard_nodes == names - {dead}
        assert writer.unanswered == dict.fromkeys(theirs, dead)
        redis_check, slots_check = writer_check(writer)
        assert redis_check.ok and not slots_check.ok
        assert f"{len(theirs)} slot(s) on {dead}" in slots_check.detail
    finally:
        writer.stop(0)


@pytest.mark.timeout(60)
def test_a_dead_primary_s_writes_never_fill_the_queue_for_the_others(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary dies (the others serve their slots) while writes keep
    coming for its slots: what waits for it may fill half the queue; past
    that it is given up, counted and logged once, so writes to the primaries
    that answer still find room. Before, its slots' entries filled the
    whole queue and every later write was dropped."""
    limit = 200
    writer = cluster_writer(private_cluster.url, flush_interval=0.01, max_queue_ops=limit)
    try:
        keys = [client_key(f"10.200.79.{i // 250}.{i % 250}") for i in range(2000)]
        writer.extend(keys[:60], [1] * 60)  # every primary heard from
        wait_for(lambda: len(writer.heard_nodes) == 3, timeout=30)
        dead = lose_a_primary(private_cluster)
        theirs = private_cluster.slots_of(int(dead.rpartition(":")[2]))
        keys = keys[60:]
        doomed = [key for key in keys if key_slot(key.encode()) in theirs][: 2 * limit]
        healthy = [key for key in keys if key_slot(key.encode()) not in theirs][:50]
        writer.extend(doomed[:limit], [1] * limit)
        wait_for(lambda: writer.stats.redis_errors >= 2, timeout=30)  # tried, and held
        for key in doomed[limit:]:  # as a capture goes on: arriving over rounds
            writer.incr(key)
        wait_for(lambda: writer.queue_depth <= limit // 2, timeout=30)
        writer.extend(healthy, [1] * len(healthy))
        wait_for(lambda: writer.stats.written_ops == 60 + len(healthy), timeout=30)
        said = f"max_queue_ops waiting for {dead}, which did not answer; given up so that the"
        assert caplog.text.count(said) == 1, caplog.text  # once per DROP_LOG_INTERVAL
    finally:
        writer.stop(0)
    with private_cluster.client() as admin:
        assert admin.mget_nonatomic(healthy) == ["1"] * len(healthy)
    assert writer.stats.dropped_ops >= limit  # the dead primary's, given up
    # What was given up after that line is said as the writer stops: the
    # lines add up to what was dropped, less what found the queue full
    # (never queued: counted, in the stats line only).
    lost = [line for line in caplog.text.splitlines() if "event=redis_writes_lost" in line]
    ops = [int(part[4:]) for line in lost for part in line.split() if part.startswith("ops=")]
    never_queued = 60 + len(doomed) + len(healthy) - writer.stats.queued_ops
    assert sum(ops) == writer.stats.dropped_ops - never_queued, caplog.text


@pytest.mark.timeout(90)
def test_what_a_cluster_refuses_whole_is_kept_not_given_up(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """With full coverage required (Redis's default), a dead primary makes
    every primary answer CLUSTERDOWN past the node timeout: no primary takes
    writes, so what waits is kept, up to max_queue_ops as on one server,
    and goes once the cluster is whole again; nothing is given up."""
    limit = 200
    writer = cluster_writer(private_cluster.url, flush_interval=0.01, max_queue_ops=limit)
    victim = private_cluster.ports[1]
    keys = [client_key(f"10.200.80.{i}") for i in range(60)]
    try:
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: len(writer.heard_nodes) == 3, timeout=30)
        theirs = private_cluster.slots_of(victim)
        healthy = [k for k in (client_key(f"10.200.81.{i}") for i in range(1000))
                   if key_slot(k.encode()) not in theirs][: limit * 3 // 4]  # fmt: skip
        private_cluster.kill(victim)

        def refused_whole() -> bool:
            with private_cluster.node(private_cluster.ports[0]) as node:
                return bool(node.cluster("INFO").get("cluster_state") == "fail")

        wait_for(refused_whole, timeout=30, interval=0.1)
        errors = writer.stats.redis_errors
        writer.extend(healthy, [1] * len(healthy))  # more than HELD_SHARE of the queue
        wait_for(lambda: writer.stats.redis_errors >= errors + 3, timeout=30)
        assert writer.queue_depth == len(healthy) and writer.stats.dropped_ops == 0
        private_cluster.start_node(victim)
        wait_for(private_cluster.ok, timeout=60, interval=0.1)
        wait_for(lambda: writer.stats.written_ops == 60 + len(healthy), timeout=60)
    finally:
        writer.stop(5)
    assert writer.stats.dropped_ops == 0
    assert "given up so that the" not in caplog.text


@pytest.mark.timeout(60)
def test_a_dead_primary_s_backoff_does_not_hold_the_others_writes(
    private_cluster: RedisCluster,
) -> None:
    """Once the dead primary's retries wait ~2 s or more (its fifth
    failure), a write to another primary's slot is still sent at once:
    it lands before that primary is tried again."""
    writer = cluster_writer(private_cluster.url, flush_interval=0.01)
    try:
        dead = lose_a_primary(private_cluster)
        theirs = private_cluster.slots_of(int(dead.rpartition(":")[2]))
        keys = [client_key(f"10.200.78.{i}") for i in range(40)]
        lost = next(key for key in keys if key_slot(key.encode()) in theirs)
        healthy = next(key for key in keys if key_slot(key.encode()) not in theirs)
        writer.incr(lost)
        wait_for(lambda: writer.stats.redis_errors >= 5, timeout=30)
        errors = writer.stats.redis_errors
        writer.incr(healthy)
        wait_for(lambda: writer.stats.written_ops == 1, timeout=30)
        assert writer.stats.redis_errors == errors
    finally:
        writer.stop(0)


@pytest.mark.timeout(60)
def test_an_idle_writer_pings_every_primary(private_cluster: RedisCluster) -> None:
    """Nothing written: the idle PING goes to each primary, so one that dies
    is noticed and readiness names its slots, the others answering; once
    it is back, every slot is fine again."""
    writer = cluster_writer(private_cluster.url, ping_interval=0.05)
    try:
        names = {f"127.0.0.1:{port}" for port in private_cluster.ports}
        wait_for(lambda: writer.heard_nodes == names and writer.unanswered == {}, timeout=30)
        dead = lose_a_primary(private_cluster)
        port = int(dead.rpartition(":")[2])
        theirs = private_cluster.slots_of(port)
        wait_for(lambda: writer.unanswered, timeout=30)
        assert writer.unanswered == dict.fromkeys(theirs, dead)
        assert writer.connected and writer.heard_nodes == names - {dead}
        redis_check, slots_check = writer_check(writer)
        assert redis_check.ok and not slots_check.ok
        assert f"{len(theirs)} slot(s) on {dead}" in slots_check.detail
        private_cluster.start_node(port)
        wait_for(lambda: writer.unanswered == {}, timeout=30)
        assert writer.heard_nodes == names
    finally:
        writer.stop(0)


def test_a_primary_answering_ping_busy_is_there_its_slots_named(
    redis_cluster: RedisCluster,
) -> None:
    """A script running past busy-reply-threshold on one primary: its PING
    is answered BUSY, so it is heard (no unanswered PING) and readiness
    names its slots; once the script is killed they are fine again."""
    busy = redis_cluster.ports[2]
    name = f"127.0.0.1:{busy}"
    writer = cluster_writer(redis_cluster.url, ping_interval=0.05)
    admin = redis_cluster.node(busy)
    spin = threading.Thread(target=run_until_killed, args=(busy,), daemon=True)
    try:
        wait_for(lambda: writer.unanswered == {}, timeout=30)
        admin.config_set("busy-reply-threshold", 50)
        spin.start()
        wait_for(lambda: writer.unanswered, timeout=30)
        assert writer.unanswered == dict.fromkeys(redis_cluster.slots_of(busy), name)
        assert name in writer.heard_nodes and writer.connected and writer.failed_pings == 0
        admin.script_kill()
        wait_for(lambda: writer.unanswered == {}, timeout=30)
    finally:
        with contextlib.suppress(redis.RedisError):  # NOTBUSY: no script to kill
            admin.script_kill()
        spin.join(30)
        admin.config_set("busy-reply-threshold", 5000)
        writer.stop(0)
        admin.close()


def _held_round(writer: RedisWriter, left: dict[str, list[str]]) -> Batch:
    """As a round trip on a cluster leaves it: `left` (primary -> the keys
    it did not write, in that order) as one batch; "a" took writes (an
    earlier round), "p" answered "not now" this round, "d" did not answer."""
    writer.heard_nodes = {"a", "p"}
    writer._node_states = {"a": True}
    writer._round_tried, writer._round_heard = {"p", "d"}, {"p"}
    writer._round_failed = {"p", "d"}
    writer._left_slots = {key_slot(k.encode()): node for node, ks in left.items() for k in ks}
    keys = [k for ks in left.values() for k in ks]
    return Batch(keys, [1] * len(keys), [2] * len(keys))


def _slot_keys(prefix: str, count: int, taken: set[int]) -> list[str]:
    """`count` keys of slots none of `taken` (added to it)."""
    found: list[str] = []
    for i in itertools.count():
        key = f"{prefix}{i}"
        if (slot := key_slot(key.encode())) not in taken:
            taken.add(slot)
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError


def test_only_what_waits_for_a_silent_primary_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HELD_SHARE bounds what waits for primaries that do not answer (dead,
    or no primary), as docs/operations.md says: past it their oldest
    entries are given up, each counting its merged writes; what a primary
    answered "not now" is kept and takes no part of the share. Before, the
    whole of what was left was measured against the share, so "p"'s
    entries got "d"'s given up below it: all 9 of them, not 4, and all 5
    in the second round, not none."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    writer = RedisWriter(lambda: redis.Redis(), max_queue_ops=10)
    taken: set[int] = set()
    not_now, dead = _slot_keys("p", 6, taken), _slot_keys("d", 9, taken)
    left = writer._capped([_held_round(writer, {"p": not_now, "d": dead})])
    assert left is not None
    assert left[0].keys == not_now + dead[4:]  # "d"'s newest 5: HELD_SHARE of 10
    assert writer.stats.dropped_ops == 2 * 4
    assert len(caplog.records) == 1
    assert "ops=8 " in caplog.text and "waiting for d, which did not answer" in caplog.text
    # What "p" holds is no part of the share: nothing of it goes, however much.
    caplog.clear()
    many = _slot_keys("q", 20, taken)
    kept = [_held_round(writer, {"p": many, "d": dead[:5]})]
    assert writer._capped(kept) == kept
    assert writer.stats.dropped_ops == 2 * 4


def test_a_key_given_up_keeps_its_marks_while_an_entry_of_it_is_kept() -> None:
    """An append key with two members: the older one given up, the other
    still to go. Its "a lost call may have made it" mark stays, so its resend
    still asks the script for what a lost call made (the index); a key
    given up whole loses its marks."""
    writer = RedisWriter(lambda: redis.Redis(), max_queue_ops=2)
    taken: set[int] = set()
    (twice,), (once,) = _slot_keys("t", 1, taken), _slot_keys("o", 1, taken)
    batch = _held_round(writer, {"d": [once, twice, twice]})
    batch = Batch(batch.keys, ["m1", "m1", "m2"], [1, 1, 1])
    writer._lost_replies = dict.fromkeys([once, twice])
    left = writer._capped([batch])
    assert left is not None
    assert (left[0].keys, left[0].args) == ([twice], ["m2"])
    assert writer._lost_replies == {twice: None}


@pytest.mark.timeout(90)
def test_what_waits_for_a_primary_answering_not_now_is_kept(
    private_cluster: RedisCluster,
) -> None:
    """A primary at maxmemory answers every write OOM ("not now"): it
    answers, so what waits for it is no dead primary's and is not given up
    past HELD_SHARE while the others take writes; once it takes writes again
    every one is written. (HELD_SHARE's first version dropped all but half
    of max_queue_ops of it.)"""
    limit = 200
    writer = cluster_writer(private_cluster.url, flush_interval=0.01, max_queue_ops=limit)
    port = private_cluster.ports[1]
    try:
        keys = [client_key(f"10.200.80.{i // 250}.{i % 250}") for i in range(2000)]
        writer.extend(keys[:60], [1] * 60)  # every primary heard from
        wait_for(lambda: len(writer.heard_nodes) == 3, timeout=30)
        wait_for(lambda: writer.stats.written_ops == 60, timeout=30)
        theirs = private_cluster.slots_of(port)
        full = [key for key in keys[60:] if key_slot(key.encode()) in theirs][:150]
        with private_cluster.node(port) as node:
            node.config_set("maxmemory-policy", "noeviction")
            node.config_set("maxmemory", 1)
            writer.extend(full, [1] * len(full))
            wait_for(lambda: writer.stats.redis_not_now >= 3, timeout=30)
            assert writer.stats.dropped_ops == 0
            node.config_set("maxmemory", 0)
        total = 60 + len(full)
        wait_for(lambda: writer.stats.written_ops + writer.stats.dropped_ops == total,
                 timeout=30)  # fmt: skip
    finally:
        writer.stop(0)
    assert writer.stats.dropped_ops == 0
    with private_cluster.client() as admin:
        assert admin.mget_nonatomic(full) == ["1"] * len(full)


def test_writes_given_up_after_the_last_line_are_logged_as_the_writer_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line is at most once per DROP_LOG_INTERVAL: what is given up
    after it is said when the writer stops, as held-back refusals are, so
    the lines add up to what was given up. Before, it was never logged."""
    caplog.set_level(logging.ERROR, logger="pcapd.agents.store")
    writer = RedisWriter(lambda: redis.Redis(), max_queue_ops=10)
    taken: set[int] = set()
    for prefix in ("d", "e"):
        writer._capped([_held_round(writer, {"d": _slot_keys(prefix, 8, taken)})])
    writer.stop(0)
    said = [int(part[4:]) for part in caplog.text.split() if part.startswith("ops=")]
    assert writer.stats.dropped_ops == 2 * 2 * 3  # 3 of 8 entries past 5, twice
    assert said == [6, 6], caplog.text
    assert caplog.text.count("waiting for d, which did not answer; given up") == 2, caplog.text


def pause_a_primary(cluster: RedisCluster) -> int:
    """One primary stopped (SIGSTOP: its socket accepts, nothing answers),
    the others serving their own slots meanwhile: its port."""
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.config_set("cluster-require-full-coverage", "no")
    victim = cluster.ports[1]  # not the URL's seed
    cluster.procs[victim].send_signal(signal.SIGSTOP)
    return victim


def landing_gaps(writer: RedisWriter, keys: list[str], seconds: float) -> list[float]:
    """For `seconds`, `keys` counted again every 0.1 s: the gaps between the
    times the writer was seen to have written more (at least one gap)."""
    landed: list[float] = []
    written = writer.stats.written_ops
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writer.extend(keys, [1] * len(keys))
        time.sleep(0.1)
        if writer.stats.written_ops > written:
            written = writer.stats.written_ops
            landed.append(time.monotonic())
    assert len(landed) >= 2, landed
    return [b - a for a, b in itertools.pairwise(landed)]


@pytest.mark.timeout(120)
def test_a_silent_primary_costs_the_others_one_socket_timeout_not_one_per_retry(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary that stops answering (paused, or a partition) costs a round
    trip one socket timeout; after that it is PINGed on its own until it
    answers, so the other primaries' writes keep going meanwhile, and its
    held writes land once it is back. Before, each retry of its slots sent
    its writes in the same round trip as the others' and waited the whole
    timeout (10 s) again: the others' writes stalled 10 s every retry.
    The INCRs of the first round trip were written before the primary fell
    silent, their replies lost: it runs them once it continues, and their
    resend runs again (at least once, docs/architecture.md): 2 or 3 each."""
    caplog.set_level(logging.WARNING, logger="pcapd.agents.store")
    writer = cluster_writer(private_cluster.url, flush_interval=0.01)
    victim = 0
    try:
        keys = [client_key(f"10.200.81.{i}") for i in range(60)]
        writer.extend(keys, [1] * len(keys))
        wait_for(lambda: writer.stats.written_ops == 60, timeout=30)
        victim = pause_a_primary(private_cluster)
        theirs = private_cluster.slots_of(victim)
        silent = [key for key in keys if key_slot(key.encode()) in theirs]
        healthy = [key for key in keys if key_slot(key.encode()) not in theirs]
        writer.extend(silent, [1] * len(silent))
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)  # the first timeout
        gaps = landing_gaps(writer, healthy, 2.5 * SOCKET_TIMEOUT)
        assert max(gaps) < SOCKET_TIMEOUT / 4, gaps
        assert writer.unanswered and set(writer.unanswered.values()) == {f"127.0.0.1:{victim}"}
        assert "event=redis_probe_failed" in caplog.text
    finally:
        if victim:
            private_cluster.procs[victim].send_signal(signal.SIGCONT)
    try:
        wait_for(lambda: writer.queue_depth == 0 and not writer.unanswered, timeout=30)
    finally:
        writer.stop(30)
    assert writer.stats.dropped_ops == 0
    with private_cluster.client() as admin:
        assert set(admin.mget_nonatomic(silent)) <= {"2", "3"}

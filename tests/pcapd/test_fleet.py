"""The fleet view: three real `pcapd serve` daemons (one on the host, two in
network namespaces joined by a veth pair) beat into one private redis-server,
and `pcapd nodes` (a subprocess) lists them and judges requests, which the
daemons then really serve."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.config import DEFAULT_FLEET_PREFIX, ConfigError, parse_config
from pcapd.fleet import Heartbeat, NodeState, node_key, node_state
from tests.helpers import RedisServer, VethPair, needs_root, redis_server, veth_pair, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results

PREFIX = DEFAULT_FLEET_PREFIX
SUBNET = 60  # this file's veth subnet: 10.200.60.0/24
# s: fleet-c's heartbeat_interval; its hash outlives a SIGTERM's deletion by
# over 2 beats, and the outage below waits for its next beat
SLOW_BEAT = 4
MATCH_WORKERS = 4  # `pcapd nodes` commands at once: their start-up is CPU, on 2 cores


def nodes_cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "nodes", "--redis-url", server.url, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def listed(server: RedisServer) -> dict[str, dict[str, Any]]:
    done = nodes_cli(server, "--json")
    assert done.returncode == 0, done.stderr
    return {node["node"]: node for node in json.loads(done.stdout)}


def match_all(
    server: RedisServer, requests: list[dict[str, Any] | str]
) -> list[tuple[int, Any, str]]:
    """`pcapd nodes --json --match` for each request, the commands run side by
    side (each spends most of its second starting Python)."""

    def match(request: dict[str, Any] | str) -> tuple[int, Any, str]:
        body = request if isinstance(request, str) else json.dumps(request)
        done = nodes_cli(server, "--json", "--match", body)
        verdicts = json.loads(done.stdout) if done.stdout.strip() else None
        return done.returncode, verdicts, done.stderr

    with ThreadPoolExecutor(min(len(requests), MATCH_WORKERS)) as pool:
        return list(pool.map(match, requests))


@dataclass
class Fleet:
    server: RedisServer
    veth: VethPair
    daemons: dict[str, Daemon]
    results: Results


def interfaces(*tables: tuple[str, list[str]]) -> str:
    return "\n".join(
        f'[[interface]]\nname = "{name}"\nalias = {json.dumps(aliases)}\n'
        for name, aliases in tables
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    sock = tmp_path / "redis.sock"
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis", unixsocket=sock) as server, veth_pair(SUBNET) as veth:
        unix = f'url = "unix://{sock}"'
        # fleet-c beats slowly, so that "gone at once" cannot be its expiry.
        specs = {
            "fleet-a": ((), "", interfaces(("lo", ["local", "loop"]), ("ghost0", ["ghost"])), 1),
            "fleet-b": (("ip", "netns", "exec", veth.ns_a), unix,
                        interfaces(("lo", ["local"]), (veth.dev_a, ["public"])), 1),
            "fleet-c": (("ip", "netns", "exec", veth.ns_b), unix,
                        interfaces((veth.dev_b, ["public"]), ("lo", ["loop"])), SLOW_BEAT),
        }  # fmt: skip
        daemons: dict[str, Daemon] = {}
        results = Results(server)
        client = server.client()

        def all_subscribed() -> bool:  # (each `subscribed` fails at once if its daemon exited)
            return all(d.subscribed() for d in daemons.values()) and (
                client.pubsub_numsub("capture")[0][1] >= len(specs)
            )

        try:
            for node, (wrap, redis_extra, ifaces, interval) in specs.items():
                daemon = Daemon(
                    server, tmp_path / node, node=node, wrap=wrap, extra_redis=redis_extra,
                    interfaces=ifaces,
                    extra_sections=f"[fleet]\nheartbeat_interval = {interval}\n",
                )  # fmt: skip
                daemons[node] = daemon
                daemon.launch()  # the three start side by side
            wait_for(all_subscribed, timeout=45)
            yield Fleet(server, veth, daemons, results)
        finally:
            results.close()
            for daemon in daemons.values():
                daemon.stop()


BARRIER_ERROR = 'packets: expected a JSON integer, got "barrier"'


def served(fleet: Fleet, request: dict[str, Any] | str, request_id: str) -> dict[str, Any]:
    """What the daemons really did with `request` (`request_id` "" for a body
    with no id to read); see `served_all`."""
    return served_all(fleet, [(request, request_id)])[request_id]


def served_all(
    fleet: Fleet, requests: list[tuple[dict[str, Any] | str, str]]
) -> dict[str, dict[str, Any]]:
    """What the daemons really did with each request, by id:
    {(node, interface): status} for captures, {node: error} for rejections,
    warnings by node.

    The requests go out together, so their captures run side by side; a
    barrier request after them, which every node rejects at once, tells when
    each has handled them all (one pub/sub connection each, served in order);
    the captures they started are then in the logs, and their results awaited.
    Events are told apart by id, so only a lone request may have none."""
    ids = [request_id for _, request_id in requests]
    assert len(set(ids)) == len(ids) and (len(ids) == 1 or all(ids)), ids
    alive = {n for n, d in fleet.daemons.items() if d.proc is not None and d.proc.poll() is None}
    marks = {node: len(fleet.daemons[node].log()) for node in alive}
    client = fleet.server.client()
    for request, _ in requests:
        client.publish("capture", request if isinstance(request, str) else json.dumps(request))
    barrier = f"barrier-{ids[0]}"
    client.publish(
        "capture", json.dumps({"id": barrier, "node": "any", "interface": "lo",
                               "packets": "barrier"}),
    )  # fmt: skip

    def owner(event: dict[str, Any]) -> str:
        if len(ids) == 1:
            assert event["id"] == ids[0] or ids[0] == "", event
            return ids[0]
        assert event["id"] in ids, event
        return str(event["id"])

    events: dict[str, list[dict[str, Any]]] = {request_id: [] for request_id in ids}
    barriers: set[str] = set()
    deadline = time.monotonic() + 60
    while barriers != alive:
        event = fleet.results.next(max(0.1, deadline - time.monotonic()))
        if event["id"] == barrier:
            assert event["error"] == BARRIER_ERROR
            barriers.add(event["node"])
        else:
            events[owner(event)].append(event)

    def started() -> dict[str, set[tuple[str, str]]]:
        found: dict[str, set[tuple[str, str]]] = {request_id: set() for request_id in ids}
        for node in alive:
            text = fleet.daemons[node].log()[marks[node] :]
            for request_id in ids:
                for line in re.finditer(rf"event=capture_started id={re.escape(request_id)} .*?"
                                        r"interface=(\S+)", text):  # fmt: skip
                    found[request_id].add((node, line.group(1)))
        return found

    captured = {
        request_id: {(e["node"], e["interface"]): e for e in got if e["status"] != "rejected"}
        for request_id, got in events.items()
    }
    # A capture thread may log its start after the barrier's answer: the logs
    # are read again until every start seen has its result, for a while.
    settled = time.monotonic() + 1.0
    while any(not s <= captured[i].keys() for i, s in started().items()) or (
        time.monotonic() < settled
    ):
        assert time.monotonic() < deadline, (started(), captured)
        try:
            event = fleet.results.next(0.1)
        except AssertionError:  # none within the look
            continue
        if event["status"] != "rejected":
            captured[owner(event)][(event["node"], event["interface"])] = event
    answers = {}
    for request_id in ids:
        rejected = {e["node"]: e for e in events[request_id] if e["status"] == "rejected"}
        answered = [*captured[request_id].values(), *rejected.values()]
        answers[request_id] = {
            "captured": set(captured[request_id]),
            "rejected": {node: e["error"] for node, e in rejected.items()},
            "warnings": {e["node"]: sorted(e["warnings"]) for e in answered},
        }
    return answers


def predicted(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "captured": {(v["node"], i) for v in verdicts if v["verdict"] == "capture"
                     for i in v["interfaces"]},
        "rejected": {v["node"]: v["error"] for v in verdicts if v["verdict"] == "rejected"},
        "warnings": {v["node"]: sorted(v["warnings"]) for v in verdicts
                     if v["verdict"] != "silent"},
    }  # fmt: skip


@needs_root
@pytest.mark.timeout(300)
def test_fleet_lists_matches_and_forgets_nodes(fleet: Fleet) -> None:
    server, veth = fleet.server, fleet.veth
    wait_for(lambda: set(listed(server)) == set(fleet.daemons), timeout=30)
    # A link type is known once the pool opened a handle there, which may be
    # after a node's first beat.
    wait_for(lambda: all(i["linktype"] is not None for node in listed(server).values()
                         for i in node["interfaces"] if i["present"]), timeout=30)  # fmt: skip
    nodes = listed(server)
    a, b, c = nodes["fleet-a"], nodes["fleet-b"], nodes["fleet-c"]
    no_ring = {"lookback": 0, "lookback_bytes": 0, "ring": False, "ring_error": None}
    assert a["interfaces"] == [
        {"name": "lo", "aliases": ["local", "loop"], "linktype": 1, "present": True, **no_ring},
        {"name": "ghost0", "aliases": ["ghost"], "linktype": None, "present": False, **no_ring},
    ]
    assert b["interfaces"] == [
        {"name": "lo", "aliases": ["local"], "linktype": 1, "present": True, **no_ring},
        {"name": veth.dev_a, "aliases": ["public"], "linktype": 1, "present": True, **no_ring},
    ]
    assert [i["name"] for i in c["interfaces"]] == [veth.dev_b, "lo"]
    assert veth.dev_a in b["devices"] and veth.dev_a not in a["devices"] + c["devices"]
    for name, node in nodes.items():
        assert node["sources"] == ["redis-pubsub:capture"]
        assert node["version"] == "0.1.0" and node["captures"] == 0
        assert node["pid"] == fleet.daemons[name].proc.pid  # type: ignore[union-attr]
        assert node["started"] <= node["last_seen"] <= time.time() + 1
        assert node["general"]["node"] == name and node["general"]["maxpackets"] == 1000
    ttl = server.client().pttl(node_key(PREFIX, "fleet-a"))
    assert 0 < ttl <= 3000, "three missed beats of 1 s"
    table = nodes_cli(server)
    assert table.returncode == 0
    assert re.search(r"fleet-a .*redis-pubsub:capture\s+lo\[local,loop\]/dlt1 ghost0\[ghost\]"
                     r"\(missing\)", table.stdout), table.stdout  # fmt: skip

    # --match agrees with what the daemons then do, request by request (all
    # judged side by side, then all served together).
    bounds = {"timeout": 1, "duration": 2, "bpf": "udp port 9"}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"node": "fleet-b", "alias": "public"}, 0),
        ({"nodere": "^fleet-[ac]$", "interface": ["lo"]}, 0),
        ({"node": "any", "alias": "loop"}, 0),  # fleet-b has no such alias
        ({"node": "any", "interface": [veth.dev_a, veth.dev_b, "lo", "eth9"]}, 0),
        ({"node": "any", "interface": [veth.dev_a]}, 0),  # one node has it
        ({"node": "fleet-a", "interface": "eth9"}, 1),  # nobody has it
        ({"node": "nobody", "interface": "lo"}, 1),  # names no node
        ({"node": "any", "interface": "lo", "packets": "many"}, 2),  # malformed
        ({"node": "any", "interface": "lo", "packets": 5000}, 2),  # over maxpackets=1000
        ({"nodere": "(", "interface": "lo"}, 2),
    ]
    requests: list[dict[str, Any] | str] = [
        {**bounds, **fields, "id": f"req-{number}"} for number, (fields, _) in enumerate(cases)
    ]
    not_objects = ["[1, 2]", "{not json"]
    loop = {**bounds, "node": "any", "alias": "loop", "id": "x"}
    judged = match_all(server, [*requests, *not_objects, loop])
    answers = served_all(fleet, [(r, r["id"]) for r in requests if isinstance(r, dict)])
    for (_, status), request, (code, verdicts, stderr) in zip(
        cases, requests, judged[: len(cases)], strict=True
    ):
        assert isinstance(request, dict)
        assert code == status, (request, verdicts, stderr)
        assert {v["node"] for v in verdicts} == set(fleet.daemons)
        assert answers[request["id"]] == predicted(verdicts), request
    code, verdicts, stderr = judged[-1]
    assert {v["node"]: v["verdict"] for v in verdicts} == {
        "fleet-a": "capture", "fleet-b": "rejected", "fleet-c": "capture"}  # fmt: skip
    assert verdicts[1]["error"] == (
        "alias: none of ['loop'] exists on this node (alias 'loop': not configured on this node)"
    )
    # Not a JSON object: the message each daemon answers, and status 2.
    for body, (code, verdicts, stderr) in zip(not_objects, judged[len(cases) : -1], strict=True):
        assert code == 2 and verdicts is None
        answer = served(fleet, body, "")
        assert set(answer["rejected"]) == set(fleet.daemons)
        assert f"pcapd nodes: --match: {answer['rejected']['fleet-a']}\n" == stderr
    table = nodes_cli(server, "--match", json.dumps({"node": "any", "alias": "public"}))
    assert table.returncode == 0
    assert re.search(r"fleet-a\s+rejected\s+-\s+alias: none of \['public'\]", table.stdout)
    assert re.search(rf"fleet-c\s+capture\s+{veth.dev_b}\s*\n", table.stdout), table.stdout

    # Redis restarts (and forgets everything): every node beats again, and
    # says so once for the outage and once when it is back.
    server.stop()
    for daemon in fleet.daemons.values():
        wait_for(lambda d=daemon: "event=heartbeat_failed" in d.log(), timeout=30)
    time.sleep(3)  # an outage of several beats (and backoffs), logged once
    server.start()
    wait_for(lambda: set(listed(server)) == set(fleet.daemons), timeout=30)
    for daemon in fleet.daemons.values():
        wait_for(lambda d=daemon: "event=heartbeat_resumed" in d.log(), timeout=30)
        assert daemon.log().count("event=heartbeat_failed") == 1, daemon.log()

    # SIGTERM: gone at once, long before its hash (three slow beats) expires.
    c_daemon, c_key, client = fleet.daemons["fleet-c"], node_key(PREFIX, "fleet-c"), server.client()
    signalled, left = time.monotonic(), client.pttl(c_key) / 1000
    assert left > SLOW_BEAT
    c_daemon.signal(signal.SIGTERM)
    wait_for(lambda: not client.exists(c_key), timeout=30)
    assert time.monotonic() - signalled < left, "deleted, not expired"
    assert "fleet-c" not in listed(server)
    assert c_daemon.wait(30) == 0
    assert "event=heartbeat_removed key=pcapd:node:fleet-c" in c_daemon.log()

    # SIGKILL: still listed, then gone once three beats are missed.
    b_daemon = fleet.daemons["fleet-b"]
    b_daemon.signal(signal.SIGKILL)
    b_daemon.wait(10)
    assert "fleet-b" in listed(server)
    wait_for(lambda: "fleet-b" not in listed(server), timeout=15)
    assert set(listed(server)) == {"fleet-a"}


def test_an_unreadable_heartbeat_is_reported_and_the_rest_listed(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    client.hset(node_key(PREFIX, "broken"), mapping={"node": "broken", "interfaces": "[1"})
    client.set(node_key(PREFIX, "a-string"), "not a hash")
    done = nodes_cli(redis_srv, "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == []
    assert done.stderr == (
        "pcapd nodes: warning: pcapd:node:broken: not a heartbeat this version reads: "
        "Expecting ',' delimiter: line 1 column 3 (char 2)\n"
    )
    done = nodes_cli(redis_srv, "--match", '{"node": "any", "interface": "lo"}')
    assert done.returncode == 1 and "no node has a heartbeat" in done.stderr
    # Nested past what json reads: RecursionError, not a ValueError.
    client.hset(node_key(PREFIX, "broken"), "interfaces", "[" * 100_000)
    done = nodes_cli(redis_srv, "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
    assert done.stderr.startswith(
        "pcapd nodes: warning: pcapd:node:broken: not a heartbeat this version reads: "
        "maximum recursion depth exceeded"
    ), done.stderr


def test_nodes_takes_redis_and_prefix_from_the_config(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """`-c FILE`: its [redis] and [fleet] prefix, glob characters and all."""
    prefix = "lab[1]:"
    table = {"general": {"node": "n1", "maxpackets": 10}, "fleet": {"prefix": prefix},
             "interface": [{"name": "lo", "alias": ["local"]}],
             "security": {"require_signed": True, "keys": {"ops": "k" * 32}}}  # fmt: skip
    state = node_state(
        parse_config(table, "n1"), instance="i1", started=1.0, devices={"lo", "eth0"},
        linktypes={"lo": 1}, sources=["sqs"], captures=2, spool_files=1, spool_bytes=90,
    )  # fmt: skip
    client = redis_srv.client()
    client.hset(node_key(prefix, "n1"), mapping=state.to_hash())  # type: ignore[arg-type]
    client.hset(node_key("lab1:", "n2"), mapping=state.to_hash())  # type: ignore[arg-type]
    config = tmp_path / "pcapd.toml"
    config.write_text(f'[redis]\nurl = "{redis_srv.url}"\n[fleet]\nprefix = "{prefix}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pcapd", "nodes", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    done = run("--json")
    assert done.returncode == 0, done.stderr
    [node] = json.loads(done.stdout)
    assert node == json.loads(json.dumps(state.to_json()))
    assert (node["captures"], node["spool_files"], node["sources"]) == (2, 1, ["sqs"])
    signed = {"node": "n1", "alias": "local", "ts": 1, "kid": "ops", "sig": "0" * 64}
    done = run("--match", json.dumps(signed))  # (whether the signature holds: not judged)
    assert done.returncode == 0 and re.search(r"n1\s+capture\s+lo", done.stdout), done.stdout
    done = run("--json", "--match", '{"node": "n1", "alias": "local"}')
    assert done.returncode == 2
    assert json.loads(done.stdout)[0]["error"] == (
        "sig: missing; this node accepts only signed requests (require_signed)"
    )
    done = run("--json", "--match", '{"node": "n1", "interface": "lo", "packets": 11}')
    assert done.returncode == 2
    assert json.loads(done.stdout)[0]["error"] == "packets=11 exceeds maxpackets=10"


def test_nodes_quotes_an_alias_that_would_read_as_the_listing_itself(
    redis_srv: RedisServer,
) -> None:
    """An alias may hold what the INTERFACES column is written with (, [ ] ( )
    and spaces): such an alias is quoted, so "a,b" is not two aliases and
    "a](missing)" no device status. (One with a format character, a bidi
    override, does not load, nor does a heartbeat holding it.)"""
    aliases = ["local", "a,b", "a](missing)", "public facing", "", "it's"]
    table = {"general": {"node": "n1"}, "interface": [{"name": "lo", "alias": aliases}]}
    state = node_state(
        parse_config(table, "n1"), instance="i1", started=1.0, devices={"lo"},
        linktypes={"lo": 1}, sources=["sqs"], captures=0,
    )  # fmt: skip
    redis_srv.client().hset(node_key(PREFIX, "n1"), mapping=state.to_hash())  # type: ignore[arg-type]
    done = nodes_cli(redis_srv)
    assert done.returncode == 0, done.stderr
    shown = "lo[local,'a,b','a](missing)','public facing','',\"it's\"]/dlt1"
    assert done.stdout.splitlines()[1].endswith(f" sqs      {shown}"), done.stdout


def test_nodes_writes_a_heartbeat_s_control_characters_escaped(redis_srv: RedisServer) -> None:
    """Any Redis client may write a heartbeat: a hostname or version holding
    an escape sequence or a newline is shown quoted with its escapes."""
    table = {"general": {"node": "n1"}, "interface": [{"name": "lo"}]}
    state = node_state(
        parse_config(table, "n1"), instance="i1", started=1.0, devices={"lo"},
        linktypes={"lo": 1}, sources=["sqs"], captures=0,
    )  # fmt: skip
    beat = state.to_hash() | {"hostname": "h\x1b]0;pwned\x07", "version": "1\nn2"}
    redis_srv.client().hset(node_key(PREFIX, "n1"), mapping=beat)  # type: ignore[arg-type]
    done = nodes_cli(redis_srv)
    assert done.returncode == 0, done.stderr
    [_header, row] = done.stdout.splitlines()
    assert row.split()[:3] == ["n1", "'1\\nn2'", "'h\\x1b]0;pwned\\x07'"], row
    assert "\x1b" not in done.stdout


def test_nodes_help_states_the_exit_statuses() -> None:
    done = subprocess.run([sys.executable, "-m", "pcapd", "nodes", "--help"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0
    assert "exit status: 0 listed (with --match: at least one node would capture);" in done.stdout
    assert "2 a malformed request" in done.stdout


def test_nodes_says_when_redis_is_away(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        url = server.url
    done = subprocess.run([sys.executable, "-m", "pcapd", "nodes", "--redis-url", url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"pcapd nodes: Redis at {url}: Error 111 connecting")


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"heartbeat_interval": 0.1},
         "fleet.heartbeat_interval: must be at least 0.5 and at most 3600.0, got 0.1"),
        ({"prefix": ""}, "fleet.prefix: '' must be 1 to 64 characters"),
    ],
)  # fmt: skip
def test_fleet_config_errors_name_the_field(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"fleet": table}, hostname="n")
    assert caught.value.errors == [error]


def test_two_daemons_with_one_node_name_are_told_and_keep_the_last_beat(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The second finds the first's instance in the hash and says so; the
    first, stopping, does not delete the hash the second wrote last."""
    caplog.set_level(logging.INFO, logger="pcapd.fleet")
    config = parse_config({"fleet": {"heartbeat_interval": 600}}, "twin")  # one beat each

    def beat() -> Heartbeat:
        heartbeat = Heartbeat(redis_srv.client, config.fleet, "twin", lambda: state(heartbeat))
        return heartbeat

    def state(heartbeat: Heartbeat) -> NodeState:
        return node_state(config, instance=heartbeat.instance, started=0.0, devices={"lo"},
                          linktypes={}, sources=[], captures=0)  # fmt: skip

    key = node_key(PREFIX, "twin")
    client = redis_srv.client()
    first, second = beat(), beat()
    try:
        first.start()
        wait_for(lambda: client.hget(key, "instance") == first.instance.encode())
        second.start()
        wait_for(lambda: client.hget(key, "instance") == second.instance.encode())
        wait_for(lambda: "event=node_name_conflict" in caplog.text)
        assert f"other_instance={first.instance}" in caplog.text
        assert 1_790_000 < client.pttl(key) <= 1_800_000, "three beats of 600 s"
        first.stop()
        assert client.hget(key, "instance") == second.instance.encode()
        assert "event=heartbeat_kept key=pcapd:node:twin" in caplog.text
    finally:
        second.stop()
        first.stop()
    assert client.exists(key) == 0

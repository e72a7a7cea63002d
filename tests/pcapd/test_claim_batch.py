"""Claims of many threads batched into one round trip, with every thread's
own answer; on a cluster, pipelined per primary with the answers one by one
would give."""

from __future__ import annotations

import contextlib
import threading

from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from pcapd.claim_batch import CLAIM, SERVED, ClaimBatcher
from pcapd.dedup import RedisSeen
from tests.helpers import RedisCluster, RedisServer
from tests.pcapd.test_dedup import redis_seen


def test_claims_from_many_threads_at_once_each_get_their_own_answer(
    redis_srv: RedisServer,
) -> None:
    seen = redis_seen(redis_srv)
    client = redis_srv.client()
    client.set("t:seen:id:n1:old", "served", ex=60)
    client.set("t:seen:id:n1:dead", "an-instance-that-died", ex=60)
    client.script_flush()  # as after a Redis restart: the batch loads the script again
    keys = [f"k{n}" for n in range(40)] + ["dead", "old"]
    answers: dict[str, bool] = {}
    go = threading.Barrier(len(keys))

    def claim(key: str) -> None:
        go.wait()
        answers[key] = seen.claim_soon(key).wait()

    threads = [threading.Thread(target=claim, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {**dict.fromkeys(keys[:-1], False), "old": True}
    assert client.get("t:seen:id:n1:dead") == seen.instance.encode()  # taken over
    assert client.get("t:seen:id:n1:k7") == seen.instance.encode()
    assert 0 < client.ttl("t:seen:id:n1:k7") <= 60
    ticket = seen.claim_soon("k7")  # this process's own claim: taken
    assert ticket.wait() is True and ticket.taken_now() is True
    assert seen.claim("k7") is True and seen.claim("k41") is False  # from this thread


def cluster_seen(client: ClusterClient) -> RedisSeen:
    return RedisSeen(client, prefix="t:seen:", kind="id", node="n1", window_seconds=60)


def test_a_batch_across_slots_answers_as_one_by_one(redis_cluster: RedisCluster) -> None:
    """On a 3-primary cluster, claims of keys on every primary, some served,
    some left by a dead instance, some this process's own, in batches from
    many threads, after the scripts were flushed: each answer, and what
    Redis holds after, is what claiming them one at a time gives."""
    keys = [f"k{n}" for n in range(30)] + [f"old{n}" for n in range(6)] + [
        f"dead{n}" for n in range(6)
    ]  # fmt: skip
    with contextlib.ExitStack() as clients:
        client, batched, alone = (clients.enter_context(redis_cluster.client()) for _ in range(3))
        slots = {client.cluster_keyslot(f"t:seen:id:n1:{key}") for key in keys}
        assert all(slots & redis_cluster.slots_of(port) for port in redis_cluster.ports)
        across_slots(
            client, keys, {"batch": cluster_seen(batched), "one by one": cluster_seen(alone)}
        )


def across_slots(client: ClusterClient, keys: list[str], seen: dict[str, RedisSeen]) -> None:
    """The same state prepared twice: claimed in batches by `seen["batch"]`,
    one at a time by `seen["one by one"]`."""

    def prepare(instance: str) -> None:
        client.flushall()
        client.script_flush()  # as after a restart: the batch loads it again
        for n in range(6):
            client.set(f"t:seen:id:n1:old{n}", "served", ex=60)
            client.set(f"t:seen:id:n1:dead{n}", "an-instance-that-died", ex=60)
        for n in range(0, 30, 3):
            client.set(f"t:seen:id:n1:k{n}", instance, ex=60)  # claimed by this process

    answers: dict[str, dict[str, bool]] = {"batch": {}, "one by one": {}}
    held: dict[str, dict[str, object]] = {}
    prepare(seen["batch"].instance)
    go = threading.Barrier(len(keys))

    def claim(key: str) -> None:
        go.wait()
        answers["batch"][key] = seen["batch"].claim_soon(key).wait()

    threads = [threading.Thread(target=claim, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    held["batch"] = {key: client.get(f"t:seen:id:n1:{key}") for key in keys}
    prepare(seen["one by one"].instance)
    for key in keys:
        answers["one by one"][key] = seen["one by one"].claim(key)
    held["one by one"] = {key: client.get(f"t:seen:id:n1:{key}") for key in keys}
    assert answers["batch"] == answers["one by one"]
    assert sorted(k for k, taken in answers["batch"].items() if taken) == sorted(
        [f"old{n}" for n in range(6)] + [f"k{n}" for n in range(0, 30, 3)]
    )

    def mine(values: dict[str, object], instance: str) -> dict[str, object]:
        return {k: "mine" if v == instance else v for k, v in values.items()}

    assert mine(held["batch"], seen["batch"].instance) == mine(
        held["one by one"], seen["one by one"].instance
    )


def test_a_primary_that_does_not_answer_fails_only_its_own_claims(
    private_cluster: RedisCluster,
) -> None:
    """Claims across all three primaries, one of them killed: its claims get
    an error (the seen set then falls back to memory), the others their
    answers, served ones taken."""
    dead = private_cluster.ports[2]
    on_dead = private_cluster.slots_of(dead)
    keys = [f"t:seen:id:n1:k{n}" for n in range(30)]
    with private_cluster.client() as client:
        batcher = ClaimBatcher(client, "me", 60, "test-claims")
        for key in keys:
            client.set(key, SERVED, ex=60)
        lost = {key for key in keys if client.cluster_keyslot(key) in on_dead}
        assert lost and len(lost) < len(keys)
        private_cluster.kill(dead)
        claims = [batcher.send(key) for key in keys]
        for claim in claims:
            assert claim.done.wait(30)
    assert {c.key for c in claims if c.error is not None} == lost
    assert all(c.taken for c in claims if c.key not in lost)


def test_a_failed_script_load_fails_only_that_node_s_claims(redis_cluster: RedisCluster) -> None:
    """The script flushed everywhere, and one primary refuses SCRIPT LOAD and
    EVAL (an ACL of that node alone; as a node that dies between NOSCRIPT
    and the load): its claims get that error, the other primaries' claims
    their answers. (With EVAL allowed there, EVAL carries the script.)"""
    refusing = redis_cluster.ports[0]
    for port in redis_cluster.ports:
        denied = ["-script|load", "-eval"] if port == refusing else []
        redis_cluster.node(port).acl_setuser(
            "claims", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
            commands=["+@all", *denied],
        )  # fmt: skip
    on_refusing = redis_cluster.slots_of(refusing)
    keys = [f"t:seen:id:n1:k{n}" for n in range(30)]
    admin = redis_cluster.client()
    with ClusterClient(host="127.0.0.1", port=refusing, username="claims", password="pw") as client:
        batcher = ClaimBatcher(client, "me", 60, "test-claims")
        for key in keys:
            admin.set(key, SERVED, ex=60)
        for port in redis_cluster.ports:
            redis_cluster.node(port).script_flush()
        claims = [batcher.send(key) for key in keys]
        for claim in claims:
            assert claim.done.wait(30)
    admin.close()
    refused = {key for key in keys if key_slot(key.encode()) in on_refusing}
    assert refused and len(refused) < len(keys)
    assert {c.key for c in claims if c.error is not None} == refused
    assert all("NOPERM" in str(c.error) or "permission" in str(c.error) for c in claims
               if c.error is not None)  # fmt: skip
    assert all(c.taken for c in claims if c.key not in refused)


def test_an_ask_target_without_the_script_gets_it(redis_cluster: RedisCluster) -> None:
    """A slot being migrated, the claim's key not on its old owner (which
    answers ASK), the new owner without the script: loaded there too, the
    claim is answered."""
    key = "t:seen:id:n1:asked"
    slot = key_slot(key.encode())
    with redis_cluster.client() as client:
        batcher = ClaimBatcher(client, "me", 60, "test-claims")
        source = client.get_node_from_key(key).port
        target = next(port for port in redis_cluster.ports if port != source)
        ids = {port: str(redis_cluster.node(port).cluster("MYID")) for port in (source, target)}
        for port in redis_cluster.ports:
            redis_cluster.node(port).script_load(CLAIM)
        redis_cluster.node(target).cluster("SETSLOT", slot, "IMPORTING", ids[source])
        redis_cluster.node(source).cluster("SETSLOT", slot, "MIGRATING", ids[target])
        try:
            redis_cluster.node(target).script_flush()
            claim = batcher.send(key)
            assert claim.done.wait(30)
        finally:  # end the migration: the shared cluster stays whole
            for port in redis_cluster.ports:
                redis_cluster.node(port).cluster("SETSLOT", slot, "NODE", ids[target])
    assert claim.error is None and claim.taken is False
    assert redis_cluster.node(target).get(key) == "me"

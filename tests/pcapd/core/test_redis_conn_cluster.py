"""Connecting to a real 3-primary Redis Cluster from `[redis]`: seeds, URL, ACL."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect, node_for_channel, primaries, publish
from pcapd.core.redis_errors import error_code, refusal
from pcapd.core.redis_slots import same_slot_prefix, send_by_slot
from pcapd.core.secret import Secret
from tests.helpers import RedisCluster


def test_every_spelling_of_a_cluster_reaches_all_three_primaries(
    redis_cluster: RedisCluster,
) -> None:
    port = redis_cluster.ports[0]
    spellings = [
        RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes)),
        RedisConfig(cluster=True, host="127.0.0.1", port=port),
        RedisConfig(url=Secret(redis_cluster.url)),
        RedisConfig(cluster=True, url=Secret(f"redis://127.0.0.1:{port}/0")),
        # A dead seed first: the next one answers.
        RedisConfig(cluster=True, nodes=("127.0.0.1:1", *redis_cluster.nodes)),
    ]
    for config in spellings:
        client = connect(config)
        assert isinstance(client, ClusterClient), config.describe()
        assert len(list(primaries(client))) == 3
        for i in range(30):  # keys on every primary, through MOVED-free routing
            client.set(f"k{i}", i)
        assert sum(int(node.dbsize()) for node in primaries(client)) == 30
        client.flushall()
        client.close()


def test_a_single_server_stays_a_plain_client(redis_srv: object) -> None:
    port = redis_srv.port  # type: ignore[attr-defined]
    client = connect(RedisConfig(port=port))
    assert isinstance(client, redis.Redis)
    assert list(primaries(client)) == [client]
    assert node_for_channel(client, "capture", sharded=True) is client


def test_acl_user_on_a_cluster(redis_cluster: RedisCluster) -> None:
    for port in redis_cluster.ports:
        redis_cluster.node(port).acl_setuser(
            "agent", enabled=True, passwords=["+agentpw"], commands=["+@all"], keys=["*"],
            channels=["*"],
        )  # fmt: skip
    by_fields = RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes), username="agent",
                            auth=Secret("agentpw"))  # fmt: skip
    port = redis_cluster.ports[1]
    by_url = RedisConfig(url=Secret(f"redis+cluster://agent:agentpw@127.0.0.1:{port}"))
    for config in (by_fields, by_url):
        client = connect(config)
        assert {node.acl_whoami() for node in primaries(client)} == {"agent"}
        assert "agentpw" not in config.describe()


def test_sharded_channel_lives_on_the_primary_owning_its_slot(
    redis_cluster: RedisCluster,
) -> None:
    client = connect(RedisConfig(url=Secret(redis_cluster.url)))
    assert isinstance(client, ClusterClient)
    owner = client.get_node_from_key("capture")  # type: ignore[no-untyped-call]
    node = node_for_channel(client, "capture", sharded=True)
    assert node.connection_pool.connection_kwargs["port"] == owner.port
    pubsub = node.pubsub()
    pubsub.ssubscribe("capture")
    assert pubsub.get_message(timeout=5)["type"] == "ssubscribe"
    assert publish(client, "capture", b"hello", sharded=True) == 1
    message = pubsub.get_message(timeout=5)
    assert message["type"] == "smessage" and message["data"] == b"hello"
    # A plain channel reaches a subscriber on any node, from any node.
    plain = node_for_channel(client, "capture-results", sharded=False).pubsub()
    plain.subscribe("capture-results")
    assert plain.get_message(timeout=5)["type"] == "subscribe"
    publish(client, "capture-results", b"done", sharded=False)
    assert plain.get_message(timeout=5)["data"] == b"done"


@pytest.mark.parametrize("key", ["capture-results", "a{tag}b", "a{b", "a{}b", "x}y", "}{", "{}"])
def test_same_slot_prefix_keeps_the_keys_slot(redis_cluster: RedisCluster, key: str) -> None:
    """As the servers count slots (CLUSTER KEYSLOT), not only as redis-py does."""
    client = redis_cluster.client()
    prefix = same_slot_prefix(key)
    try:
        for suffix in (":event:1", ":event:ffff"):
            assert client.cluster_keyslot(prefix + suffix) == client.cluster_keyslot(key)
    finally:
        client.close()


def test_moved_is_for_good_on_a_plain_client_only(redis_cluster: RedisCluster) -> None:
    """One server's client never follows MOVED: resending is pointless; a
    cluster client's MOVED is a slot on its way elsewhere."""
    key = "k"
    owner = next(
        p for p in redis_cluster.ports if key_slot(key.encode()) in redis_cluster.slots_of(p)
    )
    other = next(p for p in redis_cluster.ports if p != owner)
    with redis_cluster.node(other) as node, pytest.raises(redis.ResponseError) as caught:
        node.get(key)
    assert error_code(caught.value) == "MOVED"
    assert refusal(caught.value, cluster=False) == (
        f"MOVED {caught.value}: a cluster node: use redis+cluster://"
    )
    assert refusal(caught.value, cluster=True) is None


def test_an_asked_command_s_reply_read_stands_when_the_connection_then_fails(
    redis_cluster: RedisCluster,
) -> None:
    """A slot being migrated (MIGRATING on its owner, IMPORTING on another
    primary): its owner answers ASK for keys it does not hold, and
    `send_by_slot` sends them to the importing node after ASKING. There an
    INCRBY is answered, then a BLPOP blocks past the socket timeout: the
    INCRBY's reply is kept (never sent again: counted twice), the BLPOP's
    is the timeout, for its caller to send again."""
    key = "{ask}n"
    slot = key_slot(key.encode())
    owner = next(p for p in redis_cluster.ports if slot in redis_cluster.slots_of(p))
    target = next(p for p in redis_cluster.ports if p != owner)
    source, importing = redis_cluster.node(owner), redis_cluster.node(target)
    client = connect(RedisConfig(cluster=True, nodes=tuple(redis_cluster.nodes)),
                     socket_timeout=1)  # fmt: skip
    try:
        importing.cluster("SETSLOT", slot, "IMPORTING", source.cluster("MYID"))
        source.cluster("SETSLOT", slot, "MIGRATING", importing.cluster("MYID"))
        assert isinstance(client, ClusterClient)
        replies = send_by_slot(client, [(slot, ("INCRBY", key, 5)), (slot, ("BLPOP", "{ask}l", 0))])
        assert replies[0] == 5 and isinstance(replies[1], redis.TimeoutError), replies
        asked = importing.pipeline(transaction=False)  # one connection: ASKING, then GET
        asked.execute_command("ASKING")  # type: ignore[no-untyped-call]
        asked.get(key)
        assert asked.execute() == [True, "5"]  # the INCRBY ran there, once
    finally:
        for node in (source, importing):
            node.cluster("SETSLOT", slot, "STABLE")
            node.close()
        client.close()

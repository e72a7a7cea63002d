"""Claims of many threads batched into one round trip, with every thread's
own answer; on a cluster, pipelined per primary with the answers one by one
would give."""

from __future__ import annotations

import threading

from tests.helpers import RedisServer
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

"""The results thread's CPU per result (pcapd/core/results.py), against
redis-py's pipeline sending the same commands, on one private redis-server.

Each result is what the daemon sends: PUBLISH to the results channel, the
stream's add-once script, and the request's `served` mark (SET XX KEEPTTL,
queued with `later`). pcapd's publisher packs a batch (SEND_BATCH results)
as RESP and reads the replies with hiredis (pcapd/core/result_send.py,
EVALSHA); the peer is redis-py's pipeline with the same commands (EVAL, as
the publisher sent them before), `execute(raise_on_error=False)` per batch.
Both run in a thread of their own and are timed by that thread's CPU
(/proc/self/task/<tid>/schedstat), the JSON of each event included; the
results are queued before the thread starts, so every batch is full. Best
of `--repeat` runs, taken in turn.

`--cluster`: a 3-primary Redis Cluster; pcapd sends per hash slot (one
pipeline per primary, `redis_scripts.evalsha_by_slot`), the peer one command
at a time through redis-py's cluster client (its pipeline refuses PUBLISH),
as the publisher did before.

Run: `.venv/bin/python bench/result_publish.py [--results N] [--repeat N] [--cluster]`.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib

from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import connect
from pcapd.core.result_send import ADD_ONCE, Commands, event_mark_key, with_event_id
from pcapd.core.results import MAX_PENDING, SEND_BATCH, ResultPublisher
from pcapd.core.secret import Secret

WAIT = 120.0  # s for one run's results to be in the stream


def thread_cpu(tid: int) -> float:
    """CPU seconds thread `tid` of this process ran (ns in schedstat)."""
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9


def results(count: int) -> list[ResultEvent]:
    return [
        with_event_id(ResultEvent(id=f"r{n}", node="n1", status="ok", interface="lo",
                                  packets=n, bytes=64 * n, sha256="0" * 64))
        for n in range(count)
    ]  # fmt: skip


def served(n: int) -> tuple[str, tuple[str, ...]]:
    key = f"pcapd:seen:id:n1:r{n}"
    return key, ("SET", key, "served", "XX", "KEEPTTL")


def run_pcapd(client: Any, config: RedisConfig, count: int) -> float:
    """The publisher's thread CPU for `count` results and their marks."""
    client.flushall()
    pub = ResultPublisher(lambda: connect(config), config)
    for n, event in enumerate(results(count)):
        # Queued before the thread starts (as a storm leaves them): full batches.
        pub._queue((event, None))
        pub._queue((Commands((served(n),)), None))
    pub.start()
    assert pub._thread is not None and pub._thread.native_id is not None
    tid = pub._thread.native_id
    began = thread_cpu(tid)
    benchlib.wait_until("pcapd's results", lambda: pub.queue_depth == 0, WAIT)
    spent = thread_cpu(tid) - began
    pub.stop(10)
    if client.xlen(config.results_stream) != count:
        raise benchlib.BenchError("pcapd's publisher lost results")
    return spent / count


def run_peer(client: Any, config: RedisConfig, count: int) -> float:
    """redis-py: the same commands in a pipeline per SEND_BATCH results on
    one server; on a cluster, whose pipeline refuses PUBLISH, one command
    at a time (as the publisher sent them before)."""
    client.flushall()
    events = results(count)
    spent: list[float] = []
    stream = config.results_stream

    def add(target: Any, n: int) -> None:
        """Result `n`'s commands on a client (run at once) or a pipeline."""
        event = events[n]
        body, event_id = event.to_json(), str(event.event_id)
        target.publish(config.results_channel, body)
        mark = event_mark_key(stream, event_id)
        target.eval(ADD_ONCE, 2, stream, mark, event_id, config.results_stream_maxlen,
                    body, config.results_dedup_window)  # fmt: skip
        target.set(served(n)[0], "served", xx=True, keepttl=True)

    def send() -> None:
        tid = threading.get_native_id()
        began = thread_cpu(tid)
        own = connect(config)
        for start in range(0, count, SEND_BATCH):
            if config.clustered:  # one command at a time
                for n in range(start, min(count, start + SEND_BATCH)):
                    add(own, n)
                continue
            pipe = own.pipeline(transaction=False)
            for n in range(start, min(count, start + SEND_BATCH)):
                add(pipe, n)
            pipe.execute(raise_on_error=False)
        spent.append(thread_cpu(tid) - began)
        own.close()

    thread = threading.Thread(target=send)
    thread.start()
    thread.join(WAIT)
    if not spent or client.xlen(config.results_stream) != count:
        raise benchlib.BenchError("redis-py lost results")
    return spent[0] / count


def json_cost(count: int) -> float:
    """CPU per event of its JSON alone, which both sides pay."""
    events = results(count)
    began = time.thread_time()
    for event in events:
        event.to_json()
    return (time.thread_time() - began) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Each result queues two items (it and its mark): at most MAX_PENDING held.
    parser.add_argument("--results", type=int, default=MAX_PENDING // 2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="a 3-primary Redis Cluster")
    args = parser.parse_args()
    if not 0 < args.results <= MAX_PENDING // 2:
        parser.error(f"--results={args.results} must be 1..{MAX_PENDING // 2} (MAX_PENDING / 2)")
    benchlib.require(["redis-server"])
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        if args.cluster:
            url = stack.enter_context(benchlib.redis_cluster(Path(workdir)))
            config = RedisConfig(url=Secret(url), results_stream_maxlen=args.results)
        else:
            server = stack.enter_context(benchlib.redis_server(Path(workdir)))
            port = server.connection_pool.connection_kwargs["port"]
            config = RedisConfig(port=port, results_stream_maxlen=args.results)
        client = stack.enter_context(contextlib.closing(connect(config)))
        ours, peer, json = [], [], []
        for _ in range(args.repeat):
            ours.append(run_pcapd(client, config, args.results))
            peer.append(run_peer(client, config, args.results))
            json.append(json_cost(args.results))
            time.sleep(0.1)
    best, floor, encode = min(ours), min(peer), min(json)
    where = "a 3-primary cluster" if args.cluster else "one server"
    print(f"results thread CPU per result (+ served mark), {args.results} results on "
          f"{where}, best of {args.repeat}:")  # fmt: skip
    print(f"  pcapd packed RESP   {best * 1e6:6.1f} us")
    peer_name = "redis-py, one by one" if args.cluster else "redis-py pipeline"
    print(f"  {peer_name:20s}{floor * 1e6:6.1f} us")
    print(f"  ratio pcapd/redis-py {best / floor:.2f}")
    print(
        f"  of each, the event's JSON {encode * 1e6:.1f} us; without it: pcapd "
        f"{(best - encode) * 1e6:.1f} us, redis-py {(floor - encode) * 1e6:.1f} us, "
        f"ratio {(best - encode) / (floor - encode):.2f}"
    )


if __name__ == "__main__":
    main()

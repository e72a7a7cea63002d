"""The batched writer's round trips on a real redis-server: one call per
attempt (no hidden retries), and no extra command per send."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import redis

from agents.dnstap.config import parse_dnstap_config
from agents.dnswire.config import parse_dnswire_config
from agents.flow.config import parse_flow_config
from agents.metrics import ACCESS_REFUSED_S, writer_check
from agents.redis_replies import lost_in_flight
from agents.redis_send import WriterStats
from agents.redis_writer import RedisWriter, dropped_status, make_writer
from agents.store import APPEND_SCRIPT
from agents.writer_settings import DEFAULT_FLUSH_INTERVAL
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret
from tests.agents.writes import (
    ACL_PASSWORD,
    ACL_USER,
    record_answer,
    record_nxdomain,
)
from tests.helpers import RedisServer, documented_acl, run_until_killed, set_acl_user, wait_for

HUGE = 30_000_000  # bytes: appending to such a value outlasts the socket timeout
TIMEOUT = 0.005  # s, the writer's socket timeout


def calls(admin: redis.Redis, command: str) -> int:
    stats = admin.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_a_timed_out_call_is_sent_once_per_attempt(private_redis: RedisServer) -> None:
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.set("10.0.0.1;192.0.2.1;dns", "x" * HUGE)  # the script's find takes a while
    admin.script_load(APPEND_SCRIPT)
    writer = RedisWriter(
        lambda: redis.Redis(port=private_redis.port, socket_timeout=TIMEOUT), flush_interval=0.02
    )
    writer.start()
    try:
        for _ in range(100):
            writer.incr("client;10.0.0.1")  # one INCRBY 100, in the slow round trip
        writer.append("10.0.0.1;192.0.2.1;dns", "new.example.")
        wait_for(lambda: writer.stats.redis_errors >= 3, timeout=30)
    finally:
        writer.stop(0)
    admin.ping()  # Redis is done with what was sent
    attempts = writer.stats.redis_errors + (1 if writer.stats.written_ops else 0)
    sent = calls(admin, "evalsha")
    # Each of the writer's attempts ran at most once in Redis: redis-py does
    # not resend on its own. At least once: a call whose reply was lost ran.
    assert 1 <= sent <= attempts
    assert int(admin.get("client;10.0.0.1") or 0) == 100 * sent
    admin.close()


def test_a_send_is_evalsha_alone_and_a_missing_script_is_loaded(
    private_redis: RedisServer,
) -> None:
    """No SCRIPT EXISTS before each send (redis-py's Script object asks it):
    one SCRIPT LOAD when Redis lacks the script, at the start and after a
    SCRIPT FLUSH, and the call that met NOSCRIPT sent again."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=5),
                         flush_interval=0.01)  # fmt: skip
    writer.start()
    try:
        for rounds in (1, 2):
            for send in range(10):
                writer.extend([f"c;{rounds};{send};{i};dns" for i in range(300)], ["m."] * 300)
                writer.flush()
                want = 300 * (10 * rounds - 9 + send)
                wait_for(lambda want=want: writer.stats.written_ops == want)
            assert calls(admin, "script|load") == rounds  # once per load needed
            assert calls(admin, "script|exists") == 0
            admin.script_flush()
    finally:
        writer.stop(5)
    assert writer.stats.written_ops == 6000 and writer.stats.dropped_ops == 0
    assert admin.get("c;2;9;299;dns") == ";m.;"
    admin.close()


def stopped_mid_round_trip(
    server: RedisServer, admin: redis.Redis, socket_timeout: float, net: int
) -> tuple[RedisWriter, list[str]]:
    """A writer stopped (stop(0.2)) while Redis holds its round trip of 50
    new counters (CLIENT PAUSE WRITE, 8 s), after one written: the writer,
    and the 50 keys."""
    writer = RedisWriter(lambda: redis.Redis(port=server.port, socket_timeout=socket_timeout),
                         flush_interval=0.01)  # fmt: skip
    writer.start()
    writer.incr(f"client;10.0.{net}.0")
    wait_for(lambda: writer.stats.written_ops == 1)
    admin.client_pause(8000, all=False)  # writes wait; this PING and the test's reads do not
    keys = [f"client;10.0.{net}.{index}" for index in range(1, 51)]
    for key in keys:
        writer.incr(key)
    writer.flush()
    # The round trip is under way: Redis holds the writer's connection.
    wait_for(lambda: int(admin.info("clients")["blocked_clients"]) >= 1)
    writer.stop(0.2)
    return writer, keys


def test_stop_during_a_round_trip_counts_each_write_once(private_redis: RedisServer) -> None:
    """stop() is called while Redis holds the round trip (longer than
    stop's timeout, shorter than the socket timeout): it waits for the
    replies, so the counts are final, each write counted once, when it
    returns."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer, keys = stopped_mid_round_trip(private_redis, admin, 30, 6)
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (51, 0)
    assert writer.stats.queued_ops == 51 and writer.queue_depth == 0
    assert writer._thread is not None and not writer._thread.is_alive()
    assert dropped_status(writer, "test") == 0
    assert admin.mget(keys) == ["1"] * 50
    admin.close()


def test_stop_past_the_socket_timeout_counts_the_round_trip_as_dropped(
    private_redis: RedisServer,
) -> None:
    """Redis holds the round trip longer than the socket timeout: when
    stop() returns, what it carried is counted as dropped, and a file
    reader's exit status says keys were lost."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer, _keys = stopped_mid_round_trip(private_redis, admin, 3, 7)
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (1, 50)
    assert writer._thread is not None and not writer._thread.is_alive()
    assert dropped_status(writer, "test") == 1
    admin.client_unpause()
    admin.close()


class HeldAfterRoundTrip(RedisWriter):
    """The sender held (2 s) right after a round trip Redis answered, as a
    loaded machine may preempt it: there stop()'s join times out."""

    hold = False

    @property
    def connected(self) -> bool:
        return self._up

    @connected.setter
    def connected(self, up: bool) -> None:
        self._up = up
        if up and self.hold:
            time.sleep(2.0)


def test_stop_while_the_sender_settles_an_answered_round_trip(
    private_redis: RedisServer,
) -> None:
    """What Redis answered is counted written once, never dropped too, and
    the sender ends cleanly: stop() cannot clear the queue between the
    round trip's settling and its batches leaving the queue."""
    errors: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    writer = HeldAfterRoundTrip(lambda: redis.Redis(port=private_redis.port, socket_timeout=5),
                                flush_interval=0.01)  # fmt: skip
    try:
        writer.start()
        writer.incr("client;10.0.8.0")
        wait_for(lambda: writer.stats.written_ops == 1)
        writer.hold = True
        for index in range(1, 11):
            writer.incr(f"client;10.0.8.{index}")
        writer.flush()
        wait_for(lambda: writer.stats.written_ops == 11)
        writer.stop(0.1)
        assert writer._thread is not None
        writer._thread.join(10)
    finally:
        threading.excepthook = hook
    assert not writer._thread.is_alive() and errors == []
    assert (writer.stats.queued_ops, writer.stats.written_ops) == (11, 11)
    assert writer.stats.dropped_ops == 0 and writer.queue_depth == 0


def test_make_writer_takes_every_agent_s_settings_by_one_name() -> None:
    """The flow agent's `ttl` and the DNS agents' `ttl_grace` (their TOML
    names) are the same bound; each agent's writer gets what its config says,
    `flush_interval` too (the flow agent has none: the writer's default)."""
    table = {"max_queue_ops": 5000, "batch_ops": 100, "client_index": True,
             "write_combining": False, "ping_interval": 7.0}  # fmt: skip
    dns = {**table, "ttl_grace": 60, "flush_interval": 0.25}
    writers = [
        (make_writer(parse_flow_config({**table, "ttl": 60}), redis.Redis), DEFAULT_FLUSH_INTERVAL),
        (make_writer(parse_dnstap_config(dns), redis.Redis), 0.25),
        (make_writer(parse_dnswire_config(dns), redis.Redis), 0.25),
    ]
    for writer, flush_interval in writers:
        assert (writer.ttl, writer.max_queue_ops, writer.batch_ops, writer.index) == (
            60, 5000, 100, True,
        )  # fmt: skip
        assert (writer.combine, writer.ping_interval) == (False, 7.0)
        assert writer.flush_interval == flush_interval


class SeenAtError(WriterStats):
    """The writer's stats, noting what readiness said as each failed round
    trip was counted: a reader that sees the count sees that readiness."""

    def __init__(self, writer: RedisWriter) -> None:
        super().__init__()
        self.writer = writer
        self.seen: list[tuple[bool, str | None]] = []

    def __setattr__(self, name: str, value: object) -> None:
        if name == "redis_errors" and value:
            self.seen.append((self.writer.connected, self.writer.not_now))
        super().__setattr__(name, value)


def test_redis_answering_not_now_is_not_ready_and_not_unreachable(
    private_redis: RedisServer,
) -> None:
    """At maxmemory Redis answers every command OOM: the writer is connected
    (Redis answers) and not ready, readiness naming Redis's error, not
    "unreachable", already as the failed round trip is counted; once Redis
    takes writes again it is ready by itself."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=5),
                         flush_interval=0.02)  # fmt: skip
    stats = writer.stats = SeenAtError(writer)
    writer.start()
    try:
        writer.incr("client;10.0.18.1")
        wait_for(lambda: writer.connected and writer.stats.written_ops == 1, timeout=30)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        writer.incr("client;10.0.18.2")
        writer.append("10.0.18.2;192.0.2.1;dns", "a.example.")
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        [check] = writer_check(writer)
        assert writer.connected and not check.ok
        assert check.detail.startswith("answering, not taking writes now: OOM command not allowed")
        connected, not_now = stats.seen[0]
        assert connected and not_now is not None and not_now.startswith("OOM ")
        admin.config_set("maxmemory", 0)
        wait_for(lambda: writer.stats.written_ops == 3, timeout=30)
        wait_for(lambda: [c.ok for c in writer_check(writer)] == [True], timeout=30)
        assert [c.detail for c in writer_check(writer)] == ["reachable"]
    finally:
        admin.config_set("maxmemory", 0)
        writer.stop(5)
        admin.close()


def test_readiness_says_not_reached_yet_only_before_a_first_try(private_redis: RedisServer) -> None:
    """Before any contact: "not reached yet"; once an idle PING went
    unanswered (Redis stopped), "unreachable", though no write failed."""
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=1),
                         ping_interval=0.2)  # fmt: skip
    assert [c.detail for c in writer_check(writer)] == ["not reached yet; writes are queued"]
    writer.start()
    try:
        wait_for(lambda: writer.connected, timeout=30)
        private_redis.stop()
        wait_for(lambda: not writer.connected, timeout=30)
        [check] = writer_check(writer)
        assert not check.ok and writer.stats.redis_errors == 0
        assert check.detail == "unreachable (0 failed round trips); writes are queued"
    finally:
        writer.stop(5)


def test_loading_is_redis_answering_not_a_lost_reply() -> None:
    """redis-py raises LOADING as a ConnectionError: Redis did not run the
    call (no lost-reply resend in mode "2") and it answered (not_now)."""
    parser = redis.connection.Connection()._parser  # type: ignore[no-untyped-call]
    loading = parser.parse_error("LOADING Redis is loading the dataset in memory")
    assert isinstance(loading, redis.ConnectionError)
    assert not lost_in_flight(loading)
    assert lost_in_flight(redis.ConnectionError("Connection reset by peer"))


def test_a_refusal_while_connecting_is_not_a_not_now(redis_srv: RedisServer) -> None:
    """An ACL user that may not CLIENT SETNAME (what connecting sends):
    Redis refuses the connection itself, for good; that is no "not now" (a
    write answered OOM, READONLY ...), and the writer is not connected."""
    admin = redis.Redis(port=redis_srv.port, decode_responses=True)
    admin.acl_setuser("agent", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-client"])  # fmt: skip
    url = f"redis://agent:pw@127.0.0.1:{redis_srv.port}"
    writer = RedisWriter(lambda: connect(RedisConfig(url=Secret(url))), flush_interval=0.02)
    writer.start()
    try:
        writer.incr("client;10.0.20.1")
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)
        [check] = writer_check(writer)
    finally:
        writer.stop(0)
        admin.close()
    assert writer.stats.redis_not_now == 0
    assert (writer.connected, writer.not_now) == (False, None)
    assert not check.ok and check.detail.startswith("unreachable (")


def acl_writer(port: int) -> RedisWriter:
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}"
    return RedisWriter(lambda: connect(RedisConfig(url=Secret(url))), flush_interval=0.02,
                       index=True)  # fmt: skip


def write_an_answer_twice(writer: RedisWriter) -> None:
    """A CNAME chain, two addresses, an NXDOMAIN; then the same again, so the
    counters exist and take the follow-up's EXPIRE."""
    for _ in range(2):
        record_answer(writer, "10.0.30.1", ["www.example.", "edge.cdn.example."],
                      ["192.0.2.1", "192.0.2.2"])  # fmt: skip
        record_nxdomain(writer, "10.0.30.1", "nx.example.")
        writer.flush()
        wait_for(lambda: writer.stats.written_ops + writer.stats.dropped_ops
                 == writer.stats.queued_ops and writer.queue_depth == 0)  # fmt: skip


@pytest.mark.parametrize("withheld", [(), ("-script|load",)])
def test_the_documented_acl_lets_the_writer_write_everything(
    private_redis: RedisServer, withheld: tuple[str, ...]
) -> None:
    """docs/operations.md's ACL line, as written there, is all the writer
    needs: every write lands with its TTL and index, nothing is refused, and
    Redis's ACL log holds nothing else. Without `script|load` the script
    goes as EVAL."""
    one_server, _cluster = documented_acl(ACL_USER, ACL_PASSWORD)
    set_acl_user(private_redis.port, ACL_USER, [*one_server, *withheld])
    writer = acl_writer(private_redis.port)
    writer.start()
    try:
        write_an_answer_twice(writer)
        checks = {c.name: c for c in writer_check(writer)}
    finally:
        writer.stop(5)
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    refused = {entry["object"] for entry in admin.acl_log()}
    assert refused == {rule.removeprefix("-") for rule in withheld}
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (writer.stats.queued_ops, 0)
    assert (writer.stats.expires_lost, writer.stats.index_lost) == (0, 0)
    assert set(checks) == {"redis"} and checks["redis"].ok
    assert admin.get("10.0.30.1;192.0.2.2;dns") == ";edge.cdn.example.;"
    assert admin.get("client;10.0.30.1") == "6"  # 2 addresses and 1 NXDOMAIN, twice
    keys = admin.keys("10.0.30.1;*")
    assert len(keys) == 5 and all(0 < admin.ttl(k) <= writer.ttl for k in keys)
    assert admin.smembers("10.0.30.1;index") >= {"10.0.30.1;nx.example.;nx"}
    admin.close()


def test_an_acl_denying_the_script_fails_readiness_naming_the_command(
    private_redis: RedisServer,
) -> None:
    """Without `evalsha` and `eval` every append is refused for good:
    counted, dropped, and readiness says why and what to do; the counters
    still land, and the writer goes on."""
    one_server, _cluster = documented_acl(ACL_USER, ACL_PASSWORD)
    set_acl_user(private_redis.port, ACL_USER, [*one_server, "-evalsha", "-eval"])
    writer = acl_writer(private_redis.port)
    writer.start()
    try:
        write_an_answer_twice(writer)
        checks = {c.name: c for c in writer_check(writer)}
        assert writer.access_refused is not None
        # The window is over: the check is gone (the ACL mended meanwhile).
        writer.access_refused = (time.monotonic() - ACCESS_REFUSED_S - 1, writer.access_refused[1])
        after = [c.name for c in writer_check(writer)]
    finally:
        writer.stop(5)
    assert checks["redis"].ok
    access = checks["redis_access"]
    assert not access.ok
    assert access.detail.startswith("Redis refused writes as not permitted ")
    assert access.detail.endswith(
        " s ago: NOPERM this user has no permissions to run the 'evalsha' command; give the"
        " agent's Redis user the commands docs/operations.md lists"
    )
    assert after == ["redis"]
    assert writer.stats.rejected_ops == 6  # two rounds of 2 dns and 1 cname appends
    with redis.Redis(port=private_redis.port, decode_responses=True) as admin:
        assert admin.get("client;10.0.30.1") == "6"  # 2 addresses and 1 NXDOMAIN, twice
        assert admin.get("10.0.30.1;192.0.2.1;dns") is None


def test_a_ping_answered_busy_is_redis_there_not_now(private_redis: RedisServer) -> None:
    """While a script runs past busy-reply-threshold Redis answers PING with
    BUSY: it is there, busy; not an unanswered PING, and readiness names
    the error; ready again once the script is killed."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.config_set("busy-reply-threshold", 50)
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=5),
                         ping_interval=0.05)  # fmt: skip
    writer.start()
    spin = threading.Thread(target=run_until_killed, args=(private_redis.port,), daemon=True)
    try:
        wait_for(lambda: writer.connected, timeout=30)
        spin.start()
        wait_for(lambda: writer.not_now is not None, timeout=30)
        [check] = writer_check(writer)
        assert writer.connected and writer.failed_pings == 0
        assert check.detail.startswith("answering, not taking writes now: BUSY ")
        admin.script_kill()
        wait_for(lambda: writer.not_now is None, timeout=30)
        assert writer.failed_pings == 0 and writer.connected
    finally:
        with contextlib.suppress(redis.RedisError):  # NOTBUSY: no script to kill
            admin.script_kill()
        spin.join(30)
        writer.stop(5)
        admin.close()

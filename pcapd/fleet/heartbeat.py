"""A node's heartbeat: its hash rewritten every `heartbeat_interval` seconds
by a thread of its own, expiring after HEARTBEATS_MISSED missed beats, and
deleted at a clean stop (a crash lets it expire)."""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping

import redis

from pcapd.core.backoff import RECONNECT_INITIAL, Backoff
from pcapd.core.config import HEARTBEATS_MISSED, FleetConfig
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client
from pcapd.fleet.node import NodeState, node_key

log = logging.getLogger("pcapd.fleet")  # the fleet's lines, as before the split

STOP_TIMEOUT = 2.0  # seconds the last write (the delete) may take at shutdown

# Deletes the hash only if this process wrote it: a second daemon started
# with the same node name by mistake must not erase the first one's beat.
_DELETE_OWN = """
if redis.call('HGET', KEYS[1], 'instance') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Heartbeat:
    """A daemon thread writing `state()` to the node's hash every interval.

    It never blocks a capture: it holds no lock of the daemon's beyond what
    `state()` takes, and its Redis client has timeouts of at most one
    interval. Redis away: logged once, retried with `Backoff` (never waiting
    longer than an interval, so the node is back within one beat of Redis),
    logged again when it works.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        fleet: FleetConfig,
        node: str,
        state: Callable[[], NodeState],
    ) -> None:
        self.key = node_key(fleet.prefix, node)
        self.interval = fleet.heartbeat_interval
        self.expire_ms = math.ceil(HEARTBEATS_MISSED * self.interval * 1000)
        self.instance = uuid.uuid4().hex
        self._connect = connect
        self._state = state
        self._stop = threading.Event()
        self._backoff = Backoff(RECONNECT_INITIAL, max(RECONNECT_INITIAL, self.interval))
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._client: Client | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the beat and delete the hash, so the node leaves the list now."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        tracker = self._backoff.tracker()
        failing = False
        other: str | None = None  # the other instance last warned about
        while not self._stop.is_set():
            try:
                # Built before Redis is touched: a failure here is not Redis's
                # (`state()` falls back to partial values itself).
                fields = self._state().to_hash()
            except Exception:  # a bug in state() must not end the beat
                event(log, "heartbeat_crashed", logging.ERROR, exc_info=True, key=self.key)
                self._stop.wait(self.interval)
                continue
            try:
                previous = self._beat(fields)
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    event(log, "heartbeat_failed", logging.WARNING, key=self.key, error=str(exc))
                failing = True
                self._drop_client()
                wait = tracker.failed()
            else:
                if failing:
                    event(log, "heartbeat_resumed", key=self.key)
                    failing = False
                if previous not in (None, self.instance, other):
                    event(
                        log, "node_name_conflict", logging.WARNING, key=self.key,
                        other_instance=previous,
                        hint="two daemons beat under one node name: set [general] node",
                    )  # fmt: skip
                    other = previous
                tracker.succeeded()
                wait = self.interval
            self._stop.wait(wait)
        self._remove()

    def _client_now(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _beat(self, fields: Mapping[str, str]) -> str | None:
        """Write the hash as one transaction (readers never see half of it);
        returns the instance that wrote it before, if any."""
        pipe = self._client_now().pipeline(transaction=True)
        pipe.hget(self.key, "instance")
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(self.key, self.expire_ms)
        previous = pipe.execute()[0]
        return previous.decode() if isinstance(previous, bytes) else None

    def _remove(self) -> None:
        try:
            if self._client_now().eval(_DELETE_OWN, 1, self.key, self.instance):
                event(log, "heartbeat_removed", key=self.key)
            else:
                event(log, "heartbeat_kept", key=self.key, reason="another instance wrote it last")
        except (redis.RedisError, OSError) as exc:
            # It expires on its own within HEARTBEATS_MISSED intervals.
            event(log, "heartbeat_remove_failed", logging.WARNING, key=self.key, error=str(exc))
        finally:
            self._drop_client()

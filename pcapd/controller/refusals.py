"""The `request_rejected` warning, summarised under a burst.

A storm meeting `max_concurrent` refuses hundreds of captures a second, each
answered with its reason in its result event; a warning line for each one
cost the trigger thread ~0.8 ms of CPU (formatting, a write that lets go of
the GIL). So the first refusal of a reason is logged at once, in full, and
the ones that follow within REFUSAL_LOG_INTERVAL are counted and logged as
one `requests_rejected` line per interval, as the pub/sub source logs the
requests it refuses unread (`requests_overloaded`). A reason is the error
with its numbers taken out (`bytes=N does not fit: ...`). Memory: at most
REFUSAL_REASONS reasons are counted at once; a refusal of another reason
then is logged at once, as if alone.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pcapd.core.logs import event

log = logging.getLogger("pcapd.controller")

REFUSAL_LOG_INTERVAL = 1.0  # s; refusals of one reason are summarised once per interval
REFUSAL_REASONS = 64  # reasons counted at once (errors may quote a request's own fields)

_NUMBERS = re.compile(r"\d+")


@dataclass(slots=True)
class _Reason:
    since: float  # monotonic: when its last line was logged
    error: str = ""  # the latest refusal's error, counted
    count: int = 0  # refusals counted since that line
    last_id: str | None = None


class RefusalLog:
    """Thread-safe: trigger and capture threads refuse. A summary due is
    logged by a timer thread (one at a time, a daemon thread, so it never
    holds up the process's exit); `flush`, at shutdown, logs what is still
    counted."""

    def __init__(
        self,
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._reasons: dict[str, _Reason] = {}
        self._timer: threading.Timer | None = None

    def rejected(self, request_id: str | None, error: str, **context: Any) -> None:
        """One refusal: logged now if it is the first of its reason within an
        interval (with `context`: the alert id and interface of a capture
        refused, the source of a body that did not parse), else counted into
        that reason's next summary."""
        key = _NUMBERS.sub("N", error)
        now = self._clock()
        with self._lock:
            reason = self._reasons.get(key)
            if reason is not None and (reason.count or now - reason.since < self.interval):
                reason.count += 1
                reason.error, reason.last_id = error, request_id
                timer = self._arm_locked(reason.since + self.interval - now)
                alone = False
            else:
                if reason is None and len(self._reasons) >= REFUSAL_REASONS:
                    self._forget_quiet_locked(now)
                if reason is not None or len(self._reasons) < REFUSAL_REASONS:
                    self._reasons[key] = _Reason(since=now)
                timer, alone = None, True
        self._start(timer)
        if alone:
            event(log, "request_rejected", logging.WARNING, id=request_id, **context, error=error)

    def _forget_quiet_locked(self, now: float) -> None:
        """Drop the reasons with nothing counted whose interval is over."""
        for key, reason in list(self._reasons.items()):
            if not reason.count and now - reason.since >= self.interval:
                del self._reasons[key]

    def _arm_locked(self, delay: float) -> threading.Timer | None:
        """A timer to log what is due, unless one is armed: started by the
        caller, outside the lock."""
        if self._timer is not None:
            return None
        self._timer = threading.Timer(max(0.0, delay), self._summarise)
        self._timer.name = "refusal-log"
        self._timer.daemon = True
        return self._timer

    def flush(self) -> None:
        """Log every reason with refusals counted, due or not: the daemon's
        last word before `stopped`, as its timer dies with the process."""
        now = self._clock()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            due = [
                (reason.count, now - reason.since, reason.last_id, reason.error)
                for reason in self._reasons.values()
                if reason.count
            ]
            self._reasons.clear()
        self._log(due)

    def _log(self, due: list[tuple[int, float, str | None, str]]) -> None:
        for count, seconds, last_id, error in due:
            event(
                log, "requests_rejected", logging.WARNING, rejected=count,
                seconds=round(seconds, 3), last_id=last_id, error=error,
            )  # fmt: skip

    def _summarise(self) -> None:
        """Log each reason whose interval is over, forget the quiet ones, and
        arm the timer again for what is still counting. A reason just summed
        up counts on from zero: its next refusal within the interval arms
        the timer again (no timer only to forget it, which would hold up
        the process's exit)."""
        now = self._clock()
        due: list[tuple[int, float, str | None, str]] = []
        with self._lock:
            self._timer = None
            wake = None
            for key, reason in list(self._reasons.items()):
                left = reason.since + self.interval - now
                if left > 0:
                    if reason.count:
                        wake = left if wake is None else min(wake, left)
                    continue
                if not reason.count:
                    del self._reasons[key]  # quiet for an interval: the next is logged at once
                    continue
                due.append((reason.count, now - reason.since, reason.last_id, reason.error))
                reason.since, reason.count = now, 0
            timer = None if wake is None else self._arm_locked(wake)
        self._log(due)
        self._start(timer)

    def _start(self, timer: threading.Timer | None) -> None:
        """Start `timer` outside the lock. One that cannot start (no thread
        to be had) is dropped: the next refusal counted arms another."""
        if timer is None:
            return
        try:
            timer.start()
        except RuntimeError:
            with self._lock:
                if self._timer is timer:
                    self._timer = None

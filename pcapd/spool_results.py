"""A spooled capture's `delivered` result: to its request's `reply_to` too,
and sent before its spool entry goes.

The drainer (uploaders/drain.py) removes an entry once every sink has it,
and only then hands over its `delivered` event; a result that could not be
sent then was lost with the entry, and the event does not carry the
request's `reply_to`. `DeliveredResults` gives the drainer a view of the
spool whose `remove` holds the entry instead, for the `on_delivered` call
the drainer makes next in the same pass: that sends the result with the
entry's `reply_to`, then removes the entry, or keeps it when the result
could not be sent (`pcapd spool retry` once Redis was away past its
attempts). A kept entry still lists its sinks, so the next pass uploads it
again (S3 overwrites the same key; CloudShark gets a second copy): a capture
sent twice rather than a `delivered` never seen. Another process's drainer
may take the entry between the two steps; it then delivers it again too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, cast

from pcapd.core.events import ResultEvent
from uploaders.spool import Spool, SpoolEntry, clip_error

# Sends a result to the results channel, stream and `reply_to`; False if it
# did not get there (the entry is then kept).
Send = Callable[[ResultEvent, str | None], bool]


class _HeldRemovals:
    """`spool` as the drainer sees it: the same object for every call but
    `remove`, which holds the entry for `DeliveredResults`."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.held: SpoolEntry | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spool, name)

    def remove(self, entry: SpoolEntry) -> None:
        self.held = entry


class DeliveredResults:
    """The drainer's `on_delivered`, for the spool `drainer_spool` (give the
    drainer that, not the spool itself). `kept` lists the ids of entries kept
    because their result was not sent."""

    def __init__(self, spool: Spool, send: Send) -> None:
        self._spool = spool
        self._view = _HeldRemovals(spool)
        self._send = send
        self.kept: list[str] = []

    @property
    def drainer_spool(self) -> Spool:
        return cast(Spool, self._view)  # duck-typed: every other call is the spool's

    def __call__(self, result: ResultEvent, locations: Mapping[str, str]) -> None:
        entry, self._view.held = self._view.held, None
        if entry is None:  # not the drainer's removal order: nothing to keep
            self._send(result, None)
            return
        if self._send(result, entry.capture_request().reply_to):
            self._spool.remove(entry)
            return
        self.kept.append(entry.id)
        self._spool.update(
            dataclasses.replace(
                entry, locations={**entry.locations, **locations}, attempts=entry.attempts + 1,
                last_error=clip_error("delivered, but its result could not be published"),
            )
        )  # fmt: skip

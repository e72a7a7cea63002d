"""What a Redis reply means to the agents' writer: an answer or silence,
a "not now", a call to send again, one whose reply was lost in flight.
Shared by the sending round trip, its follow-up and readiness."""

from __future__ import annotations

import hiredis
import redis

from pcapd.core.redis_conn import NotSent
from pcapd.core.redis_errors import refusal

# Errors that are Redis's answer, not its silence (LOADING comes as redis-py's
# BusyLoadingError, a ConnectionError).
HEARD_ERRORS = (redis.ResponseError, redis.exceptions.BusyLoadingError)


def answered(reply: object) -> bool:
    """Whether `reply` came from Redis (a value or an error reply), not from
    its silence (a connection error, a timeout, a command never sent)."""
    return not isinstance(reply, BaseException) or isinstance(reply, HEARD_ERRORS)


def not_now(reply: object) -> bool:
    """Whether `reply` is Redis there but not taking it now (LOADING, BUSY,
    OOM, READONLY ...): an answer, and no refusal for good."""
    return isinstance(reply, HEARD_ERRORS) and refusal(reply, cluster=False) is None


# What a server that accepts and never answers (paused, a partition) gives.
_TIMEOUTS = (redis.TimeoutError, TimeoutError)


def silent(reply: object) -> bool:
    """Whether `reply` is a timeout: of its read, or of the connection that
    was to write it (`NotSent`, its cause kept)."""
    return isinstance(reply, _TIMEOUTS) or (
        isinstance(reply, NotSent) and isinstance(reply.__cause__, _TIMEOUTS)
    )


def to_resend(reply: object, *, cluster: bool) -> bool:
    """Whether the command `reply` answers is to be sent again: no answer,
    or a "not now"; not a value, nor a refusal for good."""
    return isinstance(reply, Exception) and refusal(reply, cluster=cluster) is None


# A call's reply that says it was written and its reply not read.
_UNHEARD = (redis.ConnectionError, redis.TimeoutError, OSError, hiredis.ProtocolError)


def lost_in_flight(reply: object) -> bool:
    """Whether Redis may have run the call `reply` answers, its reply lost
    (the link cut, a timeout): not a "not now" (LOADING, BUSY, CLUSTERDOWN,
    TRYAGAIN ...: Redis did not run it) nor a call never written (`NotSent`)."""
    # redis-py raises LOADING as a ConnectionError (BusyLoadingError).
    not_run = (NotSent, redis.exceptions.BusyLoadingError)
    return isinstance(reply, _UNHEARD) and not isinstance(reply, not_run)

"""What a Redis error reply means for a sender: refused for good (logged,
never sent again) or "not now" (sent again after a backoff), with its code
and its text as Redis spelled them. The one classifier of the daemon's
results and the agents' writes."""

from __future__ import annotations

import redis

# Error replies a later resend may get past: a node busy, loading, in a
# failover or short of memory or replicas, or a cluster redirect mid-move.
# Any other reply (NOPERM, WRONGTYPE, ERR from an ACL or a script ...) would
# come back the same: refused for good.
# NOSCRIPT too: every sender of EVALSHA loads the script where it was lost
# and sends again (`evalsha_by_slot`, `redis_wire.evalsha_exchange`).
TRANSIENT_CODES = frozenset({
    "BUSY", "LOADING", "NOREPLICAS", "MISCONF", "READONLY", "OOM", "TRYAGAIN",
    "CLUSTERDOWN", "ASK", "MASTERDOWN", "NOSCRIPT",
})  # fmt: skip
REDIRECTS = frozenset({"MOVED", "ASK"})
# Said of a MOVED or ASK on a plain connection: no redirection is followed there.
CLUSTER_HINT = "a cluster node: use redis+cluster://"
# What Redis 7.0 answers a script's call that the user's ACL denies (7.2
# says NOPERM there too): the same refusal, so it gets the same code.
SCRIPT_CALL_DENIED = "ERR The user executing the script can't run this command"


def error_code(error: BaseException | str) -> str:
    """An error reply's code (its first word): redis-py cuts the codes it
    knows off the message into `status_code` and leaves the rest in it; for
    a reply given as text (a script's answer), its first word when that is
    a code; else the exception's class (ConnectionError, ...). A script's
    call denied by an ACL is NOPERM, as outside a script."""
    if str(error).startswith(SCRIPT_CALL_DENIED):
        return "NOPERM"
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code
    word = str(error).split(" ", 1)[0]
    if word.isalpha() and word.isupper():
        return word
    return type(error).__name__ if isinstance(error, BaseException) else "unknown"


def error_text(error: BaseException) -> str:
    """The error as Redis spelled it, its code put back before the message
    redis-py cut it from (`NOPERM ...`, `MOVED 1234 host:port`)."""
    text = str(error) or type(error).__name__
    code = getattr(error, "status_code", None)
    return f"{code} {text}" if isinstance(code, str) and not text.startswith(code) else text


def refusal(reply: object, *, cluster: bool) -> str | None:
    """What to log when `reply` says Redis refused a command for good, so
    that sending it again is pointless (WRONGTYPE, NOPERM, ...); None for
    anything else: a value, no answer (a connection error) or a "not now"
    (TRANSIENT_CODES), to be sent again. The one classifier of the daemon's
    and the agents' writes. A MOVED or ASK is "not now" on a cluster (the
    redirections ran out mid-move) but "no" on one server's client, which
    follows none: a cluster node reached through redis://."""
    if not isinstance(reply, redis.ResponseError):
        return None
    code = error_code(reply)
    if code in REDIRECTS:
        return None if cluster else f"{error_text(reply)}: {CLUSTER_HINT}"
    return None if code in TRANSIENT_CODES else error_text(reply)

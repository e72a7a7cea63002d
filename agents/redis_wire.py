"""The RESP side of the agents' writer (agents/redis_send.py): a batch cut
into calls, the calls packed as Redis commands (built as text, hiredis for
keys that are not ASCII). The exchange itself is pcapd/core/redis_wire.py's,
what a reply says (refused, "not now") `redis_errors.refusal`."""

from __future__ import annotations

from collections.abc import Sequence

from agents.store import APPEND_SCRIPT, client_key
from agents.write_window import Batch
from pcapd.core.redis_scripts import script_sha
from pcapd.core.redis_wire import pack_command

_SHA = script_sha(APPEND_SCRIPT)  # what EVALSHA names
_CLIENT = client_key("")  # counters that go in no client's index

# What a call is: (slot, kind, its entries).
COUNTERS = "counters"  # one INCRBY per entry
APPENDS = "appends"  # one script call
Call = tuple[int, str, Batch]

_OK = b"OK"  # SET NX's reply when it made the key


def _calls(batch: Batch, at: Sequence[int], step: int) -> list[tuple[str, Batch]]:
    """The entries of `batch` at `at` (ascending) as calls: (COUNTERS, the
    counters, one INCRBY each) and (APPENDS, at most `step` members, one
    script call). A key may be counted and appended to among them
    (unmerged writes; joined batches): the calls keep each key's order,
    cutting where a key comes as the other kind."""
    keys, args = batch.keys, batch.args
    groups: list[tuple[list[int], list[int]]] = []
    counters: list[int] = []
    appends: list[int] = []
    counted: set[str] = set()
    appended: set[str] = set()
    for i in at:
        key = keys[i]
        if isinstance(args[i], int):
            if key in appended:
                groups.append((counters, appends))
                counters, appends, counted, appended = [], [], set(), set()
            counters.append(i)
            counted.add(key)
        else:
            if key in counted:
                groups.append((counters, appends))
                counters, appends, counted, appended = [], [], set(), set()
            appends.append(i)
            appended.add(key)
    groups.append((counters, appends))
    calls: list[tuple[str, Batch]] = []
    step = max(1, step)
    for counters, appends in groups:
        if counters:
            calls.append((COUNTERS, batch if len(counters) == len(keys) else batch.part(counters)))
        calls += [
            (APPENDS, batch.part(appends[a : a + step])) for a in range(0, len(appends), step)
        ]
    return calls


def _pack_counters(part: Batch, ttl: int) -> bytes:
    """`SET k 0 NX EX ttl` and `INCRBY k n` per counter, built as text like
    `redis_wire.pack_pairs` (hiredis for keys that are not ASCII)."""
    t = str(ttl)
    keys, amounts = part.keys, [str(n) for n in part.args]
    middle = f"\r\n$1\r\n0\r\n$2\r\nNX\r\n$2\r\nEX\r\n${len(t)}\r\n{t}\r\n*3\r\n$6\r\nINCRBY\r\n$"
    head = "*6\r\n$3\r\nSET\r\n$"
    text = "".join([f"{head}{len(k)}\r\n{k}{middle}{len(k)}\r\n{k}\r\n${len(n)}\r\n{n}\r\n"
                    for k, n in zip(keys, amounts, strict=True)])  # fmt: skip
    if text.isascii():
        return text.encode()
    return b"".join([pack_command(("SET", k, "0", "NX", "EX", t)) + pack_command(("INCRBY", k, n))
                     for k, n in zip(keys, amounts, strict=True)])  # fmt: skip


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

"""Write-combining for agents/redis_writer.py: what producers queue between
two sends is merged before it goes to Redis.

Within one window, INCRs (and INCRBYs) of a key become one INCRBY of the sum,
a repeated append-if-absent of the same (key, member) is kept once, and each
key is sent once, so the script refreshes its EXPIRE once. What Redis ends
up holding is what the unmerged writes give: the same values, members in
the order first queued, the expiry refreshed at the send instead of a few ms
earlier. A key that is both INCRed and appended to in one window (no agent
writes that; Redis refuses one of the two) is not merged across: the window
is sealed at that op so the order on that key holds.

Each entry remembers how many producer operations it stands for (`weights`),
so written, refused and lost writes are still counted per operation.

With `combine=False` (`write_combining = false` in an agent's section) each
write is its own entry, sent as it was queued: for a Redis where the merge
is not wanted, or to compare.

Memory: one entry per distinct key (INCR) or (key, member) (append), each
~ key + member + ~245 bytes (the strings' objects and the dicts, measured
with tracemalloc), ~125 more in the batches while sealing; the writer
bounds the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.store import Op


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries to send: KEYS, their ops (an int: INCRBY it; a str: the
    member to append; a key's members are adjacent when merged, so the
    script GETs it once), and how many producer operations each stands for."""

    keys: list[str]
    args: list[Op]
    weights: list[int]
    # A merged window's batch: its first `counters` entries are the
    # counters, the rest appends, no key of both. -1: not known (unmerged
    # writes, joined or picked entries), to be cut by kind in order.
    counters: int = -1

    @property
    def ops(self) -> int:
        return sum(self.weights)

    @staticmethod
    def joined(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        return Batch([k for b in batches for k in b.keys], [a for b in batches for a in b.args],
                     [w for b in batches for w in b.weights])  # fmt: skip

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(self.keys[start:stop], self.args[start:stop], self.weights[start:stop])

    def part(self, indexes: list[int]) -> Batch:
        """The entries at `indexes` (ascending), in their order."""
        keys, args, weights = self.keys, self.args, self.weights
        return Batch([keys[i] for i in indexes], [args[i] for i in indexes],
                     [weights[i] for i in indexes])  # fmt: skip


class Window:
    """The operations queued since the last seal, merged (`combine`) or kept
    as they came. Not thread-safe: the writer holds its lock around every
    call."""

    __slots__ = ("_args", "_entries", "_extra", "_keys", "_more", "_repeats", "combine", "held",
                 "ops")  # fmt: skip

    def __init__(self, combine: bool = True) -> None:
        self.combine = combine
        self._reset()

    def _reset(self) -> None:
        # Kept lean, as this runs once per operation. One dict in the order
        # keys came: an INCR key -> its ops; an append key -> its first member
        # (the common case). Beside it: INCRBY key -> the amount beyond one
        # per op; append key -> its further members, in order; (key, member)
        # appended again -> the extra ops, for the counts.
        self._entries: dict[str, int | str] = {}
        self._extra: dict[str, int] = {}
        self._more: dict[str, dict[str, None]] = {}
        self._repeats: dict[tuple[str, str], int] = {}
        # Not combining: the writes as they came.
        self._keys: list[str] = []
        self._args: list[Op] = []
        self.held = 0  # entries: distinct INCR keys + distinct (key, member)
        self.ops = 0  # producer operations merged into them

    def add(self, keys: list[str], args: Sequence[Op], start: int, limit: int) -> tuple[int, int]:
        """Merge `keys[start:]` / `args[start:]` (see RedisWriter.extend) while
        at most `limit` entries are held; a repeat always merges, as it costs
        no room. Returns (where it stopped, ops dropped for want of room):
        it stops early, at `i < len(keys)`, only where `keys[i]` has an
        entry of the other kind, for the caller to seal and go on from `i`."""
        if not self.combine:
            room = max(0, min(len(keys) - start, limit - self.held))
            self._keys += keys[start : start + room]
            self._args += args[start : start + room]
            self.held += room
            self.ops += room
            return len(keys), len(keys) - start - room
        entries = self._entries
        get = entries.get
        held = self.held
        dropped = 0
        i = start - 1
        for i in range(start, len(keys)):
            key = keys[i]
            arg = args[i]
            entry = get(key)
            if isinstance(arg, int):
                if entry is None:
                    if held >= limit:
                        dropped += 1
                        continue
                    held += 1
                    entries[key] = 1
                elif isinstance(entry, int):
                    entries[key] = entry + 1
                else:
                    break
                if arg != 1:
                    self._extra[key] = self._extra.get(key, 0) + arg - 1
            elif entry is None:
                if held >= limit:
                    dropped += 1
                    continue
                entries[key] = arg
                held += 1
            elif entry == arg or arg in self._more.get(key, ()):
                pair = (key, arg)
                self._repeats[pair] = self._repeats.get(pair, 0) + 1
            elif not isinstance(entry, str):
                break
            elif held >= limit:
                dropped += 1
            else:
                self._more.setdefault(key, {})[arg] = None
                held += 1
        else:
            i = len(keys)
        self.ops += i - start - dropped
        self.held = held
        return i, dropped

    def seal(self, batch_entries: int) -> list[Batch]:
        """Everything held, as batches of at most `batch_entries` entries, and
        the window emptied."""
        step = max(1, batch_entries)
        if not self.combine:
            keys_, args_ = self._keys, self._args
            self._reset()
            return [Batch(keys_[at : at + step], args_[at : at + step],
                          [1] * len(keys_[at : at + step]))
                    for at in range(0, len(keys_), step)]  # fmt: skip
        # The counters first, then the appends (no key is both in a window,
        # so only their order among their own kind counts).
        keys: list[str] = []
        args: list[Op] = []
        weights: list[int] = []
        ckeys: list[str] = []
        cargs: list[Op] = []
        cweights: list[int] = []
        extra, more, repeats = self._extra, self._more, self._repeats
        for key, entry in self._entries.items():
            if isinstance(entry, int):
                ckeys.append(key)
                cargs.append(entry + extra.get(key, 0) if extra else entry)
                cweights.append(entry)
                continue
            keys.append(key)
            args.append(entry)
            weights.append(1 + repeats.get((key, entry), 0) if repeats else 1)
            for other in more.get(key, ()):
                keys.append(key)
                args.append(other)
                weights.append(1 + repeats.get((key, other), 0))
        self._reset()
        counted = len(ckeys)
        keys, args, weights = ckeys + keys, cargs + args, cweights + weights
        return [
            Batch(keys[at : at + step], args[at : at + step], weights[at : at + step],
                  max(0, min(step, counted - at)))
            for at in range(0, len(keys), step)
        ]  # fmt: skip

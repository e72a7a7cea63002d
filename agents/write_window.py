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

Memory: one entry per distinct key (INCR) or (key, member) (append), each
~ key + member + ~245 bytes (the strings' objects and the dicts, measured
with tracemalloc), ~125 more in the batches while sealing; the writer
bounds the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.store import INCR, INCRBY


@dataclass(frozen=True, slots=True)
class Batch:
    """One script call: KEYS, their ops (`INCR`, `INCRBY` + n, or a member;
    a key's members are adjacent, which the script relies on to GET it
    once), and how many producer operations each entry stands for."""

    keys: list[str]
    args: list[str]
    weights: list[int]

    @property
    def ops(self) -> int:
        return sum(self.weights)

    @staticmethod
    def joined(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        return Batch([k for b in batches for k in b.keys], [a for b in batches for a in b.args],
                     [w for b in batches for w in b.weights])  # fmt: skip

    def part(self, indexes: list[int]) -> Batch:
        """The entries at `indexes` (ascending), in their order."""
        keys, args, weights = self.keys, self.args, self.weights
        return Batch([keys[i] for i in indexes], [args[i] for i in indexes],
                     [weights[i] for i in indexes])  # fmt: skip


class Window:
    """The operations queued since the last seal, merged. Not thread-safe:
    the writer holds its lock around every call."""

    __slots__ = ("_entries", "_extra", "_more", "_repeats", "held", "ops")

    def __init__(self) -> None:
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
        self.held = 0  # entries: distinct INCR keys + distinct (key, member)
        self.ops = 0  # producer operations merged into them

    def add(self, keys: list[str], args: Sequence[str], start: int, limit: int) -> tuple[int, int]:
        """Merge `keys[start:]` / `args[start:]` (see RedisWriter.extend) while
        at most `limit` entries are held; a repeat always merges, as it costs
        no room. Returns (where it stopped, ops dropped for want of room):
        it stops early, at `i < len(keys)`, only where `keys[i]` has an
        entry of the other kind, for the caller to seal and go on from `i`.
        An INCRBY marker without a number raises ValueError, the ops before
        it merged and counted, nothing of it kept."""
        entries = self._entries
        get = entries.get
        held = self.held
        dropped = 0
        i = start - 1
        for i in range(start, len(keys)):
            key = keys[i]
            arg = args[i]
            entry = get(key)
            if not arg or arg[0] == INCRBY:
                by = 1
                if arg:  # parsed before anything changes, so a bad one leaves all as it was
                    try:
                        by = int(arg[1:])
                    except ValueError:
                        self.ops += i - start - dropped
                        self.held = held
                        raise ValueError(
                            f"INCRBY of {key!r} needs a whole number after the NUL, not {arg[1:]!r}"
                        ) from None
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
                if by != 1:
                    self._extra[key] = self._extra.get(key, 0) + by - 1
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
        keys: list[str] = []
        args: list[str] = []
        weights: list[int] = []
        extra, more, repeats = self._extra, self._more, self._repeats
        for key, entry in self._entries.items():
            keys.append(key)
            if isinstance(entry, int):
                by = entry + extra.get(key, 0) if extra else entry
                args.append(INCR if by == 1 else f"{INCRBY}{by}")
                weights.append(entry)
                continue
            args.append(entry)
            weights.append(1 + repeats.get((key, entry), 0) if repeats else 1)
            for other in more.get(key, ()):
                keys.append(key)
                args.append(other)
                weights.append(1 + repeats.get((key, other), 0))
        self._reset()
        step = max(1, batch_entries)
        return [
            Batch(keys[at : at + step], args[at : at + step], weights[at : at + step])
            for at in range(0, len(keys), step)
        ]

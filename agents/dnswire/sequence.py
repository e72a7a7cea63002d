"""One DNSFlow sensor's sequence numbers: lost, reordered, repeated, restarted.

Each packet's 32-bit number is compared with the highest seen, modulo 2**32
(so the wrap from 0xFFFFFFFF to 0 is a next step):

- ahead by less than RESTART_JUMP: the numbers skipped are counted lost at
  once (`GAP`; `NEXT` when none were);
- behind by less than REORDER_WINDOW: a late packet (`LATE`), whose number
  is taken back out of `lost` if it was counted there, or a repeat of one
  that arrived (`DUPLICATE`);
- anything else (far behind, or far ahead) is `FAR`, and the next number
  tells what it was: if that one is within the same bounds of the far one,
  the sensor restarted its count (`RESTART`), followed from the far number
  on (what was lost stays lost); if it fits the old sequence, the far one
  was a stray (a late copy, a spoofed number: counted in `strays`) and the
  old sequence goes on untouched; if neither, the far one was a stray and
  the new one is far in its turn.

So `lost` is exact for the last REORDER_WINDOW numbers and can go down when
a late packet comes, and one stray packet costs nothing but its count. A
sensor that restarts on the same address and port less than REORDER_WINDOW
numbers below its last is read as late or repeated packets; a restart
normally comes from a new source port, a new sensor.

Memory: REORDER_WINDOW bits per sensor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

REORDER_WINDOW = 1_024  # numbers behind the highest still taken as late
RESTART_JUMP = 1 << 20  # a step forward this far or further is far, not a loss
_MOD = 1 << 32
_WINDOW_BITS = (1 << REORDER_WINDOW) - 1


class Seen(enum.Enum):
    FIRST = "first"
    NEXT = "next"
    GAP = "gap"
    LATE = "late"
    DUPLICATE = "duplicate"
    FAR = "far"  # a stray or a restart: the next number tells
    RESTART = "restart"  # this number follows the far one before it


@dataclass(slots=True)
class Sequence:
    highest: int = -1
    # Bit i: number highest - i arrived. Bits at `span` or above stand for
    # numbers from before the first one followed, never counted lost: one of
    # those that comes late sets its bit and leaves `lost` alone.
    arrived: int = 0
    span: int = 0
    far: int = -1  # the last number, if it was far: a stray or a restart
    lost: int = 0
    reordered: int = 0
    duplicates: int = 0
    restarts: int = 0
    strays: int = 0

    def see(self, number: int) -> Seen:
        if self.highest < 0:
            self._start(number)
            return Seen.FIRST
        offset = _offset(number, self.highest)
        far = self.far
        if offset is not None:
            if far >= 0:
                self.far = -1
                self.strays += 1
            return self._step(offset)
        self.far = number
        if far >= 0 and (offset := _offset(number, far)) is not None:
            self.far = -1
            self.restarts += 1
            self._start(far)
            self._step(offset)
            return Seen.RESTART
        if far >= 0:
            self.strays += 1
        return Seen.FAR

    def _step(self, offset: int) -> Seen:
        """A number `offset` from the highest, within the bounds."""
        if offset == 0:
            self.duplicates += 1
            return Seen.DUPLICATE
        if offset > 0:
            self.lost += offset - 1
            # A far step shifts every bit out: no huge int on the way.
            shifted = self.arrived << offset if offset < REORDER_WINDOW else 0
            self.arrived = (shifted | 1) & _WINDOW_BITS
            self.span = min(self.span + offset, REORDER_WINDOW)
            self.highest = (self.highest + offset) % _MOD
            return Seen.NEXT if offset == 1 else Seen.GAP
        bit = 1 << -offset
        if self.arrived & bit:
            self.duplicates += 1
            return Seen.DUPLICATE
        self.arrived |= bit
        self.reordered += 1
        if -offset < self.span:
            self.lost -= 1
        return Seen.LATE

    def _start(self, number: int) -> None:
        self.highest, self.arrived, self.span = number, 1, 1


def _offset(number: int, base: int) -> int | None:
    """How far `number` is ahead of `base` (negative: behind), modulo 2**32,
    if less than RESTART_JUMP ahead or REORDER_WINDOW behind; else None."""
    ahead = (number - base) % _MOD
    if ahead < RESTART_JUMP:
        return ahead
    if _MOD - ahead < REORDER_WINDOW:
        return ahead - _MOD
    return None

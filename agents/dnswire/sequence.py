"""One DNSFlow sensor's sequence numbers: lost, reordered, repeated, restarted.

Each packet's 32-bit number is compared with the highest seen, modulo 2**32
(so the wrap from 0xFFFFFFFF to 0 is a next step):

- ahead by less than RESTART_JUMP: the numbers skipped are counted lost at
  once (`GAP`; `NEXT` when none were);
- behind by less than REORDER_WINDOW: a late packet (`LATE`), whose number
  is taken back out of `lost` if it was counted there, or a repeat of one
  that arrived (`DUPLICATE`);
- anything else (far behind, or far ahead): the sensor restarted its count
  (`RESTART`), followed from the new number; what was lost stays lost.

So `lost` is exact for the last REORDER_WINDOW numbers and can go down when
a late packet comes. A sensor that restarts on the same address and port
less than REORDER_WINDOW numbers below its last is read as late or repeated
packets; a restart normally comes from a new source port, a new sensor.

Memory: REORDER_WINDOW bits per sensor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

REORDER_WINDOW = 1_024  # numbers behind the highest still taken as late, not a restart
RESTART_JUMP = 1 << 20  # a step forward this far or further is a restart, not a loss
_MOD = 1 << 32
_WINDOW_BITS = (1 << REORDER_WINDOW) - 1


class Seen(enum.Enum):
    FIRST = "first"
    NEXT = "next"
    GAP = "gap"
    LATE = "late"
    DUPLICATE = "duplicate"
    RESTART = "restart"


@dataclass(slots=True)
class Sequence:
    highest: int = -1
    # Bit i: number highest - i arrived, or precedes the first one followed
    # (never counted lost). `span`: how many of those bits follow arrivals.
    arrived: int = 0
    span: int = 0
    lost: int = 0

    def see(self, number: int) -> Seen:
        if self.highest < 0:
            self._start(number)
            return Seen.FIRST
        ahead = (number - self.highest) % _MOD
        if ahead == 0:
            return Seen.DUPLICATE
        if ahead < RESTART_JUMP:
            self.lost += ahead - 1
            # A far step shifts every bit out: no huge int on the way.
            shifted = self.arrived << ahead if ahead < REORDER_WINDOW else 0
            self.arrived = (shifted | 1) & _WINDOW_BITS
            self.span = min(self.span + ahead, REORDER_WINDOW)
            self.highest = number
            return Seen.NEXT if ahead == 1 else Seen.GAP
        behind = _MOD - ahead
        if behind >= REORDER_WINDOW:
            self._start(number)
            return Seen.RESTART
        bit = 1 << behind
        if self.arrived & bit:
            return Seen.DUPLICATE
        self.arrived |= bit
        if behind < self.span:
            self.lost -= 1
        return Seen.LATE

    def _start(self, number: int) -> None:
        self.highest, self.arrived, self.span = number, 1, 1

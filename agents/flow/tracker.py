"""From parsed packets to Redis keys: rules, per-key suppression, bounded caches.

Each distinct packet key (addresses + ports) is decided once by the rules and
remembered: the verdict is either a drop reason (an int counter index) or an
*entry* (`due` ns, `keys`) shared by every packet tuple that yields the same
event key (flow, rst or icmp key): both directions of a flow share one, as
ShoDoHFlo's `Recent.seen(k)` suppresses by that key alone. A packet whose
entry is due sends its keys (the event key plus the `client;` counter and,
for flows, both `peer` keys) and pushes `due` one suppression window ahead,
so each event key reaches Redis at most once per window however many packets
carry it.

Memory: at most `max_tracked` packet tuples per cache (flows, RSTs, ICMP; ~90
bytes each), `max_tracked` addresses and `max_tracked` entries. A new flow
from a new client costs ~1.2 KB across the caches (measured 0.9-1.0 KB), so
the realistic worst case is ~1.2 KB x `max_tracked`. Past a bound the cache
is emptied and counted (`cache_resets`), which at worst sends a key early.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence

from agents import store
from agents.flow.rules import Address, Network, RuleSet, Verdict, contains
from agents.redis_writer import RedisWriter

_PORTS = struct.Struct("!HH")
NS_PER_S = 1_000_000_000

# Tracker counter indexes (after the parser's, in their own list).
EVENTS = 0
SUPPRESSED = 1
DROP_NO_NETWORK = 2
DROP_NO_RULE = 3
DROP_RULE = 4
DROP_OWN_NETWORK = 5
NOT_OURS = 6  # RST / ICMP not to our_nets (an RST without SYN/FIN goes on as a flow)
CACHE_RESETS = 7
COUNTER_NAMES = (
    "events",
    "suppressed",
    "drop_no_network",
    "drop_no_rule",
    "drop_rule",
    "drop_own_network",
    "not_ours",
    "cache_resets",
)
_VERDICT_COUNTER = {
    Verdict.NO_NETWORK: DROP_NO_NETWORK,
    Verdict.NO_RULE: DROP_NO_RULE,
    Verdict.DROP: DROP_RULE,
}
_FALL_THROUGH = -1  # RST not to our_nets: treated as a flow packet, as ShoDoHFlo does


class Entry:
    """The keys one event sends, and when they may be sent again."""

    __slots__ = ("due", "keys")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.due = 0
        self.keys = keys


class Tracker:
    """The `Sink` the packet handler feeds; sends keys through a RedisWriter."""

    def __init__(
        self,
        rules: RuleSet,
        our_nets: Sequence[Network],
        writer: RedisWriter,
        *,
        suppress_own_network: bool = True,
        suppress_window: float = 30.0,
        max_tracked: int = 200_000,
    ) -> None:
        self.rules = rules
        self.our_nets = tuple(our_nets)
        self.writer = writer
        self.suppress_own_network = suppress_own_network
        self.window = int(suppress_window * NS_PER_S)
        self.max_tracked = max_tracked
        self.counts = [0] * len(COUNTER_NAMES)
        self._flows: dict[bytes, Entry | int] = {}
        self._rsts: dict[bytes, Entry | int] = {}
        self._icmps: dict[bytes, Entry | int] = {}
        self._entries: dict[str, Entry] = {}  # by event key
        self._addresses: dict[bytes, tuple[Address, str, bool]] = {}
        self.flow = self._flow_handler()

    # -- hot path ----------------------------------------------------------
    def _flow_handler(self) -> Callable[[int, bytes, int], None]:
        """`flow(ts, key, flags)` as a closure over the caches: the most frequent
        call, so it avoids attribute lookups and a call to `_send`. The caches
        are only ever cleared in place, so the closure never goes stale."""
        flows = self._flows
        counts = self.counts
        window = self.window
        remember = self._remember
        decide = self._decide_flow
        incr = self.writer.incr

        def flow(ts: int, key: bytes, flags: int) -> None:
            entry = flows.get(key)
            if entry is None:
                entry = remember(flows, key, decide(key))
            if isinstance(entry, int):
                counts[entry] += 1
                return
            due = entry.due
            if ts >= due or ts < due - window:  # due, or the clock went back
                entry.due = ts + window
                counts[EVENTS] += 1
                for name in entry.keys:
                    incr(name)
            else:
                counts[SUPPRESSED] += 1

        return flow

    def rst(self, ts: int, key: bytes, flags: int) -> None:
        entry = self._rsts.get(key)
        if entry is None:
            entry = self._remember(self._rsts, key, self._decide_rst(key))
        if entry == _FALL_THROUGH:
            if flags & 0x03:  # with SYN or FIN it is no payload packet either
                self.counts[NOT_OURS] += 1
            else:
                self.flow(ts, key, flags)
            return
        self._send(ts, entry)

    def icmp(self, ts: int, key: bytes) -> None:
        entry = self._icmps.get(key)
        if entry is None:
            entry = self._remember(self._icmps, key, self._decide_icmp(key))
        self._send(ts, entry)

    def _send(self, ts: int, entry: Entry | int) -> None:
        if isinstance(entry, int):
            self.counts[entry] += 1
            return
        due = entry.due
        if ts >= due or ts < due - self.window:  # due, or the clock went back
            entry.due = ts + self.window
            self.counts[EVENTS] += 1
            incr = self.writer.incr
            for key in entry.keys:
                incr(key)
        else:
            self.counts[SUPPRESSED] += 1

    # -- slow path: once per new packet tuple ---------------------------------
    def _remember(
        self, cache: dict[bytes, Entry | int], key: bytes, verdict: Entry | int
    ) -> Entry | int:
        if len(cache) >= self.max_tracked:
            cache.clear()
            self.counts[CACHE_RESETS] += 1
        cache[key] = verdict
        return verdict

    def _entry(self, event: str, keys: tuple[str, ...]) -> Entry:
        """The entry for `event`; its `keys` are those of the first packet
        tuple seen (the other direction's peer keys are the same two keys)."""
        entry = self._entries.get(event)
        if entry is None:
            if len(self._entries) >= self.max_tracked:
                # Cached verdicts point at entries: drop them together.
                self._entries.clear()
                self._flows.clear()
                self._rsts.clear()
                self._icmps.clear()
                self.counts[CACHE_RESETS] += 1
            entry = Entry(keys)
            self._entries[event] = entry
        return entry

    def _ours(self, address: Address) -> bool:
        return contains(self.our_nets, address)

    def _address(self, packed: bytes) -> tuple[Address, str, bool]:
        """(address, str(address), in our_nets), memoised: a new flow mostly
        involves addresses already seen, and str() is the dearest step."""
        known = self._addresses.get(packed)
        if known is None:
            if len(self._addresses) >= self.max_tracked:
                self._addresses.clear()
            address = ipaddress.ip_address(packed)
            known = (address, str(address), self._ours(address))
            self._addresses[packed] = known
        return known

    def _decide_flow(self, key: bytes) -> Entry | int:
        size = 4 if len(key) == 12 else 16
        src, src_text, src_ours = self._address(key[:size])
        dst, dst_text, dst_ours = self._address(key[size : 2 * size])
        sport, dport = _PORTS.unpack_from(key, 2 * size)
        if self.suppress_own_network and src_ours and dst_ours:
            return DROP_OWN_NETWORK
        mapping = self.rules.match(src, sport, dst, dport)
        if isinstance(mapping, Verdict):
            return _VERDICT_COUNTER[mapping]
        client, service = (src_text, dst_text) if mapping.client is src else (dst_text, src_text)
        flow = store.flow_key(client, service, mapping.port)
        if self.rules.ignored(src, sport, dst, dport):
            # ShoDoHFlo still counts the client for an ignored flow.
            return self._entry(flow, (store.client_key(client),))
        return self._entry(
            flow,
            (
                store.client_key(client),
                flow,
                store.peer_key(src_text, dst_text),
                store.peer_key(dst_text, src_text),
            ),
        )

    def _decide_rst(self, key: bytes) -> Entry | int:
        size = 4 if len(key) == 12 else 16
        _src, src_text, _ = self._address(key[:size])
        _dst, dst_text, dst_ours = self._address(key[size : 2 * size])
        sport, dport = _PORTS.unpack_from(key, 2 * size)
        if not dst_ours:
            return _FALL_THROUGH
        rst = store.rst_key(dst_text, src_text, dport, sport)
        return self._entry(rst, (store.client_key(dst_text), rst))

    def _decide_icmp(self, key: bytes) -> Entry | int:
        size = 4 if len(key) == 13 else 16
        _dst, dst_text, dst_ours = self._address(key[:size])
        if not dst_ours:
            return NOT_OURS
        _bounce, bounce_text, _ = self._address(key[size : 2 * size])
        sport, dport = _PORTS.unpack_from(key, 2 * size)
        icmp = store.icmp_key(dst_text, bounce_text, sport, dport, key[-1])
        return self._entry(icmp, (store.client_key(dst_text), icmp))

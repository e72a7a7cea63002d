"""The fleet in Redis: each node's heartbeat, and what a request would do on each.

Each `pcapd serve` keeps one hash, `<[fleet] prefix><node>` (spelled by
`node_key` only), rewritten every `heartbeat_interval` seconds by a thread
of its own and expiring after HEARTBEATS_MISSED missed beats; a clean stop
deletes it at the first signal, a crash lets it expire. `read_fleet` lists
the hashes (SCAN, pipelined HGETALL; never KEYS) and `judge` answers, for
one node, what a request would capture there, with the controller's own
code (`request_for`, `resolve_interfaces`) and that node's bounds, which the
heartbeat carries.

What `judge` does not see: whether a signature verifies, and replays (the
keys stay on the node; an unsigned request to a node that requires
signatures is judged), duplicates, what the sinks allow (buckets, endpoints) and admission
(free slots, memory, spool, disk), which depend on the moment.

Modules: `node` (`NodeState`, `node_state`, `read_fleet`), `heartbeat`
(`Heartbeat`), `judge` (`judge`, `Verdict`). Every `from pcapd.fleet import
...` of the single module it was still works.
"""

from pcapd.fleet.heartbeat import STOP_TIMEOUT, Heartbeat
from pcapd.fleet.judge import CAPTURE, REJECTED, SILENT, Verdict, judge
from pcapd.fleet.node import (
    SCAN_COUNT,
    NodeInterface,
    NodeState,
    Unreadable,
    node_key,
    node_state,
    read_fleet,
    version,
)

__all__ = [
    "CAPTURE",
    "REJECTED",
    "SCAN_COUNT",
    "SILENT",
    "STOP_TIMEOUT",
    "Heartbeat",
    "NodeInterface",
    "NodeState",
    "Unreadable",
    "Verdict",
    "judge",
    "node_key",
    "node_state",
    "read_fleet",
    "version",
]

"""Reading the ShoDoHFlo key schema back: what the correlator shows.

Keys are spelled and parsed by agents/store.py only. Every read is bounded:
SCAN (never KEYS; each primary of a cluster in turn) with `scan_count` per
call and at most `budget` keys examined per request, values by pipelined MGET
(per slot on a cluster) in chunks of `MGET_CHUNK`,
at most `max_client_keys` keys per client. A request that runs out of budget
says so (`complete=False`) and hands back a cursor to go on from; it never
runs one long command that would stall Redis for everyone else.

A client's keys come from its `<client>;index` set when pcapd's writer keeps
one; otherwise (ShoDoHFlo's agents) from one SCAN pass over the keyspace.
Worst-case memory per request: ~budget x key length, plus the values read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from agents import store
from pcapd.core.config import DEFAULT_MAX_CLIENT_KEYS, DEFAULT_SCAN_BUDGET, DEFAULT_SCAN_COUNT
from pcapd.core.redis_conn import Client, is_cluster, primaries

# Small commands: on a loaded 2-core machine a SCAN of 1000 keys of a 2M-key
# Redis took 5 ms on average and spiked past 10 ms (bench/correlator.py).
MGET_CHUNK = 100
DELETE_CHUNK = 100

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ReaderError(ValueError):
    """Bad input to a read: the message names the parameter and the rule."""


def parse_address(text: str, what: str = "client") -> str:
    """The canonical `str(ipaddress)` spelling, as the agents write it."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ReaderError(f"{what}: {text[:80]!r} is not an IPv4 or IPv6 address") from None


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ReaderError(f"prefix: {text[:80]!r} is not an IPv4 or IPv6 network") from None


def in_network(address: str, network: Network | None) -> bool:
    if network is None:
        return True
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Recon:
    """An RST or ICMP-unreachable sign: the client's probe of `remote` failed."""

    kind: str  # store.RST or store.ICMP
    remote: str
    client_port: int
    remote_port: int
    count: int
    code: int | None = None  # ICMP code


@dataclass(slots=True)
class ClientKeys:
    """Everything the keys say about one client."""

    client: str
    activity: int = 0
    dns: dict[str, list[str]] = field(default_factory=dict)  # address -> owner names
    cname: dict[str, list[str]] = field(default_factory=dict)  # target -> aliases
    nx: dict[str, int] = field(default_factory=dict)
    flows: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, port) -> n
    peers: dict[str, int] = field(default_factory=dict)
    recon: list[Recon] = field(default_factory=list)
    complete: bool = True

    def names(self) -> set[str]:
        found = set(self.nx) | set(self.cname)
        for owners in (*self.dns.values(), *self.cname.values()):
            found.update(owners)
        return found

    def addresses(self) -> set[str]:
        return set(self.dns) | {service for service, _ in self.flows}

    def summary(self) -> dict[str, Any]:
        return {
            "client": self.client, "activity": self.activity, "names": len(self.names()),
            "addresses": len(self.addresses()), "flows": len(self.flows), "nx": len(self.nx),
            "recon": len(self.recon), "complete": self.complete,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Page:
    """One bounded page: `cursor` 0 means the scan is over."""

    items: tuple[Any, ...]
    cursor: int
    scanned: int
    complete: bool


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: bytes | str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


class StoreReader:
    """Bounded reads over one Redis; `redis_client` is passed in (tests hand in
    a private server)."""

    def __init__(
        self,
        redis_client: Client,
        *,
        scan_count: int = DEFAULT_SCAN_COUNT,
        budget: int = DEFAULT_SCAN_BUDGET,
        max_client_keys: int = DEFAULT_MAX_CLIENT_KEYS,
    ) -> None:
        self.redis = redis_client
        self.scan_count = scan_count
        self.budget = budget
        self.max_client_keys = max_client_keys

    # -- raw ---------------------------------------------------------------
    def scan(self, cursor: int, match: str | None, budget: int | None = None) -> Iterator[Any]:
        """SCAN from `cursor`, yielding (next_cursor, keys) per call, until the
        keyspace ends or about `budget` keys were examined.

        On a cluster the keyspaces of the primaries are walked one after the
        other, and the cursor says where: `node cursor x primaries + the
        primary's place` (the primaries in name order), 0 when all are done;
        on one server it is the server's own cursor."""
        nodes = self._primaries()
        count_nodes = len(nodes)
        index, node_cursor = cursor % count_nodes, cursor // count_nodes
        left = self.budget if budget is None else budget
        while left > 0:
            count = min(self.scan_count, left)
            node_cursor, keys = nodes[index].scan(node_cursor, match=match, count=count)
            node_cursor = int(node_cursor)
            left -= count
            if node_cursor == 0:
                index += 1
            done = index == count_nodes
            yield 0 if done else node_cursor * count_nodes + index, [_text(k) for k in keys]
            if done:
                return

    def _primaries(self) -> list[redis.Redis]:
        nodes = list(primaries(self.redis))
        if len(nodes) > 1:
            nodes.sort(key=lambda n: str(n.connection_pool.connection_kwargs.get("port", "")))
            nodes.sort(key=lambda n: str(n.connection_pool.connection_kwargs.get("host", "")))
        return nodes

    def mget(self, keys: Sequence[str]) -> list[str | None]:
        if is_cluster(self.redis):  # MGET per slot, the slots' nodes pipelined by redis-py
            values: list[str | None] = []
            for start in range(0, len(keys), MGET_CHUNK):
                chunk = self.redis.mget_nonatomic(keys[start : start + MGET_CHUNK])
                values.extend(None if v is None else _text(v) for v in chunk)
            return values
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(keys), MGET_CHUNK):
            pipe.mget(keys[start : start + MGET_CHUNK])
        values = []
        for chunk in pipe.execute(raise_on_error=False):
            if isinstance(chunk, Exception):  # another type under a schema name
                chunk = [None] * min(MGET_CHUNK, len(keys) - len(values))
            values.extend(None if v is None else _text(v) for v in chunk)
        return values

    # -- clients -----------------------------------------------------------
    def keys_of(self, clients: Collection[str]) -> tuple[dict[str, list[str]], bool]:
        """Each client's keys (index, else one shared SCAN), and whether the
        answer is complete."""
        pipe = self.redis.pipeline(transaction=False)
        for client in clients:
            pipe.sscan(store.index_key(client), 0, count=self.max_client_keys)
        found: dict[str, list[str]] = {}
        unindexed: set[str] = set()
        complete = True
        for client, reply in zip(clients, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception) or not reply[1]:
                unindexed.add(client)
                continue
            cursor, members = reply
            found[client] = [_text(m) for m in members]
            complete &= int(cursor) == 0
        if unindexed:
            match = (
                store.client_keys_pattern(next(iter(unindexed))) if len(unindexed) == 1 else None
            )
            done = False
            for cursor, keys in self.scan(0, match):
                for key in keys:
                    client = key.split(";", 1)[0]
                    if client in unindexed and not key.startswith("client;"):
                        found.setdefault(client, []).append(key)
                done = cursor == 0
            complete &= done
        for client, keys in found.items():
            if len(keys) > self.max_client_keys:
                found[client] = keys[: self.max_client_keys]
                complete = False
        return found, complete

    def read_clients(self, clients: Sequence[str]) -> list[ClientKeys]:
        """Every client's artifacts, read with one key listing and pipelined MGETs."""
        keys_by_client, complete = self.keys_of(clients)
        flat = [store.client_key(c) for c in clients]
        for client in clients:
            flat.extend(keys_by_client.get(client, ()))
        values = self.mget(flat)
        result = {c: ClientKeys(c, complete=complete) for c in clients}
        for key, value in zip(flat, values, strict=True):
            if value is not None:
                _add(result, key, value)
        return [result[c] for c in clients]

    def read_client(self, client: str) -> ClientKeys:
        return self.read_clients([client])[0]

    def clients_page(
        self,
        cursor: int = 0,
        *,
        limit: int,
        prefix: Network | None = None,
        search: str | None = None,
    ) -> Page:
        """Up to `limit` clients (as ClientKeys), from one bounded SCAN page.

        Without `search`, SCAN MATCH `client;*`; with it, every key is looked
        at (names live in values as well as keys), so a page may need several
        requests: follow `cursor` until it is 0.
        """
        needle = (search or "").strip().lower()
        chosen: dict[str, None] = {}
        scanned = 0
        next_cursor = cursor
        match = None if needle else store.clients_pattern()
        for next_cursor, keys in self.scan(  # noqa: B007 (last cursor wanted)
            cursor, match
        ):
            scanned += len(keys)
            found = self._matching(keys, needle) if needle else self._client_names(keys)
            for client in found:
                if in_network(client, prefix):
                    chosen[client] = None
            if len(chosen) >= limit:
                break
        clients = sorted(chosen, key=_address_order)
        return Page(tuple(self.read_clients(clients)), next_cursor, scanned, next_cursor == 0)

    @staticmethod
    def _client_names(keys: Iterable[str]) -> list[str]:
        parsed = (store.parse_key(k) for k in keys)
        return [k.client for k in parsed if k is not None and k.kind == store.CLIENT]

    def _matching(self, keys: Sequence[str], needle: str) -> set[str]:
        """Clients with a name or address containing `needle` in these keys."""
        hits: set[str] = set()
        lists: list[tuple[str, store.Key]] = []
        for text in keys:
            key = store.parse_key(text)
            if key is None or key.kind in (store.CLIENT, store.INDEX):
                continue
            if any(needle in f.lower() for f in key.fields):
                hits.add(key.client)
            elif key.kind in (store.DNS, store.CNAME):
                lists.append((text, key))
        values = self.mget([text for text, _ in lists])
        for (_, key), value in zip(lists, values, strict=True):
            if value is not None and needle in value.lower():
                hits.add(key.client)
        return hits

    # -- pivots --------------------------------------------------------------
    def resolvers_of(self, name: str, cursor: int = 0) -> Page:
        """Clients that resolved `name`: (client, how) with how one of
        `address <a>`, `cname <target>`, `alias <alias>`, `nx`."""
        name = name.strip().lower()
        hits: list[tuple[str, str]] = []
        scanned = 0
        next_cursor = cursor
        for next_cursor, keys in self.scan(  # noqa: B007 (last cursor wanted)
            cursor, None
        ):
            scanned += len(keys)
            lists: list[tuple[str, store.Key]] = []
            for text in keys:
                key = store.parse_key(text)
                if key is None:
                    continue
                if key.kind == store.NX and key.fields[0] == name:
                    hits.append((key.client, "nx"))
                elif key.kind == store.CNAME and key.fields[0] == name:
                    hits.append((key.client, "cname target"))
                elif key.kind in (store.DNS, store.CNAME):
                    lists.append((text, key))
            for (_, key), value in zip(lists, self.mget([t for t, _ in lists]), strict=True):
                if value is not None and name in store.members(value):
                    kind = "address" if key.kind == store.DNS else "alias of"
                    hits.append((key.client, f"{kind} {key.fields[0]}"))
        return Page(tuple(sorted(set(hits))), next_cursor, scanned, next_cursor == 0)

    def talkers_to(self, address: str, port: int | None = None, cursor: int = 0) -> Page:
        """Clients with a flow to `address` (and `port`): (client, port, count)."""
        fields = (address,) if port is None else (address, str(port))
        match = store.kind_pattern(store.FLOW, *fields)
        found: list[str] = []
        scanned = 0
        next_cursor = cursor
        for next_cursor, keys in self.scan(  # noqa: B007 (last cursor wanted)
            cursor, match
        ):
            scanned += len(keys)
            found.extend(keys)
        flows = []
        for text, value in zip(found, self.mget(found), strict=True):
            key = store.parse_key(text)
            if key is None or key.kind != store.FLOW or key.fields[0] != address:
                continue
            if value is not None and (port is None or _port(key.fields[1]) == port):
                flows.append((key.client, _port(key.fields[1]), _int(value)))
        return Page(tuple(sorted(flows)), next_cursor, scanned, next_cursor == 0)

    # -- changes -------------------------------------------------------------
    def clear_client(self, client: str) -> tuple[int, bool]:
        """UNLINK every key of `client` (its counter and index too); returns
        how many went and whether every key was found."""
        keys_by_client, complete = self.keys_of([client])
        keys = [store.client_key(client), store.index_key(client)]
        keys += keys_by_client.get(client, [])
        removed = 0
        for start in range(0, len(keys), DELETE_CHUNK):
            removed += int(self.redis.unlink(*keys[start : start + DELETE_CHUNK]))
        return removed, complete


def _add(result: dict[str, ClientKeys], text: str, value: str) -> None:
    key = store.parse_key(text)
    if key is None or key.client not in result:
        return
    data = result[key.client]
    kind, fields = key.kind, key.fields
    if kind == store.CLIENT:
        data.activity = _int(value)
    elif kind == store.DNS:
        data.dns[fields[0]] = store.members(value)
    elif kind == store.CNAME:
        data.cname[fields[0]] = store.members(value)
    elif kind == store.NX:
        data.nx[fields[0]] = _int(value)
    elif kind == store.FLOW:
        data.flows[(fields[0], _port(fields[1]))] = _int(value)
    elif kind == store.PEER:
        data.peers[fields[0]] = _int(value)
    elif kind in (store.RST, store.ICMP):
        ports = fields[1].split(":")
        if len(ports) == 2:
            code = _port(fields[2]) if kind == store.ICMP else None
            data.recon.append(
                Recon(kind, fields[0], _port(ports[0]), _port(ports[1]), _int(value), code)
            )


def _address_order(address: str) -> tuple[int, int]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0)
    return (parsed.version, int(parsed))

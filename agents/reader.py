"""Reading the ShoDoHFlo key schema back: what the correlator shows.

Keys are spelled and parsed by agents/store.py only. Every Redis command is
small and every request's work is bounded, so a read never holds Redis for
long nor outlives its HTTP request:

- SCAN/SSCAN with COUNT `scan_count`: one call walks about that many keys
  whatever its MATCH, so a sparse pattern takes many calls, not a big one;
  on a cluster each primary is walked in turn;
- per request at most `budget` keys examined and `seconds` spent scanning;
  a request that stops early says so (`complete=False`) and hands back the
  SCAN cursor to go on from (SCAN's guarantee: every key present for the
  whole walk is returned, one written meanwhile may or may not be);
- values by MGET of `keys_per_command` keys (per slot on a cluster),
  pipelined `keys_per_pipeline` keys a round trip (Redis serves a pipeline
  without serving others between);
- at most `max_client_keys` keys per client, and `max_request_keys` in all
  for the clients one request reads (a page of 500 busy clients would
  otherwise read 500 x max_client_keys); no HGETALL/LRANGE/KEYS at all.

A client's keys come from its `<client>;index` set when pcapd's writer keeps
one and `read_index` is on; otherwise (ShoDoHFlo's agents), or when Redis
refuses the SSCAN (an ACL, a key of another type: `IndexRefused` says which),
from a SCAN of the keyspace. Worst-case memory per request: ~budget x key
length, plus values.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import redis

from agents import store
from agents.reader_values import (
    ClientKeys,
    IndexRefused,
    Network,
    Page,
    _add,
    _address_order,
    _int,
    _port,
    _text,
    in_network,
)
from pcapd.core.config import (
    DEFAULT_KEYS_PER_COMMAND,
    DEFAULT_KEYS_PER_PIPELINE,
    DEFAULT_MAX_CLIENT_KEYS,
    DEFAULT_MAX_REQUEST_KEYS,
    DEFAULT_SCAN_BUDGET,
    DEFAULT_SCAN_COUNT,
    DEFAULT_SCAN_SECONDS,
)
from pcapd.core.redis_conn import Client, is_cluster, primaries


class StoreReader:
    """Bounded reads over one Redis; `redis_client` is passed in (tests hand in
    a private server)."""

    def __init__(
        self,
        redis_client: Client,
        *,
        scan_count: int = DEFAULT_SCAN_COUNT,
        budget: int = DEFAULT_SCAN_BUDGET,
        seconds: float = DEFAULT_SCAN_SECONDS,
        keys_per_command: int = DEFAULT_KEYS_PER_COMMAND,
        keys_per_pipeline: int = DEFAULT_KEYS_PER_PIPELINE,
        max_client_keys: int = DEFAULT_MAX_CLIENT_KEYS,
        max_request_keys: int = DEFAULT_MAX_REQUEST_KEYS,
        read_index: bool = True,
    ) -> None:
        self.redis = redis_client
        self.scan_count = scan_count
        self.budget = budget
        self.seconds = seconds
        self.keys_per_command = keys_per_command
        self.keys_per_pipeline = max(keys_per_pipeline, keys_per_command)
        self.max_client_keys = max_client_keys
        self.max_request_keys = max_request_keys
        self.read_index = read_index

    # -- raw ---------------------------------------------------------------
    def scan(self, cursor: int, match: str | None) -> Iterator[tuple[int, list[str]]]:
        """SCAN from `cursor`, one small call at a time, yielding (next_cursor,
        keys) per call, until the keyspace ends, about `budget` keys were
        examined or `seconds` went by (the caller's work between calls
        counts: it is the request's time).

        On a cluster the keyspaces of the primaries are walked one after the
        other, and the cursor says where: `node cursor x primaries + the
        primary's place` (the primaries in name order), 0 when all are done;
        on one server it is the server's own cursor."""
        nodes = self._primaries()
        count_nodes = len(nodes)
        index, node_cursor = cursor % count_nodes, cursor // count_nodes
        left = self.budget
        deadline = time.monotonic() + self.seconds
        while left > 0:
            count = min(self.scan_count, left)
            node_cursor, keys = nodes[index].scan(node_cursor, match=match, count=count)
            node_cursor = int(node_cursor)
            left -= count
            if node_cursor == 0:
                index += 1
            done = index == count_nodes
            yield 0 if done else node_cursor * count_nodes + index, [_text(k) for k in keys]
            if done or time.monotonic() >= deadline:
                return

    def _primaries(self) -> list[redis.Redis]:
        nodes = list(primaries(self.redis))
        if len(nodes) > 1:
            nodes.sort(key=lambda n: str(n.connection_pool.connection_kwargs.get("port", "")))
            nodes.sort(key=lambda n: str(n.connection_pool.connection_kwargs.get("host", "")))
        return nodes

    def mget(self, keys: Sequence[str]) -> list[str | None]:
        """Values of `keys`, None for a missing key or one of another type."""
        values: list[str | None] = []
        if is_cluster(self.redis):  # MGET per slot, the slots' nodes pipelined by redis-py
            for chunk in _chunks(keys, self.keys_per_command):
                values.extend(
                    None if v is None else _text(v) for v in self.redis.mget_nonatomic(chunk)
                )
            return values
        for part in _chunks(keys, self.keys_per_pipeline):
            pipe = self.redis.pipeline(transaction=False)
            chunks = list(_chunks(part, self.keys_per_command))
            for chunk in chunks:
                pipe.mget(chunk)
            # MGET answers nil for a key of another type, so an error reply is
            # Redis refusing (NOPERM, LOADING, ...): raised, never read as
            # "no value", which would show a client emptier than it is.
            for reply in pipe.execute():
                values.extend(None if v is None else _text(v) for v in reply)
        return values

    # -- clients -----------------------------------------------------------
    def keys_of(
        self, clients: Collection[str]
    ) -> tuple[dict[str, list[str]], bool, dict[str, IndexRefused]]:
        """Each client's keys (index, else one shared SCAN), whether the answer
        is complete, and the clients whose index Redis refused to read (found
        by the SCAN). Each client gets at most `max_client_keys`, and an equal
        share of `max_request_keys` when there are many."""
        found: dict[str, list[str]] = {}
        unindexed, complete = set(clients), True
        refused: dict[str, IndexRefused] = {}
        cap = min(self.max_client_keys, max(1, self.max_request_keys // max(1, len(clients))))
        if self.read_index:
            found, unindexed, complete, refused = self._indexed(clients, cap)
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
            if len(keys) > cap:
                found[client] = keys[:cap]
                complete = False
        return found, complete, refused

    def _indexed(
        self, clients: Collection[str], cap: int
    ) -> tuple[dict[str, list[str]], set[str], bool, dict[str, IndexRefused]]:
        """Members of each client's index: one pipelined SSCAN call per client
        (small sets answer whole), then further calls for a big set until
        `cap` members. Clients without an index come back in the set, and
        those whose SSCAN Redis refused in the dict too."""
        found: dict[str, list[str]] = {}
        unindexed: set[str] = set()
        refused: dict[str, IndexRefused] = {}
        going: dict[str, int] = {}
        for chunk in _chunks(list(clients), self.keys_per_pipeline // self.scan_count or 1):
            pipe = self.redis.pipeline(transaction=False)
            for client in chunk:
                pipe.sscan(store.index_key(client), 0, count=self.scan_count)
            for client, reply in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, Exception):  # NOPERM, WRONGTYPE: SCAN finds its keys
                    refused[client] = IndexRefused("SSCAN", store.index_key(client), str(reply))
                if isinstance(reply, Exception) or not reply[1]:
                    unindexed.add(client)
                    continue
                found[client] = [_text(m) for m in reply[1]]
                if int(reply[0]):
                    going[client] = int(reply[0])
        for client, cursor in going.items():
            while cursor and len(found[client]) < cap:
                next_cursor, members = self.redis.sscan(
                    store.index_key(client), cursor, count=self.scan_count
                )
                found[client].extend(_text(m) for m in members)
                cursor = int(next_cursor)
            going[client] = cursor
        return found, unindexed, not any(going.values()), refused

    def read_clients(self, clients: Sequence[str]) -> list[ClientKeys]:
        """Every client's artifacts, read with one key listing and pipelined MGETs."""
        keys_by_client, complete, refused = self.keys_of(clients)
        flat = [store.client_key(c) for c in clients]
        for client in clients:
            flat.extend(keys_by_client.get(client, ()))
        flat = list(dict.fromkeys(flat))  # SCAN may return a key twice
        values = self.mget(flat)
        result = {
            c: ClientKeys(c, complete=complete, index_refused=refused.get(c)) for c in clients
        }
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
        return Page(
            tuple(self.read_clients(clients)),
            next_cursor,
            scanned,
            next_cursor == 0,
            len(self._primaries()),
        )

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
        return Page(
            tuple(sorted(set(hits))), next_cursor, scanned, next_cursor == 0, len(self._primaries())
        )

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
        found = list(dict.fromkeys(found))  # SCAN may return a key twice
        for text, value in zip(found, self.mget(found), strict=True):
            key = store.parse_key(text)
            if key is None or key.kind != store.FLOW or key.fields[0] != address:
                continue
            if value is not None and (port is None or _port(key.fields[1]) == port):
                flows.append((key.client, _port(key.fields[1]), _int(value)))
        return Page(
            tuple(sorted(flows)), next_cursor, scanned, next_cursor == 0, len(self._primaries())
        )

    # -- changes -------------------------------------------------------------
    def clear_client(self, client: str) -> tuple[int, bool]:
        """UNLINK every key of `client` (its counter and index too); returns
        how many went and whether every key was found."""
        keys_by_client, complete, _ = self.keys_of([client])
        keys = [store.client_key(client), store.index_key(client)]
        keys += keys_by_client.get(client, [])
        removed = 0
        for chunk in _chunks(keys, self.keys_per_command):
            removed += int(self.redis.unlink(*chunk))
        return removed, complete


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

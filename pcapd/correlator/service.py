"""The correlator's views as plain data: the web page, the JSON API and
`pcapd correlate` all call these, so they show the same thing."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from agents.reader import StoreReader
from agents.reader_values import (
    IndexRefused,
    Network,
    Page,
    ReaderError,
    distinct_refusals,
    parse_address,
    parse_network,
)
from pcapd.core.config import MAX_PAGE_SIZE, Config
from pcapd.core.configread import MAX_PORT
from pcapd.core.fields import whole_number
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, connect
from pcapd.correlator.chains import BY, ClientView, build_view

log = logging.getLogger("pcapd.correlator")
MAX_SEARCH = 253  # the longest DNS name
# A command that failed is sent once more, at once: a pooled connection Redis
# closed meanwhile (a restart) is opened afresh. redis-py's default, 10
# retries with backoff, kept a request on a hung Redis for 113 s.
REDIS_RETRIES = 1
# Redis connections a server thread may hold at once: a live page's
# subscription and one for its commands.
CONNECTIONS_PER_THREAD = 2
# Without a prefix, "other clients" are those in the client's /24 or /64.
OTHERS_PREFIX = {4: 24, 6: 64}


@dataclass(frozen=True, slots=True)
class ClientsQuery:
    prefix: Network | None
    search: str | None
    cursor: int
    limit: int


# A Redis cursor is 64 bits (20 digits); a cluster's also counts the primaries.
MAX_CURSOR = 10**24 - 1


def _cursor(text: str | None) -> int:
    text = (text or "0").strip()
    cursor = whole_number(text, 0, MAX_CURSOR)
    if cursor is None:
        raise ReaderError(f"cursor: {text[:24]!r} is not a SCAN cursor (a whole number)")
    return cursor


def clients_query(args: Mapping[str, str], config: Config) -> ClientsQuery:
    """Query parameters `prefix`, `q`, `cursor`, `limit`, checked."""
    prefix = parse_network(args["prefix"]) if (args.get("prefix") or "").strip() else None
    search = (args.get("q") or "").strip() or None
    if search is not None and len(search) > MAX_SEARCH:
        raise ReaderError(f"q: {len(search)} characters; the limit is {MAX_SEARCH}")
    limit_text = (args.get("limit") or str(config.correlator.page_size)).strip()
    limit = whole_number(limit_text, 1, MAX_PAGE_SIZE)
    if limit is None:
        raise ReaderError(
            f"limit: {limit_text[:20]!r} is not a whole number from 1 to {MAX_PAGE_SIZE}"
        )
    return ClientsQuery(prefix, search, _cursor(args.get("cursor")), limit)


def redis_client(config: Config) -> Client:
    """The correlator's Redis client: `[correlator] redis_timeout` to connect
    and per command, REDIS_RETRIES, and a pool sized for `threads` (redis-py's
    default of 100 refused connections once threads passed 50 with live
    pages open)."""
    c = config.correlator
    return connect(
        config.redis, socket_timeout=c.redis_timeout, socket_connect_timeout=c.redis_timeout,
        retry=Retry(NoBackoff(), REDIS_RETRIES),
        max_connections=CONNECTIONS_PER_THREAD * c.threads,
    )  # fmt: skip


class Correlator:
    def __init__(self, redis_client: Client, config: Config) -> None:
        c = config.correlator
        self.config = config
        self.redis = redis_client
        self.reader = StoreReader(
            redis_client, scan_count=c.scan_count, budget=c.scan_budget,
            seconds=c.scan_seconds, keys_per_command=c.keys_per_command,
            keys_per_pipeline=c.keys_per_pipeline, max_client_keys=c.max_client_keys,
            max_request_keys=c.max_request_keys, read_index=c.read_index,
        )  # fmt: skip
        self._told: set[tuple[str, str]] = set()  # index refusals logged already
        self._told_lock = threading.Lock()

    def _tell(self, refused: Iterable[IndexRefused]) -> None:
        """Log each cause of reading by SCAN the first time this process meets
        it: the page says it on every request, the log once (a page of 50
        refused clients, refreshed, is one line, not one per client per load)."""
        with self._told_lock:
            new = [r for r in refused if r.cause not in self._told]
            self._told.update(r.cause for r in new)
        for r in new:
            event(log, "correlator_index_refused", logging.WARNING, command=r.command, key=r.key,
                  error=r.error, redis=self.config.redis.describe(),
                  fallback="SCAN")  # fmt: skip

    def clients(self, query: ClientsQuery) -> dict[str, Any]:
        page = self.reader.clients_page(
            query.cursor, limit=query.limit, prefix=query.prefix, search=query.search
        )
        refused = distinct_refusals(c.index_refused for c in page.items)
        self._tell(refused)
        return {
            "clients": [c.summary() for c in page.items], **_paging(page),
            "prefix": str(query.prefix) if query.prefix else None, "q": query.search,
            "index_refused": [r.as_dict() for r in refused],
        }  # fmt: skip

    def client_view(
        self, client: str, by: str = "fqdn", others: bool = False, prefix: str | None = None
    ) -> ClientView:
        client = parse_address(client)
        if by not in BY:
            raise ReaderError(f"by: {by[:20]!r} is not one of {', '.join(BY)}")
        own = self.reader.read_client(client)
        neighbours = None
        if others:
            network = self._others_prefix(client, prefix)
            page = self.reader.clients_page(
                0, limit=self.config.correlator.max_prefix_clients, prefix=network
            )
            neighbours = [c for c in page.items if c.client != client]
        view = build_view(own, by, neighbours)
        self._tell(view.index_refused)
        return view

    @staticmethod
    def _others_prefix(client: str, prefix: str | None) -> Network:
        if prefix and prefix.strip():
            return parse_network(prefix)
        address = ipaddress.ip_address(client)
        return ipaddress.ip_network(f"{address}/{OTHERS_PREFIX[address.version]}", strict=False)

    def who_resolved(self, name: str, cursor: str | None = None) -> dict[str, Any]:
        name = name.strip().lower()
        if not name or len(name) > MAX_SEARCH + 1:
            raise ReaderError(f"name: give a DNS name of 1 to {MAX_SEARCH} characters")
        if not name.endswith("."):
            name += "."
        page = self.reader.resolvers_of(name, _cursor(cursor))
        found = [{"client": c, "how": how} for c, how in page.items]
        return {"name": name, "clients": found, **_paging(page)}

    def who_talked(
        self, address: str, port: str | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        address = parse_address(address, "address")
        number = None
        if port and port.strip():
            number = whole_number(port.strip(), 0, MAX_PORT)
            if number is None:
                raise ReaderError(f"port: {port[:20]!r} is not a port number (0-{MAX_PORT})")
        page = self.reader.talkers_to(address, number, _cursor(cursor))
        flows = [{"client": c, "port": p, "count": n} for c, p, n in page.items]
        return {"address": address, "port": number, "flows": flows, **_paging(page)}

    def clear(self, client: str) -> dict[str, Any]:
        removed, complete = self.reader.clear_client(parse_address(client))
        return {"client": client, "removed": removed, "complete": complete}


def _paging(page: Page) -> dict[str, Any]:
    """`cursor` to go on from (0: done), keys SCAN returned for this page (those
    matching its pattern, not all it walked past), and the share of the
    keyspace the walk has covered so far."""
    return {"cursor": page.cursor, "scanned": page.scanned, "complete": page.complete,
            "progress": round(page.progress, 4)}  # fmt: skip

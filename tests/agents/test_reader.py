"""The reader against a real redis-server, keys written by the agents' writer
(with and without the client index, as pcapd's and ShoDoHFlo's agents)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import redis

from agents import store
from agents.flow.config import parse_flow_config
from agents.reader import StoreReader
from agents.reader_values import ReaderError, parse_address, parse_network
from agents.redis_writer import RedisWriter, make_writer
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret
from tests.agents.dnstap.builders import response_wire, tap_payload
from tests.agents.dnstap.harness import running_agent
from tests.agents.writes import record_nxdomain
from tests.helpers import RedisServer, wait_for

C = "10.1.0.5"
C6 = "2001:db8:1::5"


def fill(url: str, *, index: bool) -> None:
    config = RedisConfig(url=Secret(url))  # one server, or a cluster seed
    writer = RedisWriter(lambda: connect(config), index=index, flush_interval=0.01)
    writer.start()
    for client in (C, C6):
        writer.incr(store.client_key(client))
        writer.append(store.cname_key(client, "mid.example.test."), "alias.example.test.")
        writer.append(store.dns_key(client, "198.51.100.7"), "mid.example.test.")
        writer.append(store.dns_key(client, "2001:db8::7"), "mid.example.test.")
        writer.incr(store.nx_key(client, "nope.example.test."))
        writer.incr(store.flow_key(client, "198.51.100.7", 443))
        writer.incr(store.flow_key(client, "203.0.113.9", 853))
        writer.incr(store.rst_key(client, "203.0.113.9", 40000, 22))
        writer.incr(store.icmp_key(client, "203.0.113.9", 40001, 7777, 3))
        writer.incr(store.peer_key(client, "203.0.113.9"))
    # A name holding `;` and glob characters: the agents escape `;` as `\;`.
    writer.append(store.dns_key(C, "192.0.2.1"), "we\\;ird*[x].example.test.")
    writer.stop()
    assert writer.stats.written_ops == 21


def walk_pages(reader: StoreReader) -> tuple[int, set[str]]:
    """Every clients page from cursor 0 until the cursor is 0 again: how many
    pages, and the clients seen."""
    seen: set[str] = set()
    cursor, pages = 0, 0
    while True:
        part = reader.clients_page(cursor, limit=50)
        seen |= {c.client for c in part.items}
        pages += 1
        if part.cursor == 0:
            return pages, seen
        cursor = part.cursor


@pytest.mark.parametrize("index", [True, False], ids=["index", "scan"])
def test_a_client_read_back(redis_srv: RedisServer, index: bool) -> None:
    fill(redis_srv.url, index=index)
    r = redis_srv.client()
    assert (r.type(store.index_key(C)) == b"set") is index
    data = StoreReader(r, scan_count=10).read_client(C)
    assert data.complete
    assert data.activity == 1
    assert data.cname == {"mid.example.test.": ["alias.example.test."]}
    assert data.dns == {
        "198.51.100.7": ["mid.example.test."],
        "2001:db8::7": ["mid.example.test."],
        "192.0.2.1": ["we\\;ird*[x].example.test."],
    }
    assert data.nx == {"nope.example.test.": 1}
    assert data.flows == {("198.51.100.7", 443): 1, ("203.0.113.9", 853): 1}
    assert {(x.kind, x.remote, x.client_port, x.remote_port, x.code) for x in data.recon} == {
        ("rst", "203.0.113.9", 40000, 22, None),
        ("icmp", "203.0.113.9", 40001, 7777, 3),
    }
    assert data.summary() == {
        "client": C, "activity": 1, "names": 4, "addresses": 4, "flows": 2, "nx": 1,
        "recon": 2, "complete": True,
    }  # fmt: skip


def test_clients_page_prefix_search_and_cursor(redis_srv: RedisServer) -> None:
    fill(redis_srv.url, index=False)
    r = redis_srv.client()
    for n in range(30):
        r.set(store.client_key(f"10.9.0.{n}"), 1)
    reader = StoreReader(r, scan_count=10)
    page = reader.clients_page(limit=500)
    assert page.complete and page.cursor == 0
    assert len(page.items) == 32
    v6 = reader.clients_page(limit=50, prefix=parse_network("2001:db8::/32"))
    assert [c.client for c in v6.items] == [C6]
    v4 = reader.clients_page(limit=50, prefix=parse_network("10.1.0.0/16"))
    assert [c.client for c in v4.items] == [C]
    # A small budget ends a page early with a cursor to go on from.
    pages, seen = walk_pages(StoreReader(r, scan_count=10, budget=10))
    assert pages > 1 and len(seen) == 32
    # Search covers names stored in values, names in keys and addresses.
    for needle, want in (("alias.example", {C, C6}), ("we\\;ird", {C}), ("2001:db8::7", {C, C6}),
                         ("NOPE.EXAMPLE", {C, C6}), ("nothing-here", set())):  # fmt: skip
        found = reader.clients_page(limit=50, search=needle)
        assert {c.client for c in found.items} == want, needle


def test_pivots(redis_srv: RedisServer) -> None:
    fill(redis_srv.url, index=True)
    reader = StoreReader(redis_srv.client(), scan_count=7)
    assert set(reader.resolvers_of("mid.example.test.").items) == {
        (c, how) for c in (C, C6)
        for how in ("address 198.51.100.7", "address 2001:db8::7", "cname target")
    }  # fmt: skip
    assert set(reader.resolvers_of("alias.example.test.").items) == {
        (C, "alias of mid.example.test."), (C6, "alias of mid.example.test.")
    }  # fmt: skip
    assert reader.resolvers_of("we\\;ird*[x].example.test.").items == ((C, "address 192.0.2.1"),)
    assert reader.talkers_to("203.0.113.9").items == ((C, 853, 1), (C6, 853, 1))
    assert reader.talkers_to("203.0.113.9", 853).items == ((C, 853, 1), (C6, 853, 1))
    assert reader.talkers_to("203.0.113.9", 80).items == ()


def test_clear_a_client(redis_srv: RedisServer) -> None:
    fill(redis_srv.url, index=True)
    r = redis_srv.client()
    removed, complete = StoreReader(r).clear_client(C)
    assert complete and removed == 12  # 10 keys, the counter and the index
    assert not [k for k in r.scan_iter(count=100) if k.startswith(C.encode() + b";")]
    assert StoreReader(r).read_client(C6).flows  # the other client is untouched


def test_keys_of_another_type_are_skipped(redis_srv: RedisServer) -> None:
    r = redis_srv.client()
    r.set(store.client_key(C), 3)
    r.rpush(store.dns_key(C, "192.0.2.9"), "x")  # not ours: a list under a schema name
    r.set(store.flow_key(C, "192.0.2.9", 80), 2)
    r.set("someone-else;key", "x")
    data = StoreReader(r).read_client(C)
    assert data.flows == {("192.0.2.9", 80): 2} and data.dns == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.300", "client: '10.0.0.300' is not an IPv4 or IPv6 address"),
        ("<script>", "client: '<script>' is not an IPv4 or IPv6 address"),
    ],
)
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ReaderError) as caught:
        parse_address(text)
    assert str(caught.value) == message


def test_addresses_and_networks_are_canonical() -> None:
    assert parse_address(" 2001:DB8:0::1 ") == "2001:db8::1"
    assert parse_network("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(ReaderError, match=r"prefix: '10\.0\.0\.0/33' is not"):
        parse_network("10.0.0.0/33")


def test_agents_keep_the_index_when_configured(redis_srv: RedisServer, tmp_path: Path) -> None:
    chain = response_wire(
        "alias.example.test.", "A",
        [("alias.example.test.", "CNAME", "target.example.test."),
         ("target.example.test.", "A", "198.51.100.7")],
    )  # fmt: skip
    with running_agent(redis_srv.url, tmp_path / "tap.sock", client_index=True) as ra:
        ra.send([tap_payload(chain, client=C)])
        r = redis_srv.client()
        wait_for(lambda: r.exists(store.index_key(C)) == 1)
        wait_for(ra.flushed)
    members = {m.decode() for m in r.smembers(store.index_key(C)) if isinstance(m, bytes)}
    assert members == {store.dns_key(C, "198.51.100.7"), store.cname_key(C, "target.example.test.")}
    assert 0 < r.ttl(store.index_key(C)) <= 900
    data = StoreReader(r, budget=1).read_client(C)  # a budget too small to scan: the index it is
    assert data.complete and data.dns == {"198.51.100.7": ["target.example.test."]}
    flow = parse_flow_config({"client_index": True})
    assert make_writer(flow, lambda: r).index is True
    assert make_writer(parse_flow_config({}), lambda: r).index is False


def test_an_nx_name_holding_a_semicolon(redis_srv: RedisServer) -> None:
    """record_nxdomain stores `;` unescaped, as ShoDoHFlo does: still one name."""
    writer = RedisWriter(lambda: redis_srv.client(), flush_interval=0.01)
    writer.start()
    record_nxdomain(writer, C, "a\\;b.example.test.")
    writer.stop()
    assert redis_srv.client().exists(f"{C};a;b.example.test.;nx") == 1
    assert StoreReader(redis_srv.client()).read_client(C).nx == {"a;b.example.test.": 1}


# -- bounded pages ----------------------------------------------------------
SERVICE = "198.51.100.80"


def write_flows(r: redis.Redis, first: int, n: int, *, filler: int = 3) -> set[tuple[str, int]]:
    """`n` clients with a flow to SERVICE:443 (and `filler` other keys each),
    spelled by store.py; returns the (client, port) pairs written."""
    pipe = r.pipeline(transaction=False)
    written = set()
    for k in range(first, first + n):
        client = f"10.7.{k // 256}.{k % 256}"
        pipe.set(store.flow_key(client, SERVICE, 443), k % 5 + 1)
        pipe.set(store.dns_key(client, SERVICE), "svc.example.test.")
        for j in range(filler):
            pipe.set(store.flow_key(client, f"192.0.2.{j}", 80), 1)
        written.add((client, 443))
    pipe.execute()
    return written


def walk(page_of: Any, between: Any = None) -> tuple[list[Any], list[float], int]:
    """Follow the cursor to the end: every item, the progress after each page,
    and the number of pages."""
    items: list[Any] = []
    progress: list[float] = []
    cursor, pages = 0, 0
    while True:
        page = page_of(cursor)
        items.extend(page.items)
        progress.append(page.progress)
        pages += 1
        assert page.complete == (page.cursor == 0)
        if page.complete:
            return items, progress, pages
        cursor = page.cursor
        if between is not None:
            between(pages)
        assert pages < 10_000


def test_pivot_pages_find_every_key_once(redis_srv: RedisServer) -> None:
    """Small pages with a cursor: each flow exactly once, the counts intact,
    even though keys are written between pages (enough to make Redis grow
    its table mid-walk); new ones may or may not be found, never twice."""
    r = redis_srv.client()
    before = write_flows(r, 0, 1500)
    added: set[tuple[str, int]] = set()

    def write_more(pages: int) -> None:
        if pages % 5 == 0 and len(added) < 6000:
            added.update(write_flows(r, 1500 + len(added), 600))

    reader = StoreReader(r, scan_count=10, budget=200)
    items, progress, pages = walk(lambda c: reader.talkers_to(SERVICE, 443, c), write_more)
    assert len(added) >= 6000 and pages > 20
    pairs = [(client, port) for client, port, _ in items]
    assert len(pairs) == len(set(pairs)), "a flow was found twice"
    assert before <= set(pairs) <= before | added
    assert sum(n for c, _, n in items if (c, 443) in before) == sum(
        int(r.get(store.flow_key(c, SERVICE, 443)) or 0) for c, _ in before
    )
    assert progress == sorted(progress) and progress[-1] == 1.0 and progress[0] < 0.2


def test_name_pivot_pages_find_every_client_once(redis_srv: RedisServer) -> None:
    r = redis_srv.client()
    written = {c for c, _ in write_flows(r, 0, 800)}
    reader = StoreReader(r, scan_count=10, budget=300)
    items, _, pages = walk(lambda c: reader.resolvers_of("svc.example.test.", c))
    assert pages > 10
    assert sorted(items) == sorted((c, f"address {SERVICE}") for c in written)


def test_a_page_stops_after_scan_seconds(redis_srv: RedisServer) -> None:
    """A budget of keys Redis could walk for a long while: the time bound ends
    the page first, with a cursor to go on from."""
    r = redis_srv.client()
    write_flows(r, 0, 10_000)  # 50,000 keys
    reader = StoreReader(r, scan_count=10, budget=1_000_000, seconds=0.02)
    page = reader.talkers_to(SERVICE, 443)
    assert not page.complete and page.cursor != 0
    assert 0 < page.scanned < 50_000 and 0 < page.progress < 1


def test_values_are_read_in_bounded_commands(redis_srv: RedisServer) -> None:
    """keys_per_command and keys_per_pipeline split the reads; a big index
    (a hash-table set, so SSCAN pages it) is followed to its end or to
    max_client_keys."""
    r = redis_srv.client()
    pipe = r.pipeline(transaction=False)
    for port in range(300):
        key = store.flow_key(C, "192.0.2.1", port)
        pipe.set(key, port + 1)
        pipe.sadd(store.index_key(C), key)
    pipe.execute()
    assert r.object("encoding", store.index_key(C)) == b"hashtable"
    r.config_resetstat()
    reader = StoreReader(r, scan_count=10, keys_per_command=7, keys_per_pipeline=20)
    data = reader.read_client(C)
    assert data.complete and data.flows == {("192.0.2.1", p): p + 1 for p in range(300)}
    stats: Any = r.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] >= 301 // 7
    assert stats["cmdstat_sscan"]["calls"] >= 10  # COUNT is a hint: about 10 a call
    capped = StoreReader(r, scan_count=10, max_client_keys=100).read_client(C)
    assert not capped.complete and 100 <= len(capped.flows) < 300


def test_read_index_off_finds_keys_an_unindexed_writer_added(redis_srv: RedisServer) -> None:
    """A client indexed by pcapd's writer, with one more key from a writer that
    does not index (a ShoDoHFlo agent): the index alone misses it."""
    fill(redis_srv.url, index=True)
    r = redis_srv.client()
    r.set(store.flow_key(C, "192.0.2.50", 8080), 4)
    assert ("192.0.2.50", 8080) not in StoreReader(r).read_client(C).flows
    data = StoreReader(r, read_index=False).read_client(C)
    assert data.complete and data.flows[("192.0.2.50", 8080)] == 4
    assert len(data.flows) == 3


def test_a_page_of_busy_clients_reads_at_most_max_request_keys(redis_srv: RedisServer) -> None:
    """20 clients of 300 indexed keys each, max_request_keys 1,000: the page
    reads at most 1,000 of their keys in all (each client its share, 50, not
    max_client_keys), says it is partial, and stops each index's SSCAN at the
    share. One client alone is read whole (300 < 1,000)."""
    r = redis_srv.client()
    clients = [f"10.6.0.{n}" for n in range(20)]
    pipe = r.pipeline(transaction=False)
    for client in clients:
        pipe.set(store.client_key(client), 1)
        for port in range(300):
            pipe.set(store.flow_key(client, "192.0.2.1", port), 1)
            pipe.sadd(store.index_key(client), store.flow_key(client, "192.0.2.1", port))
    pipe.execute()
    r.config_resetstat()
    reader = StoreReader(r, scan_count=10, max_request_keys=1_000)
    page = reader.clients_page(limit=20)
    assert sorted(c.client for c in page.items) == sorted(clients, key=parse_address)
    assert sum(len(c.flows) for c in page.items) <= 1_000
    assert all(0 < len(c.flows) <= 50 and not c.complete for c in page.items)
    stats: Any = r.info("commandstats")
    assert stats["cmdstat_sscan"]["calls"] < 20 * 300 // 10
    alone = reader.read_client(clients[0])
    assert alone.complete and len(alone.flows) == 300

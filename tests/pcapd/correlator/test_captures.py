"""The captures view: result events published by pcapd's own ResultPublisher,
read back from the stream, filtered, with local, S3 (pre-signed) and
CloudShark links, on the page of a real `pcapd web`."""

from __future__ import annotations

import html
import itertools
import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import redis

from pcapd.core.config import parse_config
from pcapd.core.events import ResultEvent
from pcapd.core.results import ResultPublisher
from pcapd.correlator import captures
from pcapd.correlator.server import s3_client
from tests.helpers import RedisServer, free_port
from tests.pcapd.core.test_results import resent
from tests.pcapd.correlator.site import web_server

CLIENT, SERVICE = "10.1.2.3", "2001:db8::53"
OURS = f"c_{CLIENT}_{SERVICE}_853_0123456789ab"
HOSTILE_ID = "<img src=x onerror=alert(1)>"


def publish_events(server: RedisServer) -> None:
    config = parse_config({"redis": {"port": server.port}}).redis
    publisher = ResultPublisher(lambda: redis.Redis.from_url(server.url), config)
    events = [
        ResultEvent(OURS, "edge1", "ok", interface="eth0", packets=12,
                    locations={"local": "/var/tmp/x.pcap", "s3": "s3://caps/edge1/x.pcap",
                               "cloudshark": "https://cs.example/captures/abc"}),
        ResultEvent("alert-run-7", "edge2", "failed", alertid=7, error="no such bucket"),
        ResultEvent(HOSTILE_ID, "edge2", "rejected", error='"><script>alert(1)</script>'),
    ]  # fmt: skip
    for event in events:
        assert publisher.publish(event)


def test_recent_filters_and_links(redis_srv: RedisServer) -> None:
    publish_events(redis_srv)
    config = parse_config({"redis": {"port": redis_srv.port},
                           "correlator": {"s3_url_expiry": 600}})  # fmt: skip
    r = redis_srv.client()

    def ids(**filters: str) -> list[str]:
        return [e["id"] for e in captures.recent(r, config, filters, 100)]

    assert ids() == [HOSTILE_ID, "alert-run-7", OURS]  # newest first
    assert ids(client=CLIENT) == ids(address=SERVICE) == ids(address=CLIENT) == [OURS]
    assert ids(client=SERVICE) == []
    assert ids(node="edge2") == [HOSTILE_ID, "alert-run-7"]
    assert ids(alertid="7") == ["alert-run-7"]
    assert captures.flow_of(OURS) == (CLIENT, SERVICE, 853)
    assert captures.flow_of("alert-run-7") is None
    s3 = s3_client(parse_config({"s3": {"bucket": "caps", "region": "eu-west-1",
                   "accessid": "AKIDEXAMPLE", "accesskey": "not-a-real-secret"}}))  # fmt: skip
    event = captures.recent(r, config, {"client": CLIENT}, 100)[0]
    found = captures.links(event, config, s3)
    assert found["local"] == "/var/tmp/x.pcap"
    assert found["cloudshark"] == "https://cs.example/captures/abc"
    url = urllib.parse.urlsplit(found["s3_url"])
    query = urllib.parse.parse_qs(url.query)
    assert url.path.endswith("/edge1/x.pcap") and "caps" in (url.netloc + url.path)
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
    assert "not-a-real-secret" not in found["s3_url"]
    # Without S3 configured the URI is shown as it is.
    assert "s3_url" not in captures.links(event, config, None)
    # A location that is not a link is not turned into one.
    assert captures.links({"locations": {"cloudshark": "javascript:alert(1)"}}, config, None) == {}


def test_recent_reads_the_stream_in_small_commands(redis_srv: RedisServer) -> None:
    """25 events read 4 per XREVRANGE: the newest `count`, each once, in order."""
    config = parse_config({"redis": {"port": redis_srv.port},
                           "correlator": {"keys_per_command": 4}})  # fmt: skip
    publisher = ResultPublisher(lambda: redis.Redis.from_url(redis_srv.url), config.redis)
    for n in range(25):
        assert publisher.publish(ResultEvent(f"run-{n}", "edge1", "ok"))
    r = redis_srv.client()
    r.config_resetstat()
    assert [e["id"] for e in captures.recent(r, config, {}, 10)] == [
        f"run-{n}" for n in range(24, 14, -1)
    ]
    stats: Any = r.info("commandstats")
    assert stats["cmdstat_xrevrange"]["calls"] == 3  # 4 + 4 + 2
    assert len(captures.recent(r, config, {}, 100)) == 25


def test_captures_page(redis_srv: RedisServer, tmp_path: Path) -> None:
    publish_events(redis_srv)
    config = tmp_path / "web.toml"
    config.write_text(
        f'[redis]\nport = {redis_srv.port}\n\n[s3]\nbucket = "caps"\nregion = "eu-west-1"\n'
        'accessid = "AKIDEXAMPLE"\naccesskey = "not-a-real-secret"\n\n'
        f"[correlator]\nport = {free_port()}\n"
    )
    with web_server(config, tmp_path / "web.log") as url:
        with urllib.request.urlopen(f"{url}/captures?client={CLIENT}", timeout=10) as answer:
            page = answer.read().decode()
        with urllib.request.urlopen(f"{url}/captures", timeout=10) as answer:
            everything = answer.read().decode()
        with urllib.request.urlopen(f"{url}/api/captures?node=edge2", timeout=10) as answer:
            api = json.loads(answer.read())
    rows = re.findall(r"<tr class=\"status-(\w+)\">", page)
    assert rows == ["ok"]
    assert '<code class="local">/var/tmp/x.pcap</code>' in page
    assert '<a href="https://cs.example/captures/abc">CloudShark</a>' in page
    presigned = re.search(r'<a href="([^"]+)">S3 \(pre-signed\)</a>', page)
    assert presigned and "X-Amz-Signature=" in html.unescape(presigned[1])
    assert "not-a-real-secret" not in page + everything
    assert "<script>alert(1)</script>" not in everything and "<img src=x" not in everything
    assert "&lt;img src=x onerror=alert(1)&gt;" in everything
    assert [e["id"] for e in api["captures"]] == [HOSTILE_ID, "alert-run-7"]


def test_an_event_held_twice_is_listed_once(redis_srv: RedisServer) -> None:
    """The stream holds an event twice (resent after its marker expired): the
    captures list shows it once."""
    config = parse_config({"redis": {"port": redis_srv.port}})
    resent(redis_srv, ResultEvent(OURS, "edge1", "ok", interface="eth0"), expired=True)
    resent(redis_srv, ResultEvent("alert-run-7", "edge2", "failed", alertid=7))
    assert redis_srv.client().xlen("capture-results") == 3
    assert [e["id"] for e in captures.recent(redis_srv.client(), config, {}, 100)] == [
        "alert-run-7", OURS,
    ]  # fmt: skip


def test_live_events_send_a_resent_event_once(redis_srv: RedisServer) -> None:
    """An event in the stream, then twice on the reply channel: one `data:`,
    though its links (here a counter) differ each time it is decorated."""
    config = parse_config({"redis": {"port": redis_srv.port}})
    reply = captures.reply_channel(OURS)
    event = ResultEvent(OURS, "edge1", "ok", interface="eth0")
    decorated = itertools.count()
    resent(redis_srv, event)  # in the stream before the page is opened
    live = captures.live_events(
        redis_srv.client(), config, OURS, 3, lambda e: {**e, "n": next(decorated)}
    )
    first = next(live)
    resent(redis_srv, event, reply)  # another event, twice on the reply channel
    rest = list(live)
    data = [json.loads(line[6:]) for line in [first, *rest] if line.startswith("data: ")]
    assert [e["id"] for e in data] == [OURS, OURS]
    assert len({e["event_id"] for e in data}) == 2
    assert rest[-1] == "event: end\ndata: {}\n\n"


def test_what_is_no_event_object_is_skipped_in_the_list_and_the_live_stream(
    redis_srv: RedisServer,
) -> None:
    """Anyone with XADD or PUBLISH may put there what json cannot read
    (nesting past ~1,000 levels raises RecursionError), text and lists: the
    list and the live stream skip them and show the event after them."""
    config = parse_config({"redis": {"port": redis_srv.port}})
    client = redis_srv.client()
    junk = ["[" * 100_000, '{"id": ' * 100_000, "not json", "[1, 2]"]
    for text in junk:
        client.xadd("capture-results", {"event_id": "x", "event": text})
    resent(redis_srv, ResultEvent("run-1", "edge1", "ok"))
    assert [e["id"] for e in captures.recent(client, config, {}, 100)] == ["run-1"]
    reply = captures.reply_channel(OURS)
    live = captures.live_events(client, config, OURS, 3, lambda e: e)
    first = next(live)  # subscribed
    for text in junk:
        client.publish(reply, text)
    resent(redis_srv, ResultEvent(OURS, "edge1", "ok"), reply)
    sent = [first, *live]
    data = [json.loads(line[6:]) for line in sent if line.startswith("data: ")]
    assert [e["id"] for e in data] == [OURS]  # sent twice, one event id
    assert sent[-1] == "event: end\ndata: {}\n\n"


def test_the_form_offers_and_sends_each_alias_the_rule_allows() -> None:
    """[correlator] aliases follow the alias rule: one out of it, or "" (the
    form's blank choice is "any interface"), is a warning and not offered;
    the rest are offered and sent as they are, "public facing" too."""
    table = {
        "general": {"writelocal": True},
        "interface": [{"name": "lo", "alias": ["local", ""]}],
        "correlator": {"aliases": ["public facing", "", "x\u202e", "a" * 1025, "local"]},
    }
    config = parse_config(table, "node1")
    assert config.warnings == (
        "correlator.aliases[1]: '' is empty, which the form sends as any interface; ignored",
        "correlator.aliases[2]: 'x\\u202e' holds a format character U+202E at character 1; ignored",
        f"correlator.aliases[3]: {'a' * 40!r}\u2026 is 1025 characters; the limit is 1024; ignored",
    )
    assert captures.aliases(config) == ("public facing", "local")
    fields = {"client": CLIENT, "service": SERVICE, "alias": "public facing"}
    form = captures.parse_form(fields, config)
    assert form.request()["alias"] == ["public facing"]
    # Without [correlator] aliases, the interfaces' aliases but "".
    del table["correlator"]
    assert captures.aliases(parse_config(table, "node1")) == ("local",)

"""A spooled capture's `delivered` goes to its reply_to, and its entry stays
until that result was sent; a kept entry is not uploaded again."""

from __future__ import annotations

import threading
from pathlib import Path

from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import connect
from pcapd.core.results import ResultPublisher, Sent
from tests.helpers import RedisServer
from tests.pcapd.core.test_results import stream_events
from tests.uploaders.conftest import make_artifact, make_request
from uploaders.base import Artifact, Location, Sink
from uploaders.drain import SpoolDrainer, delivered_event
from uploaders.local import LocalUploader
from uploaders.spool import Spool
from uploaders.spool_entry import SpoolEntry


def test_the_entry_goes_once_its_result_was_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(request=make_request(reply_to="mine")), ["sink"])
    sent: list[tuple[str | None, str | None]] = []
    answer = [False]

    def send(result: ResultEvent, held: SpoolEntry) -> bool:
        sent.append((result.status, held.capture_request().reply_to))
        return answer[0]

    drainer = SpoolDrainer(spool, {"sink": LocalUploader(tmp_path / "out")}, send, 60.0)
    report = drainer.drain_once()
    assert sent == [("delivered", "mine")] and report.remaining == (entry.id,)
    left = spool.get(entry.id)
    assert left is not None and left.pending == () and "local" in left.locations
    assert left.last_error == "delivered, but its result could not be published"
    assert len(list((tmp_path / "out").iterdir())) == 1
    answer[0] = True
    # Not uploaded again (the local sink refuses to overwrite: it would fail).
    report = drainer.drain_once()
    assert report.errors == () and report.delivered == (entry.id,)
    assert sent[1:] == [("delivered", "mine")] and spool.list() == []
    assert not spool.data_path(entry.id).exists()
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_a_kept_entry_s_result_is_one_event_however_often_sent(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    """Its `delivered` event's id comes from the entry id: published again
    after the entry was kept, it is the same event, in the stream once."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["sink"])
    other = spool.put(make_artifact(), ["sink"])
    first = delivered_event(entry, {"local": "x"})
    assert first.event_id == delivered_event(entry, {"local": "y"}).event_id
    assert first.event_id != delivered_event(other, {"local": "x"}).event_id
    config = RedisConfig(port=redis_srv.port)
    pub = ResultPublisher(lambda: connect(config), config)
    answers = iter([False, True, True])  # the first send taken for failed: kept

    def send(result: ResultEvent, held: SpoolEntry) -> bool:
        return pub.publish(result) is Sent.SENT and next(answers)

    drainer = SpoolDrainer(spool, {"sink": LocalUploader(tmp_path / "out")}, send, 60.0)
    assert drainer.drain_once([entry.id]).remaining == (entry.id,)
    assert drainer.drain_once([entry.id]).delivered == (entry.id,)
    found = stream_events(redis_srv.client())
    assert [(e["id"], e["status"]) for _, e in found] == [(entry.capture_request().id, "delivered")]
    assert [event_id for event_id, _ in found] == [first.event_id]


class Gated(Sink):
    """A local sink whose first upload waits for `gate`."""

    name = "sink"
    remote = True

    def __init__(self, directory: Path) -> None:
        self.inner = LocalUploader(directory)
        self.uploading = threading.Event()
        self.gate = threading.Event()

    def upload(self, artifact: Artifact) -> Location:
        self.uploading.set()
        assert self.gate.wait(60)
        return self.inner.upload(artifact)


def test_a_pass_outliving_stop_drains_nothing_more_and_keeps_its_entry(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    """stop()'s wait ran out while a pass was uploading (the daemon's
    shutdown): that pass finishes its entry, leaves the next alone, and the
    stopped publisher refuses its result, so the entry stays for next time."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["sink"])
    later = spool.put(make_artifact(), ["sink"])
    config = RedisConfig(port=redis_srv.port)
    pub = ResultPublisher(lambda: connect(config), config)
    pub.start()
    sink = Gated(tmp_path / "out")
    drainer = SpoolDrainer(spool, {"sink": sink}, lambda result, held: pub.submit(result), 60.0)
    drainer.start()
    thread = drainer._thread
    assert thread is not None and sink.uploading.wait(30)
    drainer.stop(timeout=0.1)  # the pass is held in its upload
    assert pub.stop(10) == 0
    sink.gate.set()
    thread.join(30)
    assert not thread.is_alive()
    kept, untouched = spool.get(entry.id), spool.get(later.id)
    assert kept is not None and kept.pending == () and "local" in kept.locations
    assert kept.last_error == "delivered, but its result could not be published"
    assert untouched is not None and untouched.pending == ("sink",) and untouched.attempts == 0
    assert len(list((tmp_path / "out").iterdir())) == 1
    assert pub.dropped == 1 and stream_events(redis_srv.client()) == []

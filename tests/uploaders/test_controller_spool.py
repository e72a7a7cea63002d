"""The controller and the spool: space is promised at admission, and a
shutdown that cannot wait for a hanging upload spools the capture instead."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pcapd.admission import DISK_LOOK_INTERVAL
from pcapd.controller import Controller
from pcapd.core.config import parse_config
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import connect
from pcapd.core.request import parse_request
from pcapd.core.results import ResultPublisher
from pcapd.engine import HandlePool
from pcapd.ring import Ring
from pcapd.worker import Worker
from tests.helpers import RedisServer, fill, free_port, logged, needs_root, tmpfs, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.test_controller import Recorded, request
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import cs_config, s3_config
from uploaders.base import Artifact, Location, Uploader
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deadline import Deadlined
from uploaders.deliver import Deliverer
from uploaders.drain import SpoolDrainer
from uploaders.local import LocalUploader
from uploaders.retry import RetryPolicy
from uploaders.s3 import S3Uploader
from uploaders.spool import Spool
from uploaders.spool_entry import SpoolEntry


def hanging_controller(
    redis_srv: RedisServer,
    spool_dir: Path,
    cloudshark: CloudsharkServer,
    rings: dict[str, Ring] | None = None,
    local: Uploader | None = None,
    *,
    deadlined: bool = False,
    **delivery: Any,
) -> tuple[Controller, Spool]:
    """A controller with a spool whose one remote sink, CloudShark, hangs
    until `cloudshark.release` is set (after `local`, if given). Bare, it
    does not give up when shutdown abandons it; `deadlined`, it is wrapped
    as the daemon wraps it (`Deadlined`), and does."""
    cloudshark.hang = threading.Event()
    cloudshark.hang.set()
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 1_000_000, "max_memory": 4_000_000},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1, **delivery}},
    )  # fmt: skip
    spool = Spool(spool_dir, 64 * 1024 * 1024)
    abandon = threading.Event()
    uploader: Uploader = CloudsharkUploader(cs_config(cloudshark, read_timeout=30.0))
    if deadlined:
        uploader = Deadlined(uploader, config.delivery.attempt_timeout, abandon)
    ctl = Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer(
            [*([local] if local else []), uploader],
            RetryPolicy.from_config(config.delivery),
            spool,
            abandon,
        ),
        pool=HandlePool((), config.general.buffer_size),
        rings=rings,
    )
    return ctl, spool


class GatedLocal(LocalUploader):
    """Local disk that writes once `gate` is set (only request `only`'s
    capture, when given): a store still on its local sink, not yet written
    ahead, when shutdown can wait no longer."""

    def __init__(self, directory: Path, only: str | None = None) -> None:
        super().__init__(directory)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.only = only

    def upload(self, artifact: Artifact) -> Location:
        if self.only in (None, artifact.request.id):
            self.entered.set()
            self.gate.wait(30)
        return super().upload(artifact)


def test_hanging_upload_is_spooled_at_shutdown(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    # One upload worker: "hung" hangs in CloudShark, "queued" waits behind it.
    ctl, spool = hanging_controller(redis_srv, tmp_path / "spool", cloudshark, upload_workers=1)
    got = one_upload_then_another(ctl, ("hung", "queued"), lambda: cloudshark.requests >= 1)
    assert ctl.shutdown(timeout=1.0)
    events = {name: results.for_id(name) for name in got}
    for event in events.values():
        assert event["status"] == "spooled"
    assert events["hung"]["error"] == "shutdown: upload still running, spooled for the next run"
    # The queued one is cancelled and stored by shutdown: CloudShark not tried.
    assert events["queued"]["error"] == "cloudshark: not attempted, shutting down"
    # Exactly one entry per capture: the hanging one's write-ahead entry, and
    # the queued one's (cancelled, so the pool never writes one as well).
    entries = spool.list()
    assert sorted(e.filename.split("_")[-1].split(".")[0] for e in entries) == ["hung", "queued"]
    assert all(e.pending == ("cloudshark",) for e in entries)
    assert {e.sha256 for e in entries} == {events["hung"]["sha256"], events["queued"]["sha256"]}
    assert [r.acks for r in got.values()] == [1, 1]  # stored durably: the source may forget them
    # End the hanging upload inside the test, so no thread of it outlives the test.
    cloudshark.release.set()
    ctl._upload_pool.shutdown(wait=True)
    assert cloudshark.requests == 1  # the queued upload never ran
    # Its store ended after its result was spooled: no second result. The
    # refusal of a later request comes after anything published before it.
    ctl.handle(Recorded(request(free_port(), id="after")).delivery)
    assert results.for_id("after")["status"] == "rejected"
    assert results.unclaimed() == []
    assert len(spool.list()) == 2


def one_upload_then_another(
    ctl: Controller, names: tuple[str, str], under_way: Callable[[], bool]
) -> dict[str, Recorded]:
    """Two captures of 2 packets: the first one's upload is `under_way`
    before the second ends, so the second queues behind it."""
    first, second = free_port(), free_port()
    got = {name: Recorded(request(port, id=name, packets=2))
           for name, port in zip(names, (first, second), strict=True)}  # fmt: skip
    for recorded in got.values():
        ctl.handle(recorded.delivery)
    wait_for(lambda: ctl.admission.active == 2)
    threading.Timer(0.3, send_udp, args=(first, 2, 0.01)).start()
    wait_for(under_way)
    send_udp(second, 2, 0.01)
    wait_for(lambda: len(ctl._uploads) == 2)  # the second is queued behind it
    return got


def by_request(spool: Spool) -> dict[str, SpoolEntry]:
    """Spool entries by the request id in their file's name."""
    return {e.filename.split("_")[-1].split(".")[0]: e for e in spool.list()}


def test_a_queued_upload_cancelled_at_shutdown_is_written_to_local_disk_then_spooled(
    redis_srv: RedisServer,
    results: Results,
    tmp_path: Path,
    cloudshark: CloudsharkServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Local disk and CloudShark, one upload worker: "hung" hangs in
    CloudShark, "queued" waits behind it. Shutdown stores the queued one as
    any store at shutdown: its local copy, then the spool for CloudShark
    (not tried, so no failed upload: the `spooled` line says it is pending);
    and the hung one's `spooled` says where its local copy is."""
    local = LocalUploader(tmp_path / "local")
    ctl, spool = hanging_controller(
        redis_srv, tmp_path / "spool", cloudshark, local=local, upload_workers=1
    )
    got = one_upload_then_another(ctl, ("hung", "queued"), lambda: cloudshark.requests >= 1)
    try:
        with caplog.at_level(logging.INFO, logger="pcapd"):
            assert ctl.shutdown(timeout=1.0)
        said = {(r.getMessage(), fields["file"].split("_")[-1]): fields for r in caplog.records
                if "file" in (fields := getattr(r, "pcapd_fields", {}))}  # fmt: skip
        assert ("upload_failed", "queued.pcap") not in said
        spooled = said["spooled", "queued.pcap"]
        assert spooled["pending"] == "cloudshark"
        assert spooled["error"] == "cloudshark: not attempted, shutting down"
        hung, queued = results.for_id("hung"), results.for_id("queued")
        assert hung["status"] == "spooled" and hung["error"].startswith("shutdown: upload still")
        assert queued["status"] == "spooled"
        assert queued["error"] == "cloudshark: not attempted, shutting down"
        for event in (hung, queued):
            stored = Path(event["locations"]["local"])
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == event["sha256"]
        entries = by_request(spool)
        assert sorted(entries) == ["hung", "queued"]
        for name, event in (("hung", hung), ("queued", queued)):
            assert entries[name].pending == ("cloudshark",)
            assert entries[name].locations == event["locations"]
        assert [r.acks for r in got.values()] == [1, 1]
        assert results.unclaimed() == []
    finally:
        cloudshark.release.set()
        ctl._upload_pool.shutdown(wait=True)
    assert cloudshark.requests == 1  # the queued one never tried it


def test_with_local_disk_only_a_queued_upload_cancelled_at_shutdown_is_still_written(
    redis_srv: RedisServer, results: Results, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No remote sink, so no spool: "slow" is still writing to local disk
    when shutdown can wait no longer, "queued" waits behind it (one upload
    worker). Shutdown writes the queued one itself, past the grace, and
    says so: `ok`, acked, on disk. "slow" it cannot keep, and says that:
    lost unless its store ends before the process exits (here it does)."""
    local = GatedLocal(tmp_path / "local", only="slow")
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 1_000_000, "max_memory": 4_000_000},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1, "upload_workers": 1}},
    )  # fmt: skip
    ctl = Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer([local], RetryPolicy.from_config(config.delivery), None),
        pool=HandlePool((), config.general.buffer_size),
    )
    got = one_upload_then_another(ctl, ("slow", "queued"), local.entered.is_set)
    try:
        with caplog.at_level(logging.WARNING, logger="pcapd"):
            assert not ctl.shutdown(timeout=0.5)  # "slow" is still writing: not finished
        # A node with local disk only: no spool to name.
        assert logged(caplog, "shutdown_past_grace") == [{"captures": 1, "storing": "local disk"}]
        [lost] = logged(caplog, "capture_lost")
        assert (lost["id"], lost["interface"], lost["locations"]) == ("slow", "lo", {})
        assert lost["error"].startswith("not spooled at shutdown (no remote sink, so no spool)")
        queued = results.for_id("queued")
        assert (queued["status"], queued["error"]) == ("ok", None)
        stored = Path(queued["locations"]["local"])
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == queued["sha256"]
        assert got["queued"].acks == 1
    finally:
        local.gate.set()
        ctl._upload_pool.shutdown(wait=True)
    assert results.for_id("slow")["status"] == "ok"  # its own store, finished after all
    assert got["slow"].acks == 1
    assert results.unclaimed() == []


@contextlib.contextmanager
def shut_down_while_storing(
    redis_srv: RedisServer, tmp_path: Path, cloudshark: CloudsharkServer, request_id: str,
    local: GatedLocal | None = None, *, threaded: bool = False, deadlined: bool = False,
) -> Iterator[tuple[Controller, Spool, Recorded]]:  # fmt: skip
    """A controller whose capture `request_id` is being stored (on `local`
    until its gate opens, or hanging in CloudShark) when shutdown gives up
    on it; every thread it started ends with the block."""
    ctl, spool = hanging_controller(
        redis_srv, tmp_path / "spool", cloudshark, local=local, deadlined=deadlined
    )
    if threaded:
        ctl.publisher.start()
    port = free_port()
    got = Recorded(request(port, id=request_id, packets=2))
    try:
        ctl.handle(got.delivery)
        threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
        wait_for(lambda: local.entered.is_set() if local else cloudshark.requests >= 1, timeout=20)
        assert ctl.shutdown(timeout=0.5)
        yield ctl, spool, got
    finally:
        if local is not None:
            local.gate.set()
        cloudshark.release.set()
        ctl._upload_pool.shutdown(wait=True)
        ctl.publisher.stop(5)


def test_a_store_spooled_by_shutdown_before_it_wrote_ahead_leaves_one_entry(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    """Shutdown spools a store still on its local sink (ahead of CloudShark,
    wrapped as the daemon wraps it): the store then writes its local copy
    and takes that entry as its own, never a second one, tries CloudShark
    no more (abandoned), and says nothing after `spooled`."""
    local = GatedLocal(tmp_path / "local")
    with shut_down_while_storing(
        redis_srv, tmp_path, cloudshark, "slow-local", local, deadlined=True
    ) as (ctl, spool, got):  # fmt: skip
        event = results.for_id("slow-local")
        assert event["status"] == "spooled" and event["error"].startswith("shutdown:")
        assert event["locations"] == {}  # nothing stored yet
        [entry] = spool.list()
        local.gate.set()  # the store goes on: local copy, CloudShark not tried
        ctl._upload_pool.shutdown(wait=True)
        assert cloudshark.requests == 0
        [kept] = spool.list()
        assert kept.id == entry.id and kept.pending == ("cloudshark",)
        assert kept.last_error == "cloudshark: not attempted, shutting down"
        assert kept.locations == {"local": str(tmp_path / "local" / kept.filename)}
        assert got.acks == 1
        ctl.handle(Recorded(request(free_port(), id="after")).delivery)
        assert results.for_id("after")["status"] == "rejected"
        assert results.unclaimed() == []  # one result for it: `spooled`


def test_a_store_spooled_by_shutdown_that_delivers_after_all_says_delivered(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    """`spooled` at shutdown is not left as the final word: the hung upload
    answered after all, and `delivered` follows, with the CloudShark
    location. The entry stays, with no sink pending: the publisher may yet
    lose that result at the exit, so the next run's drainer says it again."""
    cloudshark.answer_released = True
    with shut_down_while_storing(redis_srv, tmp_path, cloudshark, "late") as (ctl, spool, _):
        spooled = results.for_id("late")
        assert spooled["status"] == "spooled" and spooled["error"].startswith("shutdown:")
        cloudshark.release.set()
        delivered = results.for_id("late", timeout=20)
        assert delivered["status"] == "delivered" and delivered["error"] is None
        assert delivered["locations"]["cloudshark"].startswith(
            f"http://127.0.0.1:{cloudshark.port}/captures/"
        )
        assert delivered["sha256"] == spooled["sha256"]
        ctl._upload_pool.shutdown(wait=True)
        [kept] = spool.list()
        assert kept.pending == () and kept.locations == delivered["locations"]
    # The next run's drainer says it again: the same event, event_id too, so
    # the results stream holds it once and readers drop the copy.
    told = drain_next_run(tmp_path / "spool")
    assert [t.as_dict() for t in told] == [delivered]
    assert Spool(tmp_path / "spool", 64 << 20).list() == []


def drain_next_run(spool_dir: Path) -> list[ResultEvent]:
    """What the next run's drainer says of `spool_dir` (a pass, with no sink)."""
    told: list[ResultEvent] = []

    def on_delivered(result: ResultEvent, entry: SpoolEntry) -> bool:
        told.append(result)
        return True

    SpoolDrainer(Spool(spool_dir, 64 << 20), {}, on_delivered, 1.0).drain_once()
    return told


def test_a_late_delivery_the_stopped_publisher_refuses_is_kept_for_the_next_run(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    """Once the publisher has stopped (as the daemon's does before it
    exits), the entry stays with no sink pending for the next run's drainer
    to say `delivered`."""
    cloudshark.answer_released = True
    with shut_down_while_storing(
        redis_srv, tmp_path, cloudshark, "unsaid", threaded=True
    ) as (ctl, spool, _):  # fmt: skip
        ctl.publisher.stop(5)
        assert results.for_id("unsaid")["status"] == "spooled"
        cloudshark.release.set()
        ctl._upload_pool.shutdown(wait=True)
        [kept] = spool.list()
        assert kept.pending == () and kept.locations["cloudshark"].startswith("http://")
        assert ctl.publisher.dropped == 1  # the `delivered`, refused (results_dropped)
    # The next run's drainer says it, and lets the entry go.
    told = drain_next_run(tmp_path / "spool")
    assert [t.status for t in told] == ["delivered"] and told[0].locations == kept.locations
    assert Spool(tmp_path / "spool", 64 << 20).list() == []


def test_spool_space_is_promised_to_admitted_captures(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 1_000_000, "max_memory": 8_000_000},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1},
         "cloudshark": {"upload": True, "scheme": "http", "host": "127.0.0.1",
                        "port": free_port(), "token": "t"}},
    )  # fmt: skip
    spool = Spool(tmp_path / "spool", 2_500_000)
    ctl = Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer(
            [CloudsharkUploader(config.cloudshark)], RetryPolicy.from_config(config.delivery),
            spool,
        ),
        pool=HandlePool((), config.general.buffer_size),
    )  # fmt: skip
    port = free_port()
    for name in ("p1", "p2", "p3"):
        ctl.handle(Recorded(request(port, id=name, bytes=1_000_000, timeout=1)).delivery)
    # Collected by id: under load p1's result may come before p3's refusal,
    # and for_id would pass over it.
    events: dict[str, dict[str, Any]] = {}
    while len(events) < 3:
        event = results.next(20)
        events[event["id"]] = event
    third = events["p3"]
    assert third["status"] == "rejected"
    assert third["error"].startswith("spool full:")
    assert third["error"].endswith("(2000000 of them promised to running captures)")
    assert {events[n]["status"] for n in ("p1", "p2")} == {"empty"}
    wait_for(lambda: ctl.admission.spool_promised == 0)
    ctl.handle(Recorded(request(port, id="p4", bytes=1_000_000, timeout=1)).delivery)
    assert results.for_id("p4")["status"] == "empty"


@pytest.fixture
def on_full_disk(redis_srv: RedisServer, tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    """A controller with local disk and spool on a 3 MiB tmpfs; S3 refused."""
    with tmpfs(tmp_path / "disk", "3m") as disk:
        ctl = disk_controller(redis_srv, disk)
        try:
            yield ctl, disk
        finally:
            ctl.shutdown(5)


def disk_controller(redis_srv: RedisServer, disk: Path) -> Controller:
    """Local disk and spool on `disk`; S3 on a port where nothing listens (refused)."""
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 2_000_000, "max_memory": 8_000_000,
                     "writelocal": True, "localdir": str(disk / "local")},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1}},
    )  # fmt: skip
    (disk / "local").mkdir(exist_ok=True)
    s3 = S3Uploader(s3_config(f"http://127.0.0.1:{free_port()}", "caps"))
    uploaders: list[Uploader] = [LocalUploader(disk / "local"), s3]
    return Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer(
            uploaders, RetryPolicy.from_config(config.delivery), Spool(disk / "spool", 64 << 20)
        ),
        pool=HandlePool((), config.general.buffer_size),
    )


@needs_root
def test_disk_filling_after_admission_reports_the_local_copy_and_why_nothing_was_spooled(
    results: Results, on_full_disk: tuple[Controller, Path]
) -> None:
    ctl, disk = on_full_disk
    port = free_port()
    got = Recorded(request(port, id="full", packets=2, bytes=100_000))
    ctl.handle(got.delivery)
    wait_for(ctl.capture_started.is_set)
    filler = fill(disk, leave=4096)  # someone else fills the disk meanwhile
    send_udp(port, 2, 0.01)
    event = results.for_id("full")
    assert event["status"] == "partial", event
    local = Path(event["locations"]["local"])
    assert hashlib.sha256(local.read_bytes()).hexdigest() == event["sha256"]
    error = event["error"]
    assert error.startswith("s3: s3://caps/") and "; not spooled: cannot spool " in error
    assert "No space left on device" in error
    wait_for(lambda: got.acks == 1)  # stored durably on local disk
    # Still serving: what it cannot keep now it refuses, saying why, once it
    # looks at the disk again (a fill by someone else is not seen before).
    time.sleep(DISK_LOOK_INTERVAL)
    ctl.handle(Recorded(request(port, id="no-room", bytes=100_000)).delivery)
    refused = results.for_id("no-room")
    assert refused["status"] == "rejected" and refused["error"].startswith("disk full: ")
    # ... and once there is room again, the next capture is spooled for S3.
    filler.unlink()
    ctl.handle(Recorded(request(port, id="room", packets=2, bytes=100_000)).delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    assert results.for_id("room")["status"] == "spooled"


@needs_root
def test_admission_checks_real_free_space_for_every_copy_and_what_was_promised(
    results: Results, on_full_disk: tuple[Controller, Path]
) -> None:
    ctl, disk = on_full_disk
    port = free_port()
    ctl.handle(Recorded(request(port, id="big", bytes=2_000_000)).delivery)
    big = results.for_id("big")
    assert big["status"] == "rejected"
    assert big["error"] == (
        f"disk full: {3 << 20} bytes free on the filesystem of {disk}/local (local), "
        f"{disk}/spool (spool), bytes=2000000 needs 4000000"
    )
    ctl.handle(Recorded(request(port, id="fits", bytes=1_000_000, timeout=2)).delivery)
    wait_for(lambda: ctl.admission.active == 1)
    ctl.handle(Recorded(request(port, id="second", bytes=1_000_000)).delivery)
    second = results.for_id("second")
    assert second["status"] == "rejected"
    assert second["error"].endswith("(2000000 promised to captures not yet stored)")
    assert results.for_id("fits")["status"] == "empty"
    wait_for(lambda: ctl.admission.idle)


class FirstThreadFails(ThreadPoolExecutor):
    """An upload pool whose first thread cannot start (RuntimeError, as when
    the process is out of threads): its submit raises with the task queued."""

    failed = False

    def _adjust_thread_count(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("can't start new thread")
        super()._adjust_thread_count()


def test_upload_whose_thread_cannot_start_fails_once_and_is_never_stored(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = disk_controller(redis_srv, tmp_path)
    ctl._upload_pool = FirstThreadFails(max_workers=2, thread_name_prefix="upload")
    port = free_port()
    try:
        first = Recorded(request(port, id="no-thread", packets=1))
        ctl.handle(first.delivery)
        threading.Timer(0.3, send_udp, args=(port, 1)).start()
        failed = results.for_id("no-thread")
        assert failed["status"] == "failed", failed
        assert failed["error"] == 'capture failed: RuntimeError("can\'t start new thread")'
        wait_for(lambda: first.releases == 1)  # stored nowhere: the source sends it again
        # The next upload starts a thread, which takes the queued task first:
        # that one finds its result given and stores nothing.
        ctl.handle(Recorded(request(port, id="next", packets=1)).delivery)
        threading.Timer(0.3, send_udp, args=(port, 1)).start()
        assert results.for_id("next")["status"] == "spooled"  # S3 refused
        ctl._upload_pool.shutdown(wait=True)
        ctl.handle(Recorded(request(port, id="after", timeout=1)).delivery)
        assert results.for_id("after")["status"] == "empty"
        assert results.unclaimed() == []
        stored = sorted(p.name for p in (tmp_path / "local").glob("*.pcap"))
        assert len(stored) == 1 and "next" in stored[0], stored
    finally:
        ctl.shutdown(5)


def test_a_store_after_shutdown_runs_inline_and_stays_tracked_until_settled(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    """A capture that ends once shutdown has closed the upload pool (one that
    would not stop in time) is stored on its own thread, and counted as
    running until it is settled: a later shutdown does not report it finished.
    (Its local copy is held up: the remote sink is not tried after shutdown.)"""
    local = GatedLocal(tmp_path / "local", only="late")
    ctl, spool = hanging_controller(redis_srv, tmp_path / "spool", cloudshark, local=local)
    reservation = ctl.admission.reserve(1000)
    assert ctl.shutdown(timeout=1.0)  # nothing running: both pools closed
    late = parse_request(json.dumps(request(free_port(), id="late", packets=2)), ctl.config)
    worker = Worker(ctl, late, "lo", (), reservation)
    with ctl._lock:
        ctl._capturing.add(worker)  # admitted before shutdown, as handle() does
    data = b"late capture"
    sha = hashlib.sha256(data).hexdigest()
    artifact = Artifact(
        data=data, filename="n1_lo_late.pcap", format="pcap", sha256=sha, request=late,
        node="n1", interface="lo",
    )  # fmt: skip
    result = ResultEvent.for_request(late, "n1", "ok", interface="lo", packets=2, sha256=sha)
    store = threading.Thread(target=ctl.submit, args=(worker, artifact, result))
    store.start()
    try:
        wait_for(local.entered.is_set)  # stored inline, and held up
        assert ctl.running() == 1
        assert not ctl.shutdown(timeout=0.2)  # not finished: it says so
    finally:
        local.gate.set()
        cloudshark.release.set()
        store.join(30)
    assert cloudshark.requests == 0
    assert results.for_id("late")["status"] == "spooled"
    assert ctl.running() == 0 and reservation.released
    assert [e.filename for e in spool.list()] == ["n1_lo_late.pcap"]

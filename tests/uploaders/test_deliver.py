from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pcapd.core.events import ResultEvent
from pcapd.core.request import RequestError
from tests.helpers import logged, wait_for
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import (
    MotoProcess,
    MotoS3,
    cs_config,
    make_artifact,
    make_request,
    s3_config,
)
from uploaders.base import Artifact, Location, Sink, Uploader, UploadError
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deadline import NOT_ATTEMPTED
from uploaders.deliver import Deliverer, DeliveryOutcome, Flight
from uploaders.drain import SpoolDrainer
from uploaders.local import LocalUploader
from uploaders.retry import RetryPolicy
from uploaders.s3 import S3Uploader, boto3_client_factory
from uploaders.spool import Spool
from uploaders.spool_entry import SpoolEntry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MB = 1024 * 1024


def fast_retry(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(attempts, 0.01, 0.02, rng=random.Random(3))


def base_event(artifact: Artifact) -> ResultEvent:
    return ResultEvent(
        id=artifact.request.id, node=artifact.node, status="ok", interface="lo",
        alertid=artifact.request.alertid, packets=12, bytes=artifact.size,
        sha256=artifact.sha256, format="pcap", stop="packets",
    )  # fmt: skip


def test_every_sink_in_order_and_every_location(
    tmp_path: Path, moto_s3: MotoS3, cloudshark: CloudsharkServer
) -> None:
    bucket = moto_s3.new_bucket()
    order: list[str] = []

    class Recording(LocalUploader):
        def upload(self, artifact: Artifact) -> Location:
            order.append("local")
            return super().upload(artifact)

    uploaders: list[Uploader] = [
        Recording(tmp_path / "local"),
        S3Uploader(moto_s3.s3_config(bucket)),
        CloudsharkUploader(cs_config(cloudshark)),
    ]
    deliverer = Deliverer(uploaders, fast_retry(), Spool(tmp_path / "spool", 10 * MB))
    artifact = make_artifact(50_000)
    event = base_event(artifact)
    outcome = deliverer.deliver(artifact, event)

    assert outcome.status == "ok" and outcome.ok and outcome.durable and outcome.error is None
    assert list(outcome.locations) == ["local", "s3", "cloudshark"]
    assert outcome.locations["local"] == str(tmp_path / "local" / artifact.filename)
    assert outcome.locations["s3"] == f"s3://{bucket}/pcaps/{artifact.filename}"
    assert outcome.locations["cloudshark"].startswith(f"http://127.0.0.1:{cloudshark.port}/")
    assert order == ["local"] and len(cloudshark.uploads) == 1
    published = outcome.apply(event)
    assert published.status == "ok" and dict(published.locations) == dict(outcome.locations)
    assert list((tmp_path / "spool").iterdir()) == []
    # The local sink keeps the final event, every sink's location in it, beside its copy.
    sidecar = Path(outcome.locations["local"] + ".json")
    assert ResultEvent.from_json(sidecar.read_bytes()) == published


def test_cloudshark_500_then_200_is_retried_not_spooled(
    tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    cloudshark.fail_next(500, ["api_error_internal"])
    spool = Spool(tmp_path, 10 * MB)
    deliverer = Deliverer([CloudsharkUploader(cs_config(cloudshark))], fast_retry(), spool)
    outcome = deliverer.deliver(make_artifact())
    assert outcome.status == "ok" and cloudshark.requests == 2
    assert spool.list() == []


def test_wrong_token_spools_without_retrying_and_hides_the_token(
    tmp_path: Path, cloudshark: CloudsharkServer, caplog: pytest.LogCaptureFixture
) -> None:
    from pcapd.core.secret import Secret

    caplog.set_level(logging.DEBUG)

    spool = Spool(tmp_path, 10 * MB)
    uploader = CloudsharkUploader(cs_config(cloudshark, token=Secret("tok-wrong-1234")))
    artifact = make_artifact()
    event = base_event(artifact)
    outcome = Deliverer([uploader], fast_retry(), spool).deliver(artifact, event)
    assert outcome.status == "spooled" and outcome.durable and cloudshark.requests == 1
    assert outcome.error is not None and "HTTP 401: api_token_invalid" in outcome.error
    assert "tok-wrong-1234" not in outcome.error
    result = outcome.apply(event)
    assert (result.status, result.error) == ("spooled", outcome.error)
    [entry] = spool.list()
    assert entry.id == outcome.spool_id and entry.pending == ("cloudshark",)
    assert entry.event is not None and entry.event["status"] == "spooled"
    assert "tok-wrong-1234" not in (tmp_path / f"{entry.id}.json").read_text()
    assert "event=upload_failed sink=cloudshark" in caplog.text
    assert all("tok-wrong-1234" not in caplog.handler.format(r) for r in caplog.records)


class Failing(Sink):
    def __init__(self, name: str, remote: bool) -> None:
        self.name = name
        self.remote = remote

    def upload(self, artifact: Artifact) -> Location:
        raise UploadError(f"{self.name} refused", retryable=False)


def test_spool_full_means_failed_with_both_reasons(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 * MB)
    spool.put(make_artifact(900_000), ["s3"])
    outcome = Deliverer([Failing("s3", True)], fast_retry(), spool).deliver(make_artifact(200_000))
    assert outcome.status == "failed" and not outcome.durable
    assert outcome.error is not None
    assert outcome.error.startswith("s3: s3 refused; not spooled: spool full: ")
    assert len(spool.list()) == 1  # the older capture is still there


def test_a_failed_capture_keeps_its_error_before_the_sinks(tmp_path: Path) -> None:
    """A capture whose interface went away mid-way is stored like any other;
    when a sink fails too, the result says both, the capture's first."""
    spool = Spool(tmp_path, MB)
    artifact = make_artifact()
    gone = "capture on veth0 failed: The interface disappeared"
    event = dataclasses.replace(base_event(artifact), status="failed", error=gone, stop="shutdown")
    outcome = Deliverer([Failing("s3", True)], fast_retry(), spool).deliver(artifact, event)
    assert outcome.status == "spooled" and outcome.error == "s3: s3 refused"
    result = outcome.apply(event)
    assert (result.status, result.error) == ("spooled", f"{gone}; s3: s3 refused")
    [entry] = spool.list()
    assert entry.event is not None and entry.event["error"] == result.error


def test_no_spool_means_failed() -> None:
    outcome = Deliverer([Failing("s3", True)], fast_retry(), None).deliver(make_artifact())
    assert outcome.error == "s3: s3 refused; not spooled: no spool configured"
    assert outcome.status == "failed"


def test_local_failure_is_partial_and_remote_copies_are_listed(
    tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    uploaders: list[Uploader] = [Failing("local", False), CloudsharkUploader(cs_config(cloudshark))]
    spool = Spool(tmp_path, MB)
    outcome = Deliverer(uploaders, fast_retry(), spool).deliver(make_artifact())
    assert outcome.status == "partial" and outcome.durable
    assert spool.list() == [] and spool.used_bytes() == 0  # the write-ahead entry went
    assert list(outcome.locations) == ["cloudshark"]
    assert outcome.error == "local: local refused"


def test_a_spooled_entry_names_a_failed_local_sink_as_the_result_does(tmp_path: Path) -> None:
    """The local sink is never pending, but its failure stays in the entry's
    last error (`pcapd spool list`) beside S3's, as in the result."""
    spool = Spool(tmp_path, MB)
    sinks: list[Uploader] = [Failing("local", False), Failing("s3", True)]
    outcome = Deliverer(sinks, fast_retry(1), spool).deliver(make_artifact())
    [entry] = spool.list()
    assert outcome.status == "spooled" and entry.pending == ("s3",)
    assert entry.last_error == outcome.error == "local: local refused; s3: s3 refused"


def test_unexpected_exceptions_still_spool(tmp_path: Path) -> None:
    class Buggy(Sink):
        name = "s3"
        remote = True

        def upload(self, artifact: Artifact) -> Location:
            raise KeyError("bug")

    spool = Spool(tmp_path, MB)
    outcome = Deliverer([Buggy()], fast_retry(), spool).deliver(make_artifact())
    assert outcome.status == "spooled" and outcome.error == "s3: 'bug'"


def test_outcome_and_deliverer_validation() -> None:
    with pytest.raises(ValueError, match="status 'maybe'"):
        DeliveryOutcome("maybe")
    with pytest.raises(ValueError, match="duplicate names"):
        Deliverer([Failing("s3", True), Failing("s3", True)], fast_retry(), None)


def test_s3_killed_during_upload_is_spooled_then_delivered_identical(
    tmp_path: Path, moto_proc: MotoProcess
) -> None:
    """The S3 server dies in the middle of a multipart upload; it comes back
    later (empty, as moto keeps no state); the drainer delivers the same bytes."""
    config = s3_config(moto_proc.endpoint, "caps", multipart_threshold=5 * MB)
    make_client = boto3_client_factory(config)
    make_client(moto_proc.endpoint, "us-east-1").create_bucket(Bucket="caps")
    killed: list[str] = []

    def kill_on_second_part(**kwargs: Any) -> None:
        params = kwargs.get("params") or {}
        if not killed and "partNumber=2" in str(params.get("url", "")):
            killed.append("killed")
            moto_proc.kill()

    def factory(endpoint: str | None, region: str | None) -> S3Client:
        client = make_client(endpoint, region)
        client.meta.events.register("before-call.s3.UploadPart", kill_on_second_part)
        return client

    spool = Spool(tmp_path / "spool", 64 * MB)
    uploader = S3Uploader(config, factory)
    artifact = make_artifact(20 * MB, request=make_request(folder="mid"))
    outcome = Deliverer([uploader], fast_retry(), spool).deliver(artifact, base_event(artifact))

    assert killed == ["killed"]
    assert outcome.status == "spooled", outcome.error
    assert outcome.error is not None and outcome.error.startswith(
        f"s3: s3://caps/mid/{artifact.filename}: "
    )
    [entry] = spool.list()
    assert entry.pending == ("s3",)

    moto_proc.start()  # same port, fresh state
    make_client(moto_proc.endpoint, "us-east-1").create_bucket(Bucket="caps")
    delivered: list[tuple[ResultEvent, dict[str, str]]] = []

    def deliver(result: ResultEvent, entry: SpoolEntry) -> bool:
        delivered.append((result, dict(result.locations)))
        return True

    drainer = SpoolDrainer(spool, [uploader], deliver, 0.1)
    drainer.start()
    try:
        wait_for(lambda: delivered, timeout=30)
    finally:
        drainer.stop()
    [(event, locations)] = delivered
    key = f"mid/{artifact.filename}"
    assert locations == {"s3": f"s3://caps/{key}"}
    assert (event.status, event.id, event.sha256, event.error) == (
        "delivered", artifact.request.id, artifact.sha256, None,
    )  # fmt: skip
    got = make_client(moto_proc.endpoint, "us-east-1").get_object(Bucket="caps", Key=key)
    assert got["ETag"].strip('"').endswith("-4")
    assert hashlib.sha256(got["Body"].read()).hexdigest() == artifact.sha256
    assert spool.list() == [] and not any((tmp_path / "spool").iterdir())


class Watching(Sink):
    """A remote sink that looks at the spool while its upload is under way."""

    name = "s3"
    remote = True

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.seen: list[tuple[str, tuple[str, ...], bool]] = []

    def upload(self, artifact: Artifact) -> Location:
        for entry in self.spool.list():
            with self.spool.claim(entry.id) as free:
                self.seen.append((entry.filename, entry.pending, free))
        return Location("s3", f"s3://b/{artifact.filename}")


def test_capture_is_written_ahead_and_held_while_its_upload_runs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10 * MB)
    sink = Watching(spool)
    deliverer = Deliverer([LocalUploader(tmp_path / "local"), sink], fast_retry(), spool)
    artifact = make_artifact(20_000)
    outcome = deliverer.deliver(artifact, base_event(artifact))
    # During the upload the entry existed, pending for s3, and no drainer could take it.
    assert sink.seen == [(artifact.filename, ("s3",), False)]
    assert outcome.status == "ok" and set(outcome.locations) == {"local", "s3"}
    assert spool.list() == [] and spool.used_bytes() == 0 == spool.refresh()


def test_full_spool_still_uploads_and_a_failure_then_is_partial(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 * MB)
    spool.put(make_artifact(900_000), ["s3"])
    uploaders: list[Uploader] = [LocalUploader(tmp_path / "local"), Failing("s3", True)]
    outcome = Deliverer(uploaders, fast_retry(), spool).deliver(make_artifact(200_000))
    assert outcome.status == "partial" and outcome.durable and list(outcome.locations) == ["local"]
    assert outcome.error is not None
    assert outcome.error.startswith("s3: s3 refused; not spooled: spool full: ")
    ok = Deliverer([Watching(spool)], fast_retry(), spool).deliver(make_artifact(200_000))
    assert ok.status == "ok"  # no room to write ahead costs the safety net, not the upload


def test_sidecar_holds_a_partial_outcome_and_its_failure_is_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uploaders: list[Uploader] = [LocalUploader(tmp_path / "local"), Failing("s3", True)]
    artifact = make_artifact()
    outcome = Deliverer(uploaders, fast_retry(), None).deliver(artifact, base_event(artifact))
    sidecar = Path(outcome.locations["local"] + ".json")
    assert ResultEvent.from_json(sidecar.read_bytes()).status == "partial"
    # A sidecar that cannot be written is logged; the capture is stored all the same.
    (tmp_path / "other" / (artifact.filename + ".json")).mkdir(parents=True)
    again = Deliverer([LocalUploader(tmp_path / "other")], fast_retry(), None)
    assert again.deliver(artifact, base_event(artifact)).status == "ok"
    assert any("sidecar_failed" in r.getMessage() for r in caplog.records)


def test_check_asks_every_sink(moto_s3: MotoS3) -> None:
    config = moto_s3.s3_config(moto_s3.new_bucket())
    deliverer = Deliverer([Failing("local", False), S3Uploader(config)], fast_retry(), None)
    deliverer.check(make_request(folder="ok/here"))
    with pytest.raises(RequestError, match=r"^bucket='other': this site does not allow"):
        deliverer.check(make_request(bucket="other"))


def test_spool_unfinished_puts_what_was_not_written_ahead(tmp_path: Path) -> None:
    """With the locations the store has so far, in the entry and in the
    `spooled` result published; held for the store to take."""
    artifact = make_artifact()
    spooled = dataclasses.replace(base_event(artifact), status="spooled", error="shutdown: x")
    no_spool = Deliverer([Failing("s3", True)], fast_retry(), None)
    assert no_spool.spool_unfinished(artifact, spooled, Flight(), told_nothing)[0] == "lost"
    spool = Spool(tmp_path, MB)
    deliverer = Deliverer([Failing("s3", True)], fast_retry(), spool)
    flight = Flight(locations={"local": "/var/caps/x.pcap"})
    verdict, said = deliverer.spool_unfinished(artifact, spooled, flight, told_nothing)
    assert verdict == "spooled" and said.locations == {"local": "/var/caps/x.pcap"}
    [entry] = spool.list()
    assert entry.pending == ("s3",) and entry.event == said.as_dict()
    assert entry.locations == {"local": "/var/caps/x.pcap"}
    assert entry.last_error == "shutdown: x"
    with spool.claim(entry.id) as held:
        assert not held  # the store's, until it is released
    deliverer.release(flight)
    with spool.claim(entry.id) as held:
        assert held
    full = Spool(tmp_path / "full", 10)
    lost = Deliverer([Failing("s3", True)], fast_retry(), full)
    assert lost.spool_unfinished(artifact, spooled, Flight(), told_nothing)[0] == "lost"


def told_nothing(result: ResultEvent, entry: SpoolEntry) -> bool:
    raise AssertionError(f"told of {result.status} for {entry.id}")


def test_a_store_shutdown_spooled_before_it_wrote_ahead_keeps_that_one_entry(
    tmp_path: Path,
) -> None:
    """Shutdown spools a store still on its local sink: the store takes that
    entry as its write-ahead one (with the local copy), never a second,
    and holds it until the caller has published its result (`release`); a
    store whose outcome is known is left to publish its own."""
    artifact = make_artifact()
    spooled = dataclasses.replace(base_event(artifact), status="spooled", error="shutdown: x")
    spool = Spool(tmp_path / "spool", MB)
    told: list[ResultEvent] = []
    flight = Flight()
    local = LocalUploader(tmp_path / "local")
    deliverer = Deliverer([local, Failing("s3", True)], fast_retry(), spool)

    def then(result: ResultEvent, entry: SpoolEntry) -> bool:
        told.append(result)
        return True

    # As a store on its local sink would be: under way, nothing written ahead.
    assert deliverer.spool_unfinished(artifact, spooled, flight, then)[0] == "spooled"
    outcome = deliverer.deliver(artifact, base_event(artifact), flight)
    assert outcome.status == "spooled" and told == []
    [entry] = spool.list()
    assert entry.id == outcome.spool_id and entry.pending == ("s3",)
    assert entry.locations == {"local": str(tmp_path / "local" / artifact.filename)}
    with spool.claim(entry.id) as held:
        assert not held  # still the store's: its result is not published yet
    deliverer.release(flight)
    with spool.claim(entry.id) as held:
        assert held  # the store let go of it: the drainer's now
    assert deliverer.spool_unfinished(artifact, spooled, flight, then)[0] == "finished"
    assert len(spool.list()) == 1


class Counting(Sink):
    """A remote sink that counts its attempts, and takes every upload."""

    def __init__(self, name: str) -> None:
        self.name, self.remote, self.calls = name, True, 0

    def upload(self, artifact: Artifact) -> Location:
        self.calls += 1
        return Location(self.name, f"{self.name}://{artifact.filename}")


def test_once_abandoned_a_store_tries_no_remote_sink_local_then_spool(tmp_path: Path) -> None:
    """Shutdown's one way of storing (a queued upload, a late ring capture):
    local disk, the spool for the remote sinks, none of them tried."""
    artifact = make_artifact()
    remote = Counting("s3")
    spool = Spool(tmp_path / "spool", MB)
    deliverer = Deliverer([LocalUploader(tmp_path / "local"), remote], fast_retry(), spool)
    deliverer.abandon.set()
    outcome = deliverer.deliver(artifact, base_event(artifact))
    assert remote.calls == 0
    assert outcome.status == "spooled" and outcome.error == "s3: not attempted, shutting down"
    local = tmp_path / "local" / artifact.filename
    assert outcome.locations == {"local": str(local)} and local.exists()
    [entry] = spool.list()
    assert entry.pending == ("s3",) and entry.locations == {"local": str(local)}


def test_sinks_shutdown_left_untried_are_no_failed_uploads_and_are_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once abandoned, no remote sink is tried: none is logged `upload_failed`
    nor counted as a failed upload. Spooled, the `spooled` line names them
    (pending); not spooled (no room), one `upload_skipped` line does."""
    caplog.set_level(logging.INFO, logger="pcapd")
    observed: list[tuple[str, str]] = []
    s3, cloudshark = Counting("s3"), Counting("cloudshark")
    spool = Spool(tmp_path / "spool", MB)
    deliverer = Deliverer([LocalUploader(tmp_path / "local"), s3, cloudshark], fast_retry(), spool)
    deliverer.observe = lambda sink, outcome, seconds: observed.append((sink, outcome))
    deliverer.abandon.set()
    skipped = "s3: not attempted, shutting down; cloudshark: not attempted, shutting down"
    artifact = make_artifact()
    outcome = deliverer.deliver(artifact, base_event(artifact))
    assert (outcome.status, outcome.error) == ("spooled", skipped)
    assert logged(caplog, "upload_failed") == logged(caplog, "upload_skipped") == []
    [spooled] = logged(caplog, "spooled")[-1:]
    assert (spooled["pending"], spooled["error"]) == ("s3,cloudshark", skipped)
    assert observed == [("local", "ok")] and s3.calls == cloudshark.calls == 0

    caplog.clear()
    spool.put(make_artifact(MB - spool.used_bytes() - 3_000), ["s3"])  # no room to write ahead
    artifact = make_artifact()
    outcome = deliverer.deliver(artifact, base_event(artifact))
    assert outcome.status == "partial" and outcome.error is not None
    assert outcome.error.startswith(f"{skipped}; not spooled: spool full: ")
    assert logged(caplog, "upload_failed") == []
    [said] = logged(caplog, "upload_skipped")
    assert said == {"file": artifact.filename, "sinks": "s3,cloudshark", "error": NOT_ATTEMPTED}


class Held(Sink):
    """A remote sink whose upload waits for `release`, then refuses."""

    name = "s3"
    remote = True

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def upload(self, artifact: Artifact) -> Location:
        self.entered.set()
        self.release.wait(30)
        raise UploadError("s3 refused", retryable=False)


def test_a_store_spooled_by_shutdown_after_a_failed_write_ahead_does_not_say_not_spooled(
    tmp_path: Path,
) -> None:
    """The write-ahead found no room; by shutdown there is room and shutdown
    spools the store still under way. When its upload then fails, it is in
    the spool: the outcome says `spooled`, and no word of the spool failing."""
    spool = Spool(tmp_path / "spool", MB)
    filler = spool.put(make_artifact(MB - 3_000), ["s3"])  # no room to write ahead
    sink = Held()
    deliverer = Deliverer([sink], fast_retry(), spool)
    artifact = make_artifact()
    event = base_event(artifact)
    flight = Flight()
    outcomes: list[DeliveryOutcome] = []

    def store_it() -> None:
        outcomes.append(deliverer.deliver(artifact, event, flight))

    store = threading.Thread(target=store_it)
    store.start()
    try:
        assert sink.entered.wait(30)
        assert flight.entry is None  # the write-ahead failed: no room
        spool.remove(filler)
        spooled = dataclasses.replace(event, status="spooled", error="shutdown: x")
        verdict, _ = deliverer.spool_unfinished(artifact, spooled, flight, told_nothing)
        assert verdict == "spooled"
    finally:
        sink.release.set()
        store.join(30)
    [outcome] = outcomes
    assert (outcome.status, outcome.error) == ("spooled", "s3: s3 refused")
    [entry] = spool.list()
    assert entry.id == outcome.spool_id and entry.pending == ("s3",)
    deliverer.release(flight)


def test_every_capture_shutdown_cannot_keep_is_logged_lost_with_where_it_is_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "lost" is never silent: local disk only (no spool to keep it), no
    spool configured, a spool with no room. A store that has its outcome
    is left to say it, without a word of loss."""
    caplog.set_level(logging.ERROR, logger="pcapd")
    artifact = make_artifact()
    spooled = dataclasses.replace(base_event(artifact), status="spooled", error="shutdown: x")
    full = Spool(tmp_path / "full", 10)
    cases = [
        (Deliverer([LocalUploader(tmp_path / "local")], fast_retry(), None),
         "no remote sink, so no spool"),
        (Deliverer([Failing("s3", True)], fast_retry(), None), "no spool configured"),
        (Deliverer([Failing("s3", True)], fast_retry(), full), "spool full: "),
    ]  # fmt: skip
    for deliverer, why in cases:
        caplog.clear()
        flight = Flight(locations={"local": "/var/caps/x.pcap"})
        assert deliverer.spool_unfinished(artifact, spooled, flight, told_nothing)[0] == "lost"
        [lost] = logged(caplog, "capture_lost")
        assert (lost["id"], lost["interface"], lost["file"]) == (
            artifact.request.id, "lo", artifact.filename,
        )  # fmt: skip
        assert lost["locations"] == {"local": "/var/caps/x.pcap"}
        assert lost["error"].startswith(f"not spooled at shutdown ({why}")
        assert lost["error"].endswith("when the process exits is lost")
    caplog.clear()
    local_only = cases[0][0]
    assert local_only.deliver(artifact, base_event(artifact), (done := Flight())).ok
    assert local_only.spool_unfinished(artifact, spooled, done, told_nothing)[0] == "finished"
    assert logged(caplog, "capture_lost") == []

"""The spool drainer against real sinks: what it counts and what it keeps."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pcapd.core.config import CloudsharkConfig
from pcapd.core.events import ResultEvent
from pcapd.core.secret import Secret
from tests.helpers import free_port
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import MotoS3, cs_config, make_artifact
from uploaders.base import Uploader
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deadline import Deadlined
from uploaders.drain import SpoolDrainer
from uploaders.s3 import S3Uploader
from uploaders.spool import Spool
from uploaders.spool_entry import MAX_ERROR_LEN, SpoolEntry


def test_a_sink_shutdown_left_untried_is_no_failed_upload(tmp_path: Path, moto_s3: MotoS3) -> None:
    """Shutdown (`abandon`) came before the attempt: not counted as a failed
    upload, and the entry keeps its last real error and attempts; once the
    sink is tried again, it delivers."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["s3"], errors={"s3": "connection refused"})
    abandon = threading.Event()
    abandon.set()
    s3 = S3Uploader(moto_s3.s3_config(moto_s3.new_bucket()))
    observed: list[tuple[str, str]] = []
    drainer = SpoolDrainer(spool, [Deadlined(s3, 10.0, abandon)], lambda e, held: True, 60)
    drainer.observe = lambda sink, outcome, seconds: observed.append((sink, outcome))
    report = drainer.drain_once()
    assert report.remaining == (entry.id,) and report.errors == ()
    kept = spool.get(entry.id)
    assert kept is not None and kept.pending == ("s3",)
    assert (kept.last_error, kept.attempts) == ("s3: connection refused", 0)
    assert observed == []
    abandon.clear()
    assert drainer.drain_once().delivered == (entry.id,)
    assert observed == [("s3", "ok")] and spool.list() == []


def test_a_sink_delivered_loses_its_old_error_and_an_untried_one_is_no_attempt(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    """s3 delivers, cloudshark is left untried by shutdown: the entry keeps
    only cloudshark's old error, and its attempts, as nothing failed."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    old = {"s3": "refused", "cloudshark": "refused; retry later"}
    entry = spool.put(make_artifact(), ["s3", "cloudshark"], errors=old)
    abandon = threading.Event()
    abandon.set()
    bucket = moto_s3.new_bucket()
    s3 = S3Uploader(moto_s3.s3_config(bucket))
    nowhere = CloudsharkConfig(upload=True, host="127.0.0.1", port=free_port(), token=Secret("t"))
    cloudshark = CloudsharkUploader(nowhere)
    drainer = SpoolDrainer(spool, [s3, Deadlined(cloudshark, 10.0, abandon)], lambda e, h: True, 60)
    report = drainer.drain_once()
    assert report.remaining == (entry.id,) and report.errors == ()
    kept = spool.get(entry.id)
    assert kept is not None and kept.pending == ("cloudshark",)
    assert kept.locations["s3"].startswith(f"s3://{bucket}/")
    assert (kept.last_error, kept.attempts) == ("cloudshark: refused; retry later", 0)
    abandon.clear()  # now tried, and nothing listens there: a failure, counted, its own error
    assert drainer.drain_once().remaining == (entry.id,)
    kept = spool.get(entry.id)
    assert kept is not None and kept.attempts == 1
    assert kept.last_error is not None and kept.last_error.startswith("cloudshark: ")
    assert "s3" not in kept.last_error and "retry later" not in kept.last_error


def drainer_for(
    spool: Spool, *uploaders: Uploader, delivered: list[ResultEvent] | None = None
) -> SpoolDrainer:
    def sent(result: ResultEvent, held: SpoolEntry) -> bool:
        if delivered is not None:
            delivered.append(result)
        return True

    return SpoolDrainer(spool, uploaders, sent, 60)


def test_an_error_longer_than_the_bound_costs_no_other_sink_its_error(
    tmp_path: Path, moto_s3: MotoS3, cloudshark: CloudsharkServer
) -> None:
    """Each sink's error is clipped on its own: CloudShark's, too long,
    loses its tail, S3's after it stays whole."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["cloudshark", "s3"])
    cloudshark.fail_next(422, ["x" * (MAX_ERROR_LEN + 500)])
    s3 = S3Uploader(moto_s3.s3_config("no-such-bucket-" + entry.id[-8:]))
    report = drainer_for(spool, CloudsharkUploader(cs_config(cloudshark)), s3).drain_once()
    assert report.remaining == (entry.id,)
    kept = spool.get(entry.id)
    assert kept is not None and kept.last_error is not None
    cs_error, _, s3_error = kept.last_error.partition("; s3: ")
    assert cs_error == "cloudshark: " + kept.errors["cloudshark"]
    assert len(kept.errors["cloudshark"]) == MAX_ERROR_LEN and cs_error.endswith("xxx")
    assert s3_error.startswith("s3://no-such-bucket-") and "NoSuchBucket" in s3_error
    assert f"{entry.id}: s3: {s3_error}" in report.errors  # the pass's own error, whole


def test_an_error_naming_another_sink_stays_the_sink_s_own(
    tmp_path: Path, moto_s3: MotoS3, cloudshark: CloudsharkServer
) -> None:
    """CloudShark's error text has "; s3: " in it: S3 delivered next pass,
    CloudShark (untried, shutdown) keeps all of its error, not the part
    before "; s3: "."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["cloudshark", "s3"])
    cloudshark.fail_next(422, ["quota", "s3: bucket gone"])
    bucket = "caps-later-" + entry.id[-8:]
    abandon = threading.Event()
    cs = Deadlined(CloudsharkUploader(cs_config(cloudshark)), 10.0, abandon)
    drainer = drainer_for(spool, cs, S3Uploader(moto_s3.s3_config(bucket)))
    assert drainer.drain_once().remaining == (entry.id,)  # both fail
    first = spool.get(entry.id)
    assert first is not None and first.last_error is not None
    cs_error = first.last_error.split(f"; s3: s3://{bucket}/")[0]
    assert cs_error.startswith("cloudshark: ")
    assert cs_error.endswith("HTTP 422: quota; s3: bucket gone")
    moto_s3.client().create_bucket(Bucket=bucket)
    abandon.set()
    assert drainer.drain_once().remaining == (entry.id,)
    kept = spool.get(entry.id)
    assert kept is not None and kept.pending == ("cloudshark",)
    assert (kept.last_error, kept.attempts) == (cs_error, 1)


def test_a_sink_skipped_as_down_says_its_error_is_from_an_earlier_attempt(
    tmp_path: Path, moto_s3: MotoS3, cloudshark: CloudsharkServer
) -> None:
    """S3 fails on the older entry, so the newer one's S3 is not tried in
    that pass while its CloudShark fails anew: its S3 error is the old one,
    and says so; CloudShark's is this pass's."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    older = spool.put(make_artifact(), ["s3"])
    newer = spool.put(make_artifact(), ["s3", "cloudshark"])
    cloudshark.fail_next(422, ["first"])
    cloudshark.fail_next(422, ["second"])
    s3 = S3Uploader(moto_s3.s3_config("no-such-bucket-" + newer.id[-8:]))
    drainer = drainer_for(spool, s3, CloudsharkUploader(cs_config(cloudshark)))
    assert drainer.drain_once([newer.id]).remaining == (newer.id,)
    first = spool.get(newer.id)
    assert first is not None and first.last_error is not None
    s3_error = first.last_error.split("; cloudshark: ")[0]
    assert s3_error.startswith("s3: ") and first.last_error.endswith("HTTP 422: first")
    report = drainer.drain_once()
    assert report.remaining == (older.id, newer.id)
    assert [e.split(": ")[1] for e in report.errors] == ["s3", "cloudshark"]
    kept = spool.get(newer.id)
    assert kept is not None and kept.last_error is not None and kept.attempts == 2
    earlier, _, now = kept.last_error.partition("; cloudshark: ")
    assert earlier == s3_error + " (from an earlier attempt)"
    assert now.endswith("HTTP 422: second")
    cloudshark.fail_next(422, ["third"])  # down again: marked once, not twice
    assert drainer.drain_once().remaining == (older.id, newer.id)
    again = spool.get(newer.id)
    assert again is not None and again.last_error is not None
    assert again.last_error.startswith(earlier + "; cloudshark: ") and again.attempts == 3


def test_a_failed_pass_clears_the_write_ahead_note(tmp_path: Path) -> None:
    """A write-ahead entry's note is no error once a sink has failed on it:
    the last error then is the sink's only."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["s3"], note="write-ahead: upload under way")
    assert drainer_for(spool).drain_once().remaining == (entry.id,)  # no s3 configured
    kept = spool.get(entry.id)
    assert kept is not None and kept.last_error == "s3: no such uploader configured"
    assert json.loads(spool.sidecar_path(entry.id).read_text())["note"] is None


def test_an_error_marked_as_earlier_keeps_the_mark_within_the_bound(tmp_path: Path) -> None:
    """S3 fails on the older entry, so the newer one's S3 is down in that
    pass while its CloudShark fails: S3's old error, as long as allowed,
    loses its tail to the mark, not the mark."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    older = spool.put(make_artifact(), ["s3"])
    newer = spool.put(make_artifact(), ["s3", "cloudshark"], errors={"s3": "x" * MAX_ERROR_LEN})
    assert drainer_for(spool).drain_once().remaining == (older.id, newer.id)  # none configured
    kept = spool.get(newer.id)
    assert kept is not None and kept.attempts == 1
    assert kept.errors["s3"].endswith("x (from an earlier attempt)")
    assert len(kept.errors["s3"]) == MAX_ERROR_LEN

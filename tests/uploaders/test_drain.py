"""The spool drainer against real sinks: what it counts and what it keeps."""

from __future__ import annotations

import threading
from pathlib import Path

from pcapd.core.config import CloudsharkConfig
from pcapd.core.secret import Secret
from tests.helpers import free_port
from tests.uploaders.conftest import MotoS3, make_artifact
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deadline import Deadlined
from uploaders.drain import SpoolDrainer
from uploaders.s3 import S3Uploader
from uploaders.spool import Spool


def test_a_sink_shutdown_left_untried_is_no_failed_upload(tmp_path: Path, moto_s3: MotoS3) -> None:
    """Shutdown (`abandon`) came before the attempt: not counted as a failed
    upload, and the entry keeps its last real error and attempts; once the
    sink is tried again, it delivers."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(), ["s3"], error="s3: connection refused")
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
    old = "s3: refused; cloudshark: refused; retry later"
    entry = spool.put(make_artifact(), ["s3", "cloudshark"], error=old)
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

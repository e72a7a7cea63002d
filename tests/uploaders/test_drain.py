"""The spool drainer against real sinks: what it counts and what it keeps."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.uploaders.conftest import MotoS3, make_artifact
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

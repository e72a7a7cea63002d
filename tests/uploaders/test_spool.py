from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pcapd.core.events import ResultEvent
from tests.helpers import free_port, wait_for
from tests.uploaders.conftest import MotoS3, make_artifact, make_request
from uploaders.base import Location, UploadError
from uploaders.base import Sink as SinkDefaults
from uploaders.drain import SpoolDrainer, delivered_event
from uploaders.s3 import S3Uploader
from uploaders.spool import MAX_SIDECAR_BYTES, Spool, SpoolCorrupt, SpoolFull
from uploaders.spool_entry import SpoolEntry

MB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


class Sink(SinkDefaults):
    """An uploader that fails until told otherwise; counts what it received."""

    def __init__(self, name: str, fail: bool = True) -> None:
        self.name = name
        self.remote = True
        self.fail = fail
        self.received: list[str] = []

    def upload(self, artifact: object) -> Location:
        from uploaders.base import Artifact

        assert isinstance(artifact, Artifact)
        if self.fail:
            raise UploadError(f"{self.name} is down")
        self.received.append(artifact.sha256)
        return Location(self.name, f"{self.name}://{artifact.filename}")


def spooled_event(artifact_id: str) -> dict[str, object]:
    return ResultEvent(
        id=artifact_id, node="node1", status="spooled", interface="lo", error="s3: down",
        packets=3, bytes=4096, locations={"local": "/tmp/x.pcap"}, warnings=("w1",),
    ).as_dict()  # fmt: skip


def test_put_writes_an_entry_that_a_new_spool_reads_back(tmp_path: Path) -> None:
    artifact = make_artifact(100_000, request=make_request(folder="team-a", bucket="b2"))
    spool = Spool(tmp_path / "spool", 10 * MB)
    entry = spool.put(
        artifact, ["s3", "cloudshark"], locations={"local": "/cap/x.pcap"},
        event=spooled_event(artifact.request.id), errors={"s3": "down"},
    )  # fmt: skip

    names = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert names == [entry.id + ".cap", entry.id + ".json"]  # no temporary files left
    for name in names:
        assert stat.S_IMODE((tmp_path / "spool" / name).stat().st_mode) == 0o600
    sidecar = json.loads((tmp_path / "spool" / f"{entry.id}.json").read_text())
    assert sidecar["pending"] == ["s3", "cloudshark"]
    assert sidecar["event"]["status"] == "spooled"
    assert sidecar["request"]["folder"] == "team-a"

    again = Spool(tmp_path / "spool", 10 * MB)  # as after a restart
    [listed] = again.list()
    assert listed == entry
    loaded = again.load(listed)
    assert bytes(loaded.data) == bytes(artifact.data)
    assert loaded.request == artifact.request
    assert (loaded.filename, loaded.node, loaded.interface) == (
        artifact.filename, "node1", "lo",
    )  # fmt: skip


def test_full_spool_refuses_new_captures_and_keeps_old_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 * MB)
    first = spool.put(make_artifact(600_000), ["s3"])
    with pytest.raises(SpoolFull) as info:
        spool.put(make_artifact(600_000), ["s3"])
    assert str(info.value).startswith(f"spool full: {spool.used_bytes()} of {MB} bytes used in ")
    assert "delivery.spool_max_bytes" in str(info.value)
    assert [e.id for e in spool.list()] == [first.id]
    with pytest.raises(SpoolFull):
        spool.check_room(500_000)
    spool.check_room(100_000)


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [  # shown: the entry's last error once the field is dropped
        ("note", ["x"], "s3: refused"),
        ("note", 5, "s3: refused"),
        ("errors", None, "earlier"),
        ("errors", {"s3": 5}, "earlier"),
        ("errors", ["s3"], "earlier"),
        ("last_error", 5, None),  # a version 1 sidecar's
        ("attempts", "3", "earlier; s3: refused"),
        ("spooled_at", "yesterday", "earlier; s3: refused"),
    ],
)
def test_a_malformed_diagnostic_field_is_dropped_and_the_entry_drains(
    tmp_path: Path,
    moto_s3: MotoS3,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: object,
    shown: str | None,
) -> None:
    """Only what befell the entry is bad, its capture and request are whole:
    the field is dropped with one warning, the entry listed and delivered."""
    spool = Spool(tmp_path / "spool", MB)
    entry = spool.put(make_artifact(), ["s3"], errors={"s3": "refused"}, note="earlier")
    path = spool.sidecar_path(entry.id)
    sidecar = json.loads(path.read_text())
    if field == "last_error":  # as the previous version wrote it
        del sidecar["errors"], sidecar["note"]
    path.write_text(json.dumps(sidecar | {field: value}))
    [listed] = spool.list()
    assert (listed.id, listed.last_error, listed.attempts) == (entry.id, shown, 0)
    # A dropped spooled_at is read from the id, which put named by the time.
    assert abs(listed.spooled_at - entry.spooled_at) < 0.01
    bucket = "caps-" + entry.id[-8:]
    drainer = SpoolDrainer(spool, [S3Uploader(moto_s3.s3_config(bucket))], lambda e, h: True, 60)
    assert drainer.drain_once().remaining == (entry.id,)  # no bucket yet: an attempt
    kept = spool.get(entry.id)
    assert kept is not None and kept.attempts == 1 and field not in kept.errors
    assert kept.last_error is not None and kept.last_error.startswith("s3: s3://caps-")
    moto_s3.client().create_bucket(Bucket=bucket)
    assert drainer.drain_once().delivered == (entry.id,) and spool.list() == []
    warned = f"spool_entry_field_dropped id={entry.id} field={field} error="
    assert caplog.text.count(warned) == 1, caplog.text  # read thrice before it was rewritten
    assert f"{field}={value!r} is not " in caplog.text


def test_corrupt_entry_is_kept_and_reported(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    entry = spool.put(make_artifact(5000), ["s3"])
    with open(spool.data_path(entry.id), "r+b") as handle:
        handle.write(b"XXXX")
    with pytest.raises(SpoolCorrupt, match=f"spool entry {entry.id}: .* has sha256"):
        spool.load(entry)
    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
    assert report.remaining == (entry.id,) and "has sha256" in report.errors[0]
    assert sink.received == [] and spool.get(entry.id) is not None


def test_unreadable_sidecar_and_orphans(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, 10 * MB)
    good = spool.put(make_artifact(), ["s3"])
    (tmp_path / "00000000000000000001-bad.json").write_text("{not json")
    (tmp_path / "00000000000000000002-lost.cap").write_bytes(b"abc")
    odd = json.loads(spool.sidecar_path(good.id).read_text()) | {"pending": [1, 2]}
    (tmp_path / "00000000000000000003-odd.json").write_text(json.dumps(odd))
    assert [e.id for e in spool.list()] == [good.id]
    assert "spool_entry_unreadable id=00000000000000000001-bad" in caplog.text
    assert 'id=00000000000000000003-odd error="sidecar: pending=[1, 2] is not a list' in caplog.text
    assert [p.name for p in spool.orphans()] == ["00000000000000000002-lost.cap"]


REMOVED = object()  # the field taken out of the sidecar


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("pending", {}, "pending={} is not a list of sink names"),
        ("pending", None, "pending=None is not a list of sink names"),
        ("pending", "s3", "pending='s3' is not a list of sink names"),
        ("pending", [""], "pending=[''] is not a list of sink names"),
        ("pending", REMOVED, "no pending"),
        ("pending", [], "pending=[] and no locations: delivered nowhere"),
        ("id", "00000000000000000009-0abc1234", "is not its files' "),
        ("id", 7, "id=7 is not a spool entry id"),
        ("sha256", "ab" * 31, "is not a sha256 in hex"),
        ("size", -1, "size=-1 is not a byte count"),
        ("size", True, "size=True is not a byte count"),
        ("size", 10**20, "is not a byte count"),  # passes the check, fails the load
        ("filename", "", "filename='' is not a file name"),
        ("filename", "x\ud800.pcap", "is not a file name"),  # S3 cannot take it
        ("filename", "pcaps/x.pcap", "is not a file name"),
        ("filename", "..", "is not a file name"),
        ("id", "", "id='' is not a spool entry id"),
        ("request", [], "request=[] is not a request object"),
        ("locations", {"s3": 5}, "locations={'s3': 5} is not an object of strings"),
        ("event", "spooled", "event='spooled' is not an object or null"),
        ("format", REMOVED, "no format"),
    ],
)
def test_an_entry_that_cannot_say_how_to_deliver_it_is_kept_and_never_uploaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: object, said: str
) -> None:
    """A sidecar whose delivery fields are missing or wrong (a bug's, a hand
    edit's): nothing is uploaded from it and neither file is removed (an
    empty `pending` read as "delivered" would delete a capture that never
    left); the error names the field; the entries after it still drain."""
    spool = Spool(tmp_path, 10 * MB)
    artifact = make_artifact()
    bad, good = spool.put(artifact, ["s3"]), spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(bad.id)
    sidecar = json.loads(path.read_text())
    if value is REMOVED:
        del sidecar[field]
    else:
        sidecar[field] = value
    path.write_text(json.dumps(sidecar))
    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
    assert report.delivered == (good.id,) and sink.received == [good.sha256]
    assert spool.data_path(bad.id).read_bytes() == bytes(artifact.data)
    assert spool.sidecar_path(bad.id).exists()
    if field == "size" and value == 10**20:  # well-formed, but not the file's
        [error] = report.errors
        assert error.startswith(f"spool entry {bad.id}: ") and "has sha256" in error
    else:
        assert f"spool_entry_unreadable id={bad.id} error=" in caplog.text
        assert said in caplog.text, caplog.text


def test_a_delivered_entry_whose_result_was_not_sent_still_reads_back(tmp_path: Path) -> None:
    """`pending: []` with locations is what hand_over keeps: read, then sent."""
    spool = Spool(tmp_path, 10 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(entry.id)
    path.write_text(
        json.dumps(json.loads(path.read_text()) | {"pending": [], "locations": {"s3": "s3://b/k"}})
    )
    sent: list[ResultEvent] = []

    def publish(event: ResultEvent, _entry: SpoolEntry) -> bool:
        sent.append(event)
        return True

    report = SpoolDrainer(spool, [], publish, 60).drain_once()
    assert report.delivered == (entry.id,)
    assert [(e.id, e.status, e.locations) for e in sent] == [
        (entry.request["id"], "delivered", {"s3": "s3://b/k"})
    ]
    assert spool.list() == []


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"attempts": ' + "9" * 5000 + "}", "\ud800", "\x00"],
    ids=["nested", "huge-int", "surrogate", "nul"],
)
def test_a_sidecar_json_cannot_parse_is_logged_and_the_pass_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    spool = Spool(tmp_path, 10 * MB)
    good = spool.put(make_artifact(), ["s3"])
    bad_id = "00000000000000000001-0bad0bad"
    spool.sidecar_path(bad_id).write_text(text, errors="surrogatepass")
    spool.data_path(bad_id).write_bytes(b"kept")
    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
    assert report.delivered == (good.id,) and report.remaining == (bad_id,)
    [(failed, why)] = report.failed.items()
    assert failed == bad_id and why.startswith("unreadable: sidecar")
    assert report.errors == (f"{bad_id}: {why}",)
    assert f"spool_entry_unreadable id={bad_id} error=" in caplog.text
    assert spool.data_path(bad_id).read_bytes() == b"kept"


def test_an_entry_whose_request_breaks_the_upload_is_kept_and_the_next_drains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request object that reads but cannot be rebuilt (`warnings: 5`): the
    pass logs that entry's failure and goes on to the next."""
    spool = Spool(tmp_path, 10 * MB)
    bad, good = spool.put(make_artifact(), ["s3"]), spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(bad.id)
    sidecar = json.loads(path.read_text())
    sidecar["request"]["warnings"] = 5
    path.write_text(json.dumps(sidecar))
    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
    assert report.delivered == (good.id,) and report.remaining == (bad.id,)
    assert report.errors == (f"{bad.id}: cannot drain: TypeError: 'int' object is not iterable",)
    assert f"spool_entry_failed id={bad.id}" in caplog.text
    assert spool.data_path(bad.id).exists() and spool.sidecar_path(bad.id).exists()


def test_a_lost_spooled_at_is_read_from_the_entry_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(entry.id)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"spooled_at": float("nan")}))
    [listed] = spool.list()
    assert abs(listed.spooled_at - entry.spooled_at) < 0.01


NOT_A_FILE = {"fifo": "is not a regular file", "symlink": "is a symbolic link"}


def make_not_a_file(path: Path, kind: str) -> None:
    """`path` made a FIFO (opened, it waits for a writer forever) or a link
    to /dev/zero (read, it never ends)."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_a_data_file_that_is_no_regular_file_is_reported_not_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A FIFO in place of a capture (opening it would wait for a writer
    forever) or a link to a file elsewhere: reported corrupt, kept, and
    the entries after it drain."""
    spool = Spool(tmp_path / "spool", 10 * MB)
    bad, good = spool.put(make_artifact(), ["s3"]), spool.put(make_artifact(), ["s3"])
    make_not_a_file(spool.data_path(bad.id), kind)
    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
    assert report.delivered == (good.id,) and report.remaining == (bad.id,)
    [error] = report.errors
    assert error.startswith(f"spool entry {bad.id}: ") and NOT_A_FILE[kind] in error, error
    assert f"spool_entry_corrupt id={bad.id}" in caplog.text
    assert spool.sidecar_path(bad.id).exists() and sink.received == [good.sha256]


@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_a_data_file_swapped_after_the_claim_is_corrupt_not_waited_on(
    tmp_path: Path, kind: str
) -> None:
    """Between claim() (which checked the file it opened) and load(), the
    file is replaced: load opens it as claim did, and never waits on it."""
    spool = Spool(tmp_path / "spool", 10 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    with spool.claim(entry.id) as held:
        assert held
        make_not_a_file(spool.data_path(entry.id), kind)
        with pytest.raises(SpoolCorrupt) as caught:
            spool.load(entry)
    assert str(caught.value) == (
        f"spool entry {entry.id}: {spool.data_path(entry.id)} {NOT_A_FILE[kind]}"
    )


def test_what_stays_is_reported_oldest_first_unreadable_ones_in_their_place(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", 10 * MB)
    entries = [spool.put(make_artifact(), ["s3"]) for _ in range(3)]
    middle = spool.sidecar_path(entries[1].id)
    middle.write_text(json.dumps(json.loads(middle.read_text()) | {"pending": None}))
    report = SpoolDrainer(spool, [Sink("s3", fail=True)], lambda e, en: True, 60).drain_once()
    assert report.remaining == tuple(e.id for e in entries)
    assert set(report.failed) == {entries[1].id}


@pytest.mark.parametrize("kind", ["fifo", "symlink", "huge"])
def test_a_sidecar_that_is_no_sidecar_file_is_unreadable_not_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A FIFO as a sidecar (reading it waits for a writer forever), a link
    (to /dev/zero: read without end) or a file past MAX_SIDECAR_BYTES:
    unreadable, kept, and the rest drains; `spool list` returns too."""
    spool = Spool(tmp_path / "spool", 10 * MB)
    bad, good = spool.put(make_artifact(), ["s3"]), spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(bad.id)
    if kind == "huge":
        path.write_bytes(b" " * (MAX_SIDECAR_BYTES + 1))
        said = f"more than {MAX_SIDECAR_BYTES} bytes"
    else:
        make_not_a_file(path, kind)
        said = NOT_A_FILE[kind]
    assert [e.id for e in spool.list()] == [good.id]
    report = SpoolDrainer(spool, [Sink("s3", fail=False)], lambda e, en: True, 60).drain_once()
    assert report.delivered == (good.id,) and report.remaining == (bad.id,)
    assert said in report.failed[bad.id], report.failed
    assert f"spool_entry_unreadable id={bad.id}" in caplog.text
    assert spool.data_path(bad.id).exists()


def test_claim_is_exclusive(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    with spool.claim(entry.id) as first:
        assert first
        with spool.claim(entry.id) as second:
            assert not second
        # The drainer skips what someone else holds (e.g. `pcapd spool retry`).
        sink = Sink("s3", fail=False)
        report = SpoolDrainer(spool, [sink], lambda e, entry: True, 60).drain_once()
        assert report.remaining == (entry.id,) and sink.received == []
    with spool.claim("no-such-entry") as missing:
        assert not missing


def test_drainer_delivers_partially_then_fully(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    artifact = make_artifact()
    entry = spool.put(
        artifact, ["s3", "cloudshark"], locations={"local": "/tmp/x.pcap"},
        event=spooled_event(artifact.request.id),
    )  # fmt: skip
    s3, cs = Sink("s3", fail=False), Sink("cloudshark")
    published: list[tuple[ResultEvent, dict[str, str]]] = []

    def publish(result: ResultEvent, entry: SpoolEntry) -> bool:
        published.append((result, dict(result.locations)))
        return True

    drainer = SpoolDrainer(spool, [s3, cs], publish, 60)

    report = drainer.drain_once()
    assert report.remaining == (entry.id,) and report.errors == (
        f"{entry.id}: cloudshark: cloudshark is down",
    )
    after = spool.get(entry.id)
    assert after is not None
    assert after.pending == ("cloudshark",) and after.attempts == 1
    assert after.locations == {"local": "/tmp/x.pcap", "s3": f"s3://{artifact.filename}"}
    assert after.last_error == "cloudshark: cloudshark is down"

    cs.fail = False
    assert drainer.drain_once().delivered == (entry.id,)
    assert s3.received == cs.received == [artifact.sha256]  # S3 was not sent it twice
    assert spool.list() == [] and list(tmp_path.iterdir()) == []
    [(event, locations)] = published
    assert event.status == "delivered" and event.error is None
    assert event.id == artifact.request.id and event.packets == 3 and event.warnings == ("w1",)
    assert dict(event.locations) == locations == {
        "local": "/tmp/x.pcap", "s3": f"s3://{artifact.filename}",
        "cloudshark": f"cloudshark://{artifact.filename}",
    }  # fmt: skip


def test_a_down_sink_is_tried_once_per_pass(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    for _ in range(3):
        spool.put(make_artifact(), ["s3"])
    calls = []

    class Counting(Sink):
        def upload(self, artifact: object) -> Location:
            calls.append(1)
            return super().upload(artifact)

    report = SpoolDrainer(spool, [Counting("s3")], lambda e, entry: True, 60).drain_once()
    assert len(calls) == 1 and len(report.remaining) == 3


def test_unknown_sink_and_failing_callback_do_not_stop_the_drainer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, 10 * MB)
    orphaned = spool.put(make_artifact(), ["ftp"])
    fine = spool.put(make_artifact(), ["s3"])

    def explode(event: ResultEvent, entry: SpoolEntry) -> bool:
        raise RuntimeError("redis is down")

    sink = Sink("s3", fail=False)
    report = SpoolDrainer(spool, [sink], explode, 60).drain_once()
    # Uploaded, but its result not sent: kept, with nothing left to upload.
    assert report.delivered == () and report.remaining == (orphaned.id, fine.id)
    assert report.errors == (f"{orphaned.id}: ftp: no such uploader configured",)
    assert "spool_on_delivered_failed" in caplog.text
    kept = spool.get(fine.id)
    assert kept is not None and kept.pending == () and "s3" in kept.locations
    assert kept.last_error == "delivered, but its result could not be published"
    assert len(sink.received) == 1


def test_delivered_event_without_a_stored_event(tmp_path: Path) -> None:
    artifact = make_artifact()
    entry = Spool(tmp_path, MB).put(artifact, ["s3"])
    event = delivered_event(entry, {"s3": "s3://b/k"})
    assert (event.id, event.status, event.sha256, event.bytes) == (
        artifact.request.id, "delivered", artifact.sha256, artifact.size,
    )  # fmt: skip


def test_background_thread_drains_and_stops(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10 * MB)
    sink = Sink("s3")
    delivered: list[ResultEvent] = []

    def deliver(result: ResultEvent, entry: SpoolEntry) -> bool:
        delivered.append(result)
        return True

    drainer = SpoolDrainer(spool, [sink], deliver, 0.05)
    drainer.start()
    try:
        spool.put(make_artifact(), ["s3"])

        def attempts() -> int:
            entries = spool.list()
            return entries[0].attempts if entries else 0

        wait_for(lambda: attempts() >= 2)  # retried on its own, every interval
        sink.fail = False
        drainer.wake()
        wait_for(lambda: len(delivered) == 1)
    finally:
        drainer.stop()
    assert spool.list() == []


CHILD = textwrap.dedent(
    """
    import sys, time
    from pcapd.core.config import S3Config
    from pcapd.core.secret import Secret
    from tests.uploaders.conftest import make_artifact
    from uploaders.deliver import Deliverer
    from uploaders.retry import RetryPolicy
    from uploaders.s3 import S3Uploader
    from uploaders.drain import SpoolDrainer
    from uploaders.spool import Spool

    spool_dir, dead_port = sys.argv[1], sys.argv[2]
    s3 = S3Uploader(S3Config(upload=True, accessid="A", accesskey=Secret("k"),
                    endpoint="http://127.0.0.1:" + dead_port, bucket="gone",
                    region="us-east-1"))
    spool = Spool(spool_dir, 64 << 20)
    outcome = Deliverer([s3], RetryPolicy(2, 0.01, 0.02), spool).deliver(make_artifact(300_000))
    print(outcome.status, outcome.spool_id, flush=True)
    SpoolDrainer(spool, [s3], lambda e, entry: True, 0.05).start()
    time.sleep(60)  # the parent kills us here, drainer running, file still spooled
    """
)


def test_killed_daemon_leaves_a_spool_that_the_next_one_delivers(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(free_port())],
        stdout=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        status, spool_id = child.stdout.readline().decode().split()
        assert status == "spooled"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    spool = Spool(tmp_path, 64 * MB)  # the "restarted daemon"
    [entry] = spool.list()
    assert entry.id == spool_id and entry.pending == ("s3",)
    assert (
        entry.last_error is not None
        and f"s3: s3://gone/{entry.filename}: Could not connect" in entry.last_error
    )
    bucket = moto_s3.new_bucket()
    config = moto_s3.s3_config(bucket, folder="restarted")
    delivered: list[dict[str, str]] = []

    def deliver(result: ResultEvent, entry: SpoolEntry) -> bool:
        delivered.append(dict(result.locations))
        return True

    drainer = SpoolDrainer(spool, [S3Uploader(config)], deliver, 0.05)
    drainer.start()
    try:
        wait_for(lambda: delivered, timeout=20)
    finally:
        drainer.stop()
    key = f"restarted/{entry.filename}"
    assert delivered == [{"s3": f"s3://{bucket}/{key}"}]
    body = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry.sha256
    assert spool.list() == []


def test_logging_of_spooling_names_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    artifact = make_artifact()
    Spool(tmp_path, MB).put(artifact, ["s3"], errors={"s3": "refused"})
    assert f"file={artifact.filename}" in caplog.text and 'error="s3: refused"' in caplog.text


def test_concurrent_puts_never_overfill(tmp_path: Path) -> None:
    import threading

    spool = Spool(tmp_path, 1 * MB)
    artifacts = [make_artifact(300_000) for _ in range(8)]
    outcomes: list[str] = []

    def put(index: int) -> None:
        try:
            spool.put(artifacts[index], ["s3"])
            outcomes.append("ok")
        except SpoolFull:
            outcomes.append("full")

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["full"] * 5 + ["ok"] * 3
    assert spool.used_bytes() <= MB

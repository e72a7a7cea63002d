from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from pcapd.cli import main as pcapd_main
from pcapd.core import results as results_module
from pcapd.core.backoff import Backoff
from pcapd.core.events import ResultEvent
from tests.helpers import RedisServer
from tests.uploaders.conftest import S3_KEY_ID, S3_SECRET, MotoS3, make_artifact, make_request
from uploaders.spool import Spool

MB = 1024 * 1024


def main(argv: list[str]) -> int:
    return pcapd_main(["spool", *argv])


def write_config(tmp_path: Path, endpoint: str, bucket: str, redis_port: int) -> Path:
    path = tmp_path / "pcapd.toml"
    path.write_text(
        f"""
[general]
node = "node1"

[redis]
port = {redis_port}

[s3]
upload = true
accessid = "{S3_KEY_ID}"
accesskey = "{S3_SECRET}"
endpoint = "{endpoint}"
bucket = "{bucket}"
folder = "pcaps"
region = "us-east-1"

[delivery]
spool_dir = "{tmp_path / "spool"}"
spool_max_bytes = {8 * MB}
"""
    )
    return path


def test_list_and_retry(
    tmp_path: Path, moto_s3: MotoS3, redis_srv: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = moto_s3.new_bucket()
    config = write_config(tmp_path, moto_s3.endpoint, bucket, redis_srv.port)
    spool = Spool(tmp_path / "spool", 8 * MB)
    artifact = make_artifact(3000, request=make_request(reply_to="mine"))
    event = ResultEvent(id=artifact.request.id, node="node1", status="spooled", interface="lo")
    entry = spool.put(artifact, ["s3"], event=event.as_dict(), errors={"s3": "refused"})
    other = spool.put(make_artifact(1000), ["s3"], errors={"s3": "refused"})

    assert main(["list", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{entry.id}  age=")
    assert "bytes=3000  pending=s3  attempts=0" in out[0] and "last_error=s3: refused" in out[0]
    assert out[1].startswith(other.id)
    assert out[2].startswith("2 spooled, ") and f"of {8 * MB} bytes" in out[2]

    assert main(["list", "--json", "-c", str(config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [entry.id, other.id] and rows[0]["bytes"] == 3000
    assert (rows[0]["last_error"], rows[0]["errors"]) == ("s3: refused", {"s3": "refused"})

    client: Any = redis_srv.client()  # redis-py's pubsub/xrange are untyped
    listener = client.pubsub()
    listener.subscribe("mine")
    assert main(["retry", "--id", entry.id, "-c", str(config)]) == 0
    text = capsys.readouterr().out
    key = f"pcaps/{artifact.filename}"
    assert f"delivered {entry.id}: s3=s3://{bucket}/{key}" in text
    assert "1 delivered, 0 still spooled" in text
    body = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == artifact.sha256
    [(_, fields)] = client.xrange("capture-results")
    published = ResultEvent.from_json(fields[b"event"])
    assert (published.id, published.status) == (artifact.request.id, "delivered")
    assert dict(published.locations) == {"s3": f"s3://{bucket}/{key}"}
    messages = [m for m in iter(lambda: listener.get_message(timeout=1), None)]
    assert any(m["type"] == "message" for m in messages)  # reply_to got it too
    listener.close()
    assert [e.id for e in spool.list()] == [other.id]


def test_retry_that_fails_keeps_the_entry_and_says_why(
    tmp_path: Path, moto_s3: MotoS3, redis_srv: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, moto_s3.endpoint, "no-such-bucket-cli", redis_srv.port)
    entry = Spool(tmp_path / "spool", 8 * MB).put(make_artifact(), ["s3"])
    assert main(["retry", "--no-publish", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert f"still spooled {entry.id}: s3: s3://no-such-bucket-cli/pcaps/" in captured.err
    assert "NoSuchBucket" in captured.err
    assert "0 delivered, 1 still spooled" in captured.out
    assert S3_SECRET not in captured.out + captured.err
    left = Spool(tmp_path / "spool", 8 * MB).get(entry.id)
    assert left is not None and left.attempts == 1


def test_list_shows_an_entry_whose_note_is_malformed_and_says_why(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    """A note that is no string (a hand edit) is dropped: the entry is
    listed, with one warning on stderr naming it and the field."""
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entry = spool.put(make_artifact(), ["s3"], errors={"s3": "refused"})
    path = spool.sidecar_path(entry.id)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"note": ["x"]}))
    assert main(["list", "-c", str(config)]) == 0
    captured = capsys.readouterr()
    assert f"{entry.id}  age=" in captured.out and "last_error=s3: refused" in captured.out
    warning = (
        f"level=warning event=spool_entry_field_dropped id={entry.id} field=note "
        "error=\"note=['x'] is not a string or null; dropped, the entry drains without it\""
    )
    assert captured.err.splitlines() == [warning]


def test_list_writes_a_sidecar_s_control_characters_escaped(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error holding an escape sequence, a newline or a lone surrogate (a
    sink's reply, a hand edit) prints quoted with its escapes: one line per
    entry, nothing the terminal would act on."""
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    spool = Spool(tmp_path / "spool", 8 * MB)
    spool.put(
        make_artifact(), ["s3"], errors={"s3": "refused\nlevel=info forged"},
        note="x\x1b[2J\ud800",
    )  # fmt: skip
    assert main(["list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    [line, _summary] = out.splitlines()
    shown = repr("x\x1b[2J\ud800; s3: refused\nlevel=info forged")
    assert line.endswith(f"  last_error={shown}"), line
    assert "\x1b" not in out


def test_an_unreadable_entry_is_counted_as_still_spooled(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry kept because its sidecar is unreadable is no "0 still
    spooled, exit 0": list counts it, retry (all, or its --id) names it
    with why and exits 1."""
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    path = spool.sidecar_path(entry.id)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pending": {}}))
    assert main(["list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 spooled and 1 unreadable (kept; see the errors above), "), out
    assert main(["list", "--json", "-c", str(config)]) == 0
    listed = capsys.readouterr()
    why = "sidecar: pending={} is not a list of sink names"
    assert [json.loads(line) for line in listed.out.splitlines()] == [
        {"id": entry.id, "unreadable": why}
    ]
    assert listed.err.splitlines()[-1].startswith("0 spooled and 1 unreadable"), listed.err
    for ids in ([], ["--id", entry.id]):
        assert main(["retry", "--no-publish", "-c", str(config), *ids]) == 1
        captured = capsys.readouterr()
        why = "unreadable: sidecar: pending={} is not a list of sink names"
        assert f"still spooled {entry.id}: {why}" in captured.err.splitlines()
        assert captured.out.splitlines()[-1] == "0 delivered, 1 still spooled"
    assert spool.data_path(entry.id).exists()


def test_list_json_gives_an_unreadable_entry_its_row_in_its_place(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list` is oldest first, and so are its --json rows, an unreadable
    entry's among them, as `retry` names what stays; before, those rows
    came after every readable one."""
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entries = [spool.put(make_artifact(), ["s3"]) for _ in range(3)]
    path = spool.sidecar_path(entries[1].id)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pending": {}}))
    assert main(["list", "--json", "-c", str(config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == [entry.id for entry in entries]
    assert "unreadable" in rows[1] and "bytes" in rows[0] and "bytes" in rows[2]


def test_retry_says_why_a_corrupt_entry_stays(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its data file replaced by a FIFO: retry names that, not "in use"."""
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    spool.data_path(entry.id).unlink()
    os.mkfifo(spool.data_path(entry.id))
    assert main(["retry", "--no-publish", "-c", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    shown = f"still spooled {entry.id}: spool entry {entry.id}: {spool.data_path(entry.id)} "
    assert shown + "is not a regular file" in err, err


def test_bad_invocations(
    tmp_path: Path, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, moto_s3.endpoint, "b", 1)
    assert main(["retry", "--id", "nope", "-c", str(config)]) == 2
    assert "error: nope: no such spool entry" in capsys.readouterr().err

    broken = tmp_path / "broken.toml"
    broken.write_text('[general]\nnode = "n"\n[delivery]\nspool_max_bytes = 5\n')
    assert main(["list", "-c", str(broken)]) == 2
    assert (
        "delivery.spool_max_bytes: must be at least 1048576 and at most 1125899906842624, got 5"
        in capsys.readouterr().err
    )

    with pytest.raises(SystemExit) as info:
        main(["list"])
    assert info.value.code == 2
    assert "-c/--config" in capsys.readouterr().err


def test_retry_keeps_an_entry_whose_result_could_not_be_published(
    tmp_path: Path, moto_s3: MotoS3, private_redis: RedisServer,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Redis away past publish's attempts: the capture reached S3, but the
    entry stays (with where it went, nothing left to upload) and the command
    exits 1; once Redis is back, a retry publishes its `delivered` to reply_to
    without uploading it again."""
    monkeypatch.setattr(results_module, "PUBLISH_BACKOFF", Backoff(initial=0.05, maximum=0.1))
    bucket = moto_s3.new_bucket()
    config = write_config(tmp_path, moto_s3.endpoint, bucket, private_redis.port)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entry = spool.put(make_artifact(request=make_request(reply_to="mine")), ["s3"])
    private_redis.stop()
    assert main(["retry", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "could not publish the result" in captured.out and "kept in the spool" in captured.out
    assert f"delivered {entry.id}" not in captured.out  # printed once the result is sent
    assert "0 delivered, 1 still spooled" in captured.out
    assert f"still spooled {entry.id}: delivered, but its result could not be published" in (
        captured.err
    )
    left = spool.get(entry.id)
    assert left is not None and left.pending == () and "s3" in left.locations
    assert main(["list", "-c", str(config)]) == 0
    assert "pending=(result to publish)  attempts=1" in capsys.readouterr().out
    private_redis.start()
    client: Any = private_redis.client()  # redis-py's pubsub is untyped
    listener = client.pubsub()
    listener.subscribe("mine")
    assert main(["retry", "-c", str(config)]) == 0
    assert "1 delivered, 0 still spooled" in capsys.readouterr().out
    messages = [m for m in iter(lambda: listener.get_message(timeout=1), None)]
    assert [json.loads(m["data"])["status"] for m in messages if m["type"] == "message"] == [
        "delivered"
    ]
    listener.close()
    assert spool.list() == []


def test_retry_drops_an_entry_whose_result_redis_refuses(
    tmp_path: Path, moto_s3: MotoS3, redis_srv: RedisServer,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The results stream key holds another type: Redis refuses the result
    for good. The first retry removes the entry (result_lost logged once, as
    the daemon does), says so, and exits 0; the second has nothing to send:
    one copy reached the channel."""
    caplog.set_level(logging.WARNING, logger="pcapd.core.results")
    bucket = moto_s3.new_bucket()
    config = write_config(tmp_path, moto_s3.endpoint, bucket, redis_srv.port)
    spool = Spool(tmp_path / "spool", 8 * MB)
    entry = spool.put(make_artifact(), ["s3"])
    client: Any = redis_srv.client()  # redis-py's pubsub is untyped
    client.set("capture-results", "not a stream")
    listener = client.pubsub()
    listener.subscribe("capture-results")
    try:
        assert main(["retry", "-c", str(config)]) == 0
        captured = capsys.readouterr()
        assert f"delivered {entry.id}: s3=" in captured.out
        assert "1 delivered, 0 still spooled" in captured.out
        assert f"warning: {entry.id}: Redis refused its result" in captured.err
        assert "not retried" in captured.err
        assert spool.list() == []
        assert main(["retry", "-c", str(config)]) == 0
        assert "0 delivered, 0 still spooled" in capsys.readouterr().out
        messages = [m for m in iter(lambda: listener.get_message(timeout=1), None)]
        assert [json.loads(m["data"])["status"] for m in messages if m["type"] == "message"] == [
            "delivered"
        ]
    finally:
        listener.close()
    lost = [r for r in caplog.records if r.getMessage() == "result_lost"]
    assert len(lost) == 1 and "WRONGTYPE" in caplog.text


def test_a_spool_directory_that_does_not_exist_is_said_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", "b", 6379)
    spool_dir = tmp_path / "spool"
    absent = (f"{spool_dir} does not exist (a daemon with S3 or CloudShark uploads makes it "
              "when it starts: is this its config?)")  # fmt: skip
    for action in (["list"], ["retry"]):
        assert main([*action, "-c", str(config)]) == 0
        assert capsys.readouterr().out == f"0 spooled: {absent}\n"
    assert main(["list", "--json", "-c", str(config)]) == 0
    assert capsys.readouterr() == ("", f"0 spooled: {absent}\n")  # stdout: JSON lines only
    assert main(["retry", "-c", str(config), "--id", "x"]) == 2
    assert capsys.readouterr().err == f"error: x: no such spool entry: {absent}\n"
    assert not spool_dir.exists()

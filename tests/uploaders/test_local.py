"""The local uploader: atomic, never overwriting, 0640, directory created."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pcapd.core.atomic import write_atomic
from pcapd.core.config import parse_config
from pcapd.core.events import ResultEvent
from pcapd.core.request import parse_request
from uploaders.base import Artifact, UploadError, artifact_filename
from uploaders.local import LocalUploader


def artifact(data: bytes = b"pcap-bytes", request_id: str = "r1") -> Artifact:
    config = parse_config({"general": {"node": "n1"}})
    request = parse_request(
        json.dumps({"node": "any", "interface": "lo", "id": request_id}), config
    )
    return Artifact(
        data=bytearray(data),
        filename=artifact_filename("n1", "eth0:1", 1795306384.0123, request_id, "pcap"),
        format="pcap",
        sha256="0" * 64,
        request=request,
        node="n1",
        interface="eth0:1",
    )


def test_filename_has_node_interface_utc_ms_and_id() -> None:
    name = artifact_filename("web1.example", "eth0:1", 1795306384.0123, "abc-1", "pcapng")
    assert name == "web1.example_eth0-1_20261122T001304.012Z_abc-1.pcapng"


def test_upload_creates_directory_and_writes_0640(tmp_path: Path) -> None:
    os.umask(0o077)  # the mode must not depend on the daemon's umask
    target = tmp_path / "a" / "b"
    location = LocalUploader(target).upload(artifact())
    path = Path(location.url)
    assert location.kind == "local" and path.parent == target
    assert path.read_bytes() == b"pcap-bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_directory_removed_between_captures_is_made_again(tmp_path: Path) -> None:
    # It is made when a write finds it missing, not looked at before each one.
    target = tmp_path / "captures"
    uploader = LocalUploader(target)
    first = Path(uploader.upload(artifact(b"one", "r1")).url)
    first.unlink()
    target.rmdir()
    second = Path(uploader.upload(artifact(b"two" * 100_000, "r2")).url)
    assert second.read_bytes() == b"two" * 100_000
    assert [p.name for p in target.iterdir()] == [second.name]


def test_never_overwrites_an_existing_capture(tmp_path: Path) -> None:
    uploader = LocalUploader(tmp_path)
    uploader.upload(artifact(b"first"))
    with pytest.raises(UploadError, match="exists: refusing to overwrite"):
        uploader.upload(artifact(b"second"))
    assert next(tmp_path.glob("*.pcap")).read_bytes() == b"first"


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UploadError, match=r"cannot write .*file/n1_"):
        LocalUploader(blocker).upload(artifact())


def test_sidecar_holds_the_result(tmp_path: Path) -> None:
    uploader = LocalUploader(tmp_path)
    location = uploader.upload(artifact())
    uploader.stored(location, ResultEvent(id="r1", node="n1", status="ok"))
    assert json.loads(Path(location.url + ".json").read_text())["status"] == "ok"
    assert uploader.writes_to() == str(tmp_path)


def test_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:

    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x.pcap", object())  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []

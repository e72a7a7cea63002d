"""Entries the previous version spooled (sidecar version 1, one joined
`last_error`) read back and drain after an upgrade."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pcapd.core.events import ResultEvent
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import MotoS3, cs_config
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deadline import Deadlined
from uploaders.drain import SpoolDrainer
from uploaders.s3 import S3Uploader
from uploaders.spool import Spool
from uploaders.spool_entry import SpoolEntry

ENTRY_ID = "01796197216537554101-e602ce5a"
DATA = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")  # its sha256 below
JOINED = "s3: connection refused; cloudshark: HTTP 503: busy"
WRITE_AHEAD = "write-ahead: upload under way (the process stopped before it finished)"
# As the previous version wrote it (json.dumps(indent=1, sort_keys=True), no
# newline at the end), `last_error` here being JOINED.
V1_SIDECAR = """{
 "attempts": 0,
 "event": {
  "alertid": null,
  "bytes": 0,
  "ended": null,
  "error": "s3: connection refused; cloudshark: HTTP 503: busy",
  "event_id": null,
  "format": null,
  "id": "req-0ld51de",
  "interface": "lo",
  "kernel_dropped": 0,
  "locations": {},
  "lookback": null,
  "node": "node1",
  "packets": 0,
  "request_sha256": null,
  "sha256": null,
  "started": null,
  "status": "spooled",
  "stop": null,
  "warnings": []
 },
 "filename": "node1_lo_20261122T001130.123Z_req-0ld51de.pcap",
 "format": "pcap",
 "id": "01796197216537554101-e602ce5a",
 "interface": "lo",
 "last_error": "s3: connection refused; cloudshark: HTTP 503: busy",
 "locations": {},
 "node": "node1",
 "pending": [
  "s3",
  "cloudshark"
 ],
 "request": {
  "acl": null,
  "alertid": 655443,
  "aliases": [],
  "bpf": "tcp",
  "bucket": null,
  "bytes": 10000000,
  "customer": "acme",
  "duration": 5,
  "encryption": null,
  "endpoint": null,
  "folder": null,
  "format": "pcap",
  "id": "req-0ld51de",
  "interfaces": [
   "lo"
  ],
  "kid": null,
  "logrequest": false,
  "lookback": 0,
  "node": "any",
  "nodere": null,
  "packetdebug": false,
  "packets": 10,
  "region": null,
  "reply_to": null,
  "sig": null,
  "snap": 65535,
  "tags": [
   "web",
   "alert"
  ],
  "timeout": 5,
  "ts": null,
  "warnings": []
 },
 "sha256": "acc530668c8bc60b2d229281130b1899bfc81d70fdada5c34b3236c628f739c8",
 "size": 24,
 "spooled_at": 1796197216.5376503,
 "version": 1
}"""


def v1_spool(directory: Path, last_error: str = JOINED) -> Spool:
    directory.mkdir(mode=0o700)
    (directory / f"{ENTRY_ID}.cap").write_bytes(DATA)
    sidecar = V1_SIDECAR.replace(f'"last_error": "{JOINED}"', f'"last_error": "{last_error}"')
    (directory / f"{ENTRY_ID}.json").write_text(sidecar)
    return Spool(directory, 1 << 20)


@pytest.mark.parametrize(
    ("last_error", "errors", "note"),
    [
        (JOINED, {"s3": "connection refused", "cloudshark": "HTTP 503: busy"}, None),
        (WRITE_AHEAD, {}, WRITE_AHEAD),  # a write-ahead entry: no sink's error yet
        ("local: disk full; s3: refused", {"s3": "refused"}, "local: disk full"),
    ],
)
def test_a_v1_entry_shows_its_last_error_as_it_was(
    tmp_path: Path, last_error: str, errors: dict[str, str], note: str | None
) -> None:
    [entry] = v1_spool(tmp_path / "spool", last_error).list()
    assert (entry.id, entry.pending) == (ENTRY_ID, ("s3", "cloudshark"))
    assert (entry.errors, entry.note, entry.last_error) == (errors, note, last_error)


def test_a_v1_entry_drains_each_sink_keeping_its_own_error(
    tmp_path: Path, moto_s3: MotoS3, cloudshark: CloudsharkServer
) -> None:
    """S3 takes it while CloudShark is left untried (shutdown): the entry,
    rewritten in the new format, keeps CloudShark's part of the old error;
    then CloudShark takes it, and its `delivered` result is published."""
    spool = v1_spool(tmp_path / "spool")
    bucket = moto_s3.new_bucket()
    abandon = threading.Event()
    abandon.set()
    cs = Deadlined(CloudsharkUploader(cs_config(cloudshark)), 10.0, abandon)
    delivered: list[ResultEvent] = []

    def sent(result: ResultEvent, held: SpoolEntry) -> bool:
        delivered.append(result)
        return True

    drainer = SpoolDrainer(spool, [S3Uploader(moto_s3.s3_config(bucket)), cs], sent, 60)
    assert drainer.drain_once().remaining == (ENTRY_ID,)
    [kept] = spool.list()
    assert (kept.pending, kept.last_error, kept.attempts) == (
        ("cloudshark",), "cloudshark: HTTP 503: busy", 0,
    )  # fmt: skip
    sidecar = json.loads(spool.sidecar_path(ENTRY_ID).read_text())
    # `last_error` as well, for a previous version run after this one.
    assert sidecar["errors"] == {"cloudshark": "HTTP 503: busy"}
    assert (sidecar["version"], sidecar["last_error"]) == (2, "cloudshark: HTTP 503: busy")
    abandon.clear()
    assert drainer.drain_once().delivered == (ENTRY_ID,)
    [result] = delivered
    assert (result.id, result.status, result.error) == ("req-0ld51de", "delivered", None)
    assert set(result.locations) == {"s3", "cloudshark"} and spool.list() == []
    key = "pcaps/node1_lo_20261122T001130.123Z_req-0ld51de.pcap"
    assert moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == DATA
    assert [u.data for u in cloudshark.uploads] == [DATA]

"""A spooled capture's `delivered` goes to its reply_to, and its entry stays
until that result was sent; a kept entry is not uploaded again."""

from __future__ import annotations

from pathlib import Path

from pcapd.core.events import ResultEvent
from tests.uploaders.conftest import make_artifact, make_request
from uploaders.drain import SpoolDrainer
from uploaders.local import LocalUploader
from uploaders.spool import Spool, SpoolEntry


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

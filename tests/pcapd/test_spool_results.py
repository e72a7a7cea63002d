"""A spooled capture's `delivered` goes to its reply_to, and its entry stays
until that result was sent."""

from __future__ import annotations

from pathlib import Path

from pcapd.core.events import ResultEvent
from pcapd.spool_results import DeliveredResults
from tests.uploaders.conftest import make_artifact, make_request
from uploaders.drain import SpoolDrainer
from uploaders.local import LocalUploader
from uploaders.spool import Spool


def test_the_entry_goes_once_its_result_was_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    entry = spool.put(make_artifact(request=make_request(reply_to="mine")), ["sink"])
    sent: list[tuple[str | None, str | None]] = []
    answer = [False]

    def send(result: ResultEvent, reply_to: str | None) -> bool:
        sent.append((result.status, reply_to))
        return answer[0]

    results = DeliveredResults(spool, send)
    drainer = SpoolDrainer(
        results.drainer_spool, {"sink": LocalUploader(tmp_path / "out")}, results, 60.0
    )
    drainer.drain_once()
    assert sent == [("delivered", "mine")] and results.kept == [entry.id]
    left = spool.get(entry.id)
    assert left is not None and left.pending == ("sink",) and "local" in left.locations
    assert left.last_error == "delivered, but its result could not be published"
    answer[0] = True
    # Uploaded again (a local sink refuses to overwrite: another directory).
    drainer.uploaders["sink"] = LocalUploader(tmp_path / "again")
    assert drainer.drain_once().errors == ()
    assert sent[1:] == [("delivered", "mine")] and spool.list() == []
    assert not spool.data_path(entry.id).exists()

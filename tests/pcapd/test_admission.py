"""pcapd/admission.py: every bound refuses with its reason, and a reservation
gives back what it holds exactly once, whichever path releases it first."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from pcapd.admission import DISK_LOOK_INTERVAL, Admission, DiskSpace, Refused, disk_space
from pcapd.core.config import parse_config
from uploaders.spool import Spool

# Bounds far below what a config allows, so the arithmetic is easy to read.
GENERAL = dataclasses.replace(
    parse_config({"general": {"node": "n1"}}).general, max_memory=2_500, max_concurrent=2
)


def space(free: int) -> DiskSpace:
    """Every directory on one filesystem (st_dev 7) with `free` bytes."""
    return lambda directory: (7, free)


def test_slots_and_memory_refuse_with_the_bound_and_come_back_on_release() -> None:
    adm = Admission(GENERAL, None, ())
    first, second = adm.reserve(1_000), adm.reserve(1_000)
    assert adm.free_slots() == 0
    with pytest.raises(Refused, match=r"^max_concurrent=2 captures already running$"):
        adm.reserve(1)
    first.free_slot()  # captured: the slot goes, the memory stays
    with pytest.raises(Refused, match=r"^bytes=1000 does not fit: 2000 of max_memory=2500 "):
        adm.reserve(1_000)
    first.keep(300)  # the file is smaller than its bound
    third = adm.reserve(1_000)
    for reservation in (first, second, third):
        assert reservation.release()
    assert adm.idle and adm.free_slots() == 2


def test_keeping_the_file_frees_the_slot_in_the_same_step() -> None:
    # A capture's end takes the admission's lock once: the slot and the
    # file's size together (a storm pays a GIL wait per lock taken).
    adm = Admission(GENERAL, None, ())
    first, _second = adm.reserve(1_000), adm.reserve(1_000)
    first.keep(300)
    assert adm.free_slots() == 1 and adm.reserved == 1_300
    third = adm.reserve(1_000)
    assert adm.free_slots() == 0 and adm.reserved == 2_300
    first.keep(200)  # said again: the slot stays given back once
    assert adm.active == 2 and adm.reserved == 2_200
    third.release()
    assert adm.active == 1


def test_release_happens_once_however_many_paths_reach_it() -> None:
    adm = Admission(GENERAL, None, ())
    reservation = adm.reserve(1_000)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(reservation.release()))
               for _ in range(8)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    reservation.keep(500)  # a late path after release changes nothing
    reservation.free_slot()
    assert adm.idle and (adm.active, adm.reserved) == (0, 0)


def test_release_in_finally_survives_an_exception() -> None:
    adm = Admission(GENERAL, None, ())
    with pytest.raises(RuntimeError):
        reservation = adm.reserve(1_000)
        try:
            raise RuntimeError("capture crashed")
        finally:
            reservation.release()
    assert not reservation.release() and adm.idle


def test_disk_counts_every_copy_and_what_was_promised(tmp_path: Path) -> None:
    targets = (("local", str(tmp_path / "a")), ("spool", str(tmp_path / "b")))
    adm = Admission(GENERAL, None, targets, space(3_000))
    with pytest.raises(Refused) as refused:
        Admission(GENERAL, None, targets, space(1_999)).reserve(1_000)
    assert str(refused.value) == (
        f"disk full: 1999 bytes free on the filesystem of {tmp_path}/a (local), "
        f"{tmp_path}/b (spool), bytes=1000 needs 2000"
    )
    held = adm.reserve(1_000)
    assert adm.disk_promised == {7: 2_000}
    with pytest.raises(Refused, match=r"\(2000 promised to captures not yet stored\)$"):
        adm.reserve(1_000)
    held.keep(100)
    assert adm.disk_promised == {7: 200}
    assert held.release() and adm.idle


def test_refused_on_disk_promises_nothing_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1_500)
    targets = (("spool", str(tmp_path / "spool")),)
    adm = Admission(GENERAL, spool, targets, space(500))
    with pytest.raises(Refused, match=r"^disk full: "):
        adm.reserve(1_000)
    assert adm.idle
    roomy = Admission(GENERAL, spool, targets)
    held = roomy.reserve(1_000)
    with pytest.raises(Refused, match=r"^spool full: .*\(1000 of them promised to running"):
        roomy.reserve(1_000)
    assert held.release() and roomy.idle


def test_closed_admission_refuses_and_unmeasurable_disk_refuses(tmp_path: Path) -> None:
    adm = Admission(GENERAL, None, ())
    adm.close()
    assert adm.free_slots() == 0
    with pytest.raises(Refused, match=r"^shutting down: not taking new captures$"):
        adm.reserve(1)

    def broken(directory: str) -> tuple[int, int]:
        raise PermissionError("denied")

    with pytest.raises(Refused, match=r"^cannot check free space in /x \(local\): denied$"):
        Admission(GENERAL, None, (("local", "/x"),), broken).reserve(1)


def test_disk_space_looks_at_the_nearest_existing_parent(tmp_path: Path) -> None:
    assert disk_space(str(tmp_path / "not" / "made")) == disk_space(str(tmp_path))


def test_ring_memory_is_held_for_good_and_captures_get_the_rest() -> None:
    adm = Admission(GENERAL, None, (), rings=1_200)
    first = adm.reserve(1_000)
    with pytest.raises(
        Refused,
        match=r"^bytes=500 does not fit: 1000 of max_memory=2500 held "
        r"by captures running or awaiting upload and 1200 by lookback rings$",
    ):
        adm.reserve(500)  # fmt: skip
    assert first.release()
    adm.reserve(1_300).release()  # the capture's memory came back; the rings' stays
    assert adm.idle and (adm.reserved, adm.rings) == (0, 1_200)
    with pytest.raises(
        Refused,
        match=r"^lookback rings need 2501 bytes, more than "
        r"max_memory=2500$",
    ):
        Admission(GENERAL, None, (), rings=2_501)  # fmt: skip


def test_free_space_is_looked_at_once_per_interval_and_afresh_before_a_refusal(
    tmp_path: Path,
) -> None:
    looks: list[str] = []
    free = {"now": 5_000}

    def counted(directory: str) -> tuple[int, int]:
        looks.append(directory)
        return 7, free["now"]

    now = {"t": 100.0}
    roomy = dataclasses.replace(GENERAL, max_memory=100_000, max_concurrent=4)
    adm = Admission(roomy, None, (("local", str(tmp_path)),), counted, clock=lambda: now["t"])
    first = adm.reserve(2_000)
    assert first.release()  # stored, maybe: counts as written until the next look
    held = adm.reserve(2_000)  # 5000 - 2000 written leaves room: no second statvfs
    assert len(looks) == 1
    # 3000 - 2000 promised is short of 2000: a fresh look decides, and the
    # message gives what the disk says now.
    free["now"] = 2_500
    with pytest.raises(Refused) as refused:
        adm.reserve(2_000)
    assert str(refused.value) == (
        f"disk full: 2500 bytes free on the filesystem of {tmp_path} (local), bytes=2000 "
        "needs 2000 (2000 promised to captures not yet stored)"
    )
    assert len(looks) == 2
    free["now"] = 10_000  # room made meanwhile: the look before refusing sees it
    assert adm.reserve(2_000).release() and len(looks) == 3
    now["t"] += DISK_LOOK_INTERVAL  # and the interval's end, too
    assert adm.reserve(2_000).release() and len(looks) == 4
    assert held.release() and adm.idle

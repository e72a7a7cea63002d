"""uploaders/base.py: capture file names in pcapd's and pcapdaemon's patterns."""

from __future__ import annotations

import threading

from uploaders.base import FileNamer, pcapdaemon_key

STARTED = 1_764_547_890.25  # 2025-12-01T00:11:30.250Z


def test_pcapd_names_carry_the_ms_and_the_request_id() -> None:
    name = FileNamer()("web 1", "eth0", STARTED, "req-1", "pcapng")
    assert name == "web-1_eth0_20251201T001130.250Z_req-1.pcapng"


def test_pcapdaemon_names_are_host_iface_unixtime() -> None:
    names = FileNamer("pcapdaemon")
    assert names("web1", "eth0", STARTED, "req-1", "pcap") == "web1-eth0-1764547890.pcap"
    assert names("web1", "eth1", STARTED, "req-1", "pcap") == "web1-eth1-1764547890.pcap"
    # Its own request id plays no part; a later start gets its own second.
    assert names("web1", "eth0", STARTED + 5, "x", "pcapng") == "web1-eth0-1764547895.pcapng"


def test_pcapdaemon_names_never_repeat_within_one_second() -> None:
    names = FileNamer("pcapdaemon")
    got: list[str] = []
    lock = threading.Lock()

    def name_one(index: int) -> None:
        name = names("web1", "eth0", STARTED + index / 100, str(index), "pcap")
        with lock:
            got.append(name)

    threads = [threading.Thread(target=name_one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(got)) == 20
    assert sorted(got) == [f"web1-eth0-{1_764_547_890 + i}.pcap" for i in range(20)]


def test_pcapdaemon_key_is_its_cleaned_path() -> None:
    assert pcapdaemon_key("pcaps", "a.pcap") == "pcaps/a.pcap"
    assert pcapdaemon_key("", "a.pcap") == "a.pcap"
    assert pcapdaemon_key("/team//pcaps/./", "a.pcap") == "team/pcaps/a.pcap"

"""The controller and the spool: space is promised at admission, and a
shutdown that cannot wait for a hanging upload spools the capture instead."""

from __future__ import annotations

import threading
from pathlib import Path

from pcapd.controller import Controller
from pcapd.core.config import parse_config
from pcapd.core.redis_conn import connect
from pcapd.core.results import ResultPublisher
from pcapd.engine import HandlePool
from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.test_controller import Recorded, request
from tests.pcapd.test_engine import send_udp
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import cs_config
from uploaders.cloudshark import CloudsharkUploader
from uploaders.deliver import Deliverer
from uploaders.retry import RetryPolicy
from uploaders.spool import Spool


def test_hanging_upload_is_spooled_at_shutdown(
    redis_srv: RedisServer, results: Results, tmp_path: Path, cloudshark: CloudsharkServer
) -> None:
    cloudshark.hang = threading.Event()
    cloudshark.hang.set()
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 1_000_000, "max_memory": 4_000_000},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1}},
    )  # fmt: skip
    spool = Spool(tmp_path / "spool", 64 * 1024 * 1024)
    uploader = CloudsharkUploader(cs_config(cloudshark, read_timeout=3.0))
    ctl = Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer([uploader], RetryPolicy.from_config(config.delivery), spool),
        pool=HandlePool((), config.general.buffer_size),
    )
    port = free_port()
    got = Recorded(request(port, id="hung", packets=2))
    ctl.handle(got.delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    wait_for(lambda: cloudshark.requests >= 1)  # the upload is in flight, and hangs
    assert ctl.shutdown(timeout=1.0)
    event = results.for_id("hung")
    assert event["status"] == "spooled" and event["error"].startswith("shutdown:")
    [entry] = spool.list()
    assert entry.pending == ("cloudshark",) and entry.sha256 == event["sha256"]
    assert got.acks == 1  # stored durably: the source may forget it
    # End the hanging upload inside the test, so no thread of it outlives the test.
    cloudshark.release.set()
    ctl._upload_pool.shutdown(wait=True)


def test_spool_space_is_promised_to_admitted_captures(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    config = parse_config(
        {"general": {"node": "n1", "maxbytes": 1_000_000, "max_memory": 8_000_000},
         "redis": {"port": redis_srv.port}, "delivery": {"attempts": 1},
         "cloudshark": {"upload": True, "scheme": "http", "host": "127.0.0.1",
                        "port": free_port(), "token": "t"}},
    )  # fmt: skip
    spool = Spool(tmp_path / "spool", 2_500_000)
    ctl = Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=Deliverer(
            [CloudsharkUploader(config.cloudshark)], RetryPolicy.from_config(config.delivery),
            spool,
        ),
        pool=HandlePool((), config.general.buffer_size),
    )  # fmt: skip
    port = free_port()
    for name in ("p1", "p2", "p3"):
        ctl.handle(Recorded(request(port, id=name, bytes=1_000_000, timeout=1)).delivery)
    third = results.for_id("p3")
    assert third["status"] == "rejected"
    assert third["error"].startswith("spool full:")
    assert third["error"].endswith("(2000000 of them promised to running captures)")
    assert {results.for_id(n)["status"] for n in ("p1", "p2")} == {"empty"}
    wait_for(lambda: ctl._spool_promised == 0)
    ctl.handle(Recorded(request(port, id="p4", bytes=1_000_000, timeout=1)).delivery)
    assert results.for_id("p4")["status"] == "empty"

"""pcapd.core.metrics: the listener (scraped over real HTTP), its checks, and
the `listen` options of the daemon and the agents."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

from agents.dnstap.config import parse_dnstap_config
from agents.dnswire.config import parse_dnswire_config
from agents.flow.config import parse_flow_config
from pcapd.core.config import ConfigError, parse_config
from pcapd.core.configread import HostPort
from pcapd.core.metrics import (
    LISTEN_BACKLOG,
    Check,
    FunctionCollector,
    MetricsError,
    counter,
    gauge,
    serve_metrics,
)
from tests.helpers import free_port
from tests.metrics_scrape import get, samples, value


def _metrics_errors(listen: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"metrics": {"listen": listen}}, "n")
    return caught.value.errors


def test_listen_is_off_by_default_and_reads_an_address() -> None:
    assert parse_config({}, "n").metrics.listen is None
    assert parse_config({"metrics": {"listen": ""}}, "n").metrics.listen is None
    got = parse_config({"metrics": {"listen": "127.0.0.1:9310"}}, "n").metrics.listen
    assert got == HostPort("127.0.0.1", 9310)
    assert parse_config({"metrics": {"listen": "[::1]:9310"}}, "n").metrics.listen == HostPort(
        "::1", 9310
    )


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        (
            "localhost:9310",
            "metrics.listen: 'localhost:9310' is not ADDRESS:PORT with a literal IP",
        ),
        (
            "127.0.0.1:70000",
            "metrics.listen: '127.0.0.1:70000': port '70000' is not a port in 0..65535",
        ),
        ("127.0.0.1:0", "metrics.listen: 127.0.0.1:0: port 0 is not a fixed port to connect to"),
        (9310, "metrics.listen: expected a string"),
    ],
)
def test_bad_listen_addresses_name_the_field(listen: object, error: str) -> None:
    [message] = _metrics_errors(listen)
    assert message.startswith(error), message


def test_agents_read_metrics_listen_with_the_same_rules() -> None:
    assert parse_dnstap_config({"metrics_listen": "127.0.0.1:9311"}).metrics_listen == HostPort(
        "127.0.0.1", 9311
    )
    for parse, section in (
        (parse_dnstap_config, "agents.dnstap"),
        (parse_flow_config, "agents.flow"),
        (parse_dnswire_config, "agents.dnswire"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse({"metrics_listen": "nowhere"})
        assert caught.value.errors[0].startswith(f"{section}.metrics_listen: 'nowhere' is not")
    with pytest.raises(ConfigError) as caught:
        parse_dnswire_config(
            {"interface": "lo", "processes": 2, "metrics_listen": "127.0.0.1:65535"}
        )
    assert any(
        e.startswith("agents.dnswire.metrics_listen: 127.0.0.1:65535: with processes=2")
        for e in caught.value.errors
    ), caught.value.errors


class Box:
    """What the checks and the collector read, changed by the test."""

    ready: bool | None = True  # None: the check raises
    count = 0.0


@pytest.fixture
def served() -> Iterator[tuple[str, Box]]:
    """(base URL, what its checks and collector read)."""
    box = Box()
    latency = Histogram("pcapd_test_seconds", "test", registry=None)
    latency.observe(0.2)

    def families() -> Iterator[Metric]:
        yield counter("test_things", "things", box.count)
        yield gauge("test_by_kind", "kinds", {("a",): 1, ("b",): 2}, ("kind",))

    def checks() -> Iterator[Check]:
        yield Check("always", True, "fine")
        if box.ready is None:
            raise RuntimeError("check broke")
        yield Check("box", bool(box.ready), "ready" if box.ready else "box is not ready")

    started = serve_metrics(
        HostPort("127.0.0.1", free_port()), "test.listen",
        [FunctionCollector(families), latency], checks,
    )  # fmt: skip
    assert started is not None
    try:
        yield f"http://127.0.0.1:{started.port}", box
    finally:
        started.stop()


def test_metrics_are_read_at_each_scrape(served: tuple[str, Box]) -> None:
    base, box = served
    found = samples(base)
    assert value(found, "pcapd_test_things_total") == 0
    assert value(found, "pcapd_test_by_kind", kind="b") == 2
    assert value(found, "pcapd_test_seconds_count") == 1
    box.count = 7
    assert value(samples(base), "pcapd_test_things_total") == 7


def test_the_listener_queues_a_burst_of_connections(served: tuple[str, Box]) -> None:
    """The kernel's accept queue holds LISTEN_BACKLOG connections (ss shows a
    listener's backlog as Send-Q), not socketserver's 5."""
    port = served[0].rsplit(":", 1)[1]
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == LISTEN_BACKLOG


def test_health_and_readiness_say_what_is_wrong(served: tuple[str, Box]) -> None:
    base, box = served
    assert get(base + "/healthz") == (200, '{"alive": true}')
    code, body = get(base + "/readyz")
    assert code == 200 and json.loads(body)["ready"] is True
    box.ready = False
    code, body = get(base + "/readyz")
    assert code == 503
    assert json.loads(body) == {
        "ready": False,
        "checks": {
            "always": {"ok": True, "detail": "fine"},
            "box": {"ok": False, "detail": "box is not ready"},
        },
    }
    box.ready = None  # the check itself fails
    code, body = get(base + "/readyz")
    assert code == 503
    assert json.loads(body)["checks"]["checks"]["detail"].startswith("checking failed:")
    assert get(base + "/healthz")[0] == 200  # still serving
    code, body = get(base + "/nope")
    assert code == 404 and "/metrics" in json.loads(body)["error"]


def test_ipv6_loopback_and_off() -> None:
    assert serve_metrics(None, "x.listen", [], lambda: ()) is None
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    started = serve_metrics(HostPort("::1", port), "x.listen", [], lambda: ())
    assert started is not None
    try:
        assert get(f"http://[::1]:{port}/healthz")[0] == 200
    finally:
        started.stop()


def test_a_port_in_use_is_an_error_naming_the_field() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as caught:
            serve_metrics(HostPort("127.0.0.1", port), "metrics.listen", [], lambda: ())
    assert caught.value.errors == [
        f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_directory_that_cannot_take_files_fails_its_check(tmp_path: Path) -> None:
    from pcapd.daemon_metrics import _writable

    assert _writable(str(tmp_path)) is None
    assert _writable(str(tmp_path / "not" / "made" / "yet")) is None  # the sink makes it
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _writable(str(blocker / "spool")) == f"{blocker} is not a directory"

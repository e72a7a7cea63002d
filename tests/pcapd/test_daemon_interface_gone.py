"""A capture whose interface goes away: `pcapd serve` in a namespace of a veth
pair this test creates, capturing on the veth end (on its own handle, or
served by a lookback ring there) when the test deletes it. libpcap then
answers dispatch() with PCAP_ERROR, unraised by pypcap: the capture must fail
at once, keep what it had, and the daemon serve on."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    VethPair,
    free_port,
    needs_root,
    netns,
    redis_server,
    run,
    veth_pair,
    wait_for,
)
from tests.metrics_scrape import samples, value
from tests.pcapd.daemon_fixture import Daemon, Results

pytestmark = [needs_root, pytest.mark.timeout(180)]

SUBNET = 165  # this file's veth subnet: 10.200.165.0/24
SPARE_SUBNET = 171  # the re-created veth's
PORT = 40_165
TIMEOUT = 30  # the request's inactivity timeout (and duration): the result must beat it
BEFORE = 5  # packets captured before the veth goes


@pytest.mark.parametrize(
    ("ring", "failed"),
    [
        ("", "capture on {dev} failed"),
        ("lookback = 5\nlookback_bytes = 4194304\n", "lookback ring on {dev} failed"),
    ],
    ids=["engine", "ring"],
)
def test_capture_on_a_deleted_interface_fails_at_once_and_keeps_its_packets(
    tmp_path: Path, ring: str, failed: str
) -> None:
    sock_path = tmp_path / "redis.sock"
    (tmp_path / "redis").mkdir()
    with (
        redis_server(tmp_path / "redis", unixsocket=sock_path) as server,
        veth_pair(subnet=SUBNET) as pair,
    ):
        dev = pair.dev_a
        daemon = Daemon(
            server, tmp_path / "daemon", wrap=("ip", "netns", "exec", pair.ns_a),
            interfaces=f'[[interface]]\nname = "lo"\n\n[[interface]]\nname = "{dev}"\n{ring}',
            extra_redis=f'url = "unix://{sock_path}"',
        )  # fmt: skip
        results = Results(server)
        with netns(pair.ns_b):
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with netns(pair.ns_a):
            local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        daemon.start()
        try:
            with out, local:
                bpf = f"udp and dst port {PORT}"
                daemon.publish({
                    "node": "testnode", "interface": dev, "bpf": bpf, "id": "gone",
                    "packets": 1000, "duration": TIMEOUT, "timeout": TIMEOUT,
                    "packetdebug": True,
                })  # fmt: skip
                wait_for(lambda: daemon.started("gone"), timeout=20)
                for _ in range(BEFORE):
                    out.sendto(b"x" * 100, (pair.addr_a, PORT))
                seen = f"event=packet id=gone interface={dev} "
                wait_for(lambda: daemon.log().count(seen) >= BEFORE, timeout=20)

                subprocess.run(["ip", "-n", pair.ns_a, "link", "del", dev], check=True, timeout=30)
                deleted = time.monotonic()
                event = results.for_id("gone", timeout=TIMEOUT + 10)
                took = time.monotonic() - deleted
                assert took < TIMEOUT / 3, (took, event)
                assert event["status"] == "failed", event
                assert event["error"] == f"{failed.format(dev=dev)}: The interface disappeared"
                assert (event["stop"], event["packets"]) == ("shutdown", BEFORE), event
                # What came before the failure is stored, as any capture's file.
                path = Path(event["locations"]["local"])
                assert path.stat().st_size == event["bytes"]
                info = run("capinfos", "-c", "-T", "-m", str(path)).stdout.splitlines()[1]
                assert info.split(",")[1] == str(BEFORE)

                # The daemon serves the next request, on the interface still there.
                daemon.publish({
                    "node": "testnode", "interface": "lo", "bpf": bpf, "id": "next",
                    "packets": 1, "timeout": 10,
                })  # fmt: skip
                wait_for(lambda: daemon.started("next"), timeout=20)
                local.sendto(b"y" * 100, ("127.0.0.1", PORT))
                after = results.for_id("next", timeout=20)
                assert (after["status"], after["packets"], after["error"]) == ("ok", 1, None)
                assert daemon.proc is not None and daemon.proc.poll() is None
        finally:
            daemon.stop()
            results.close()


def recreate(pair: VethPair) -> None:
    """Delete the veth and make it again, same names and addresses: a new
    interface (ifindex) under the old name."""
    run("ip", "-n", pair.ns_a, "link", "del", pair.dev_a)
    run("ip", "link", "add", pair.dev_a, "netns", pair.ns_a, "type", "veth",
        "peer", "name", pair.dev_b, "netns", pair.ns_b)  # fmt: skip
    for ns, dev, addr in (
        (pair.ns_a, pair.dev_a, pair.addr_a),
        (pair.ns_b, pair.dev_b, pair.addr_b),
    ):
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
    run(*pair.exec_b("ping", "-c", "1", "-W", "2", pair.addr_a))  # the new neighbour


def test_a_spare_handle_on_an_interface_since_re_created_is_replaced_not_failed(
    tmp_path: Path,
) -> None:
    """The spare was opened on the veth before it was deleted and made
    again: it is bound to the old interface (its first dispatch answers
    PCAP_ERROR). The request it would serve gets a fresh handle instead and
    captures its packets."""
    sock_path = tmp_path / "redis.sock"
    (tmp_path / "redis").mkdir()
    with (
        redis_server(tmp_path / "redis", unixsocket=sock_path) as server,
        veth_pair(subnet=SPARE_SUBNET) as pair,
    ):
        dev, wrap = pair.dev_a, ("ip", "netns", "exec", pair.ns_a)
        port = free_port()
        daemon = Daemon(
            server, tmp_path / "daemon", wrap=wrap,
            interfaces=f'[[interface]]\nname = "lo"\n\n[[interface]]\nname = "{dev}"\n',
            extra_redis=f'url = "unix://{sock_path}"',
            extra_sections=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
        )  # fmt: skip
        results = Results(server)
        daemon.start()
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: value(samples(base, wrap), "pcapd_spare_handles", interface=dev) == 1,
                     timeout=30)  # fmt: skip
            recreate(pair)
            daemon.publish({
                "node": "testnode", "interface": dev, "bpf": f"udp and dst port {PORT}",
                "id": "fresh", "packets": BEFORE, "duration": TIMEOUT, "timeout": TIMEOUT,
            })  # fmt: skip
            wait_for(lambda: daemon.started("fresh") or not results.events.empty(), timeout=20)
            assert daemon.started("fresh"), results.for_id("fresh")  # not refused
            with netns(pair.ns_b):
                out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with out:
                for _ in range(BEFORE):
                    out.sendto(b"x" * 100, (pair.addr_a, PORT))
            event = results.for_id("fresh", timeout=TIMEOUT + 10)
            assert (event["status"], event["stop"], event["error"]) == ("ok", "packets", None), (
                event
            )
            assert event["packets"] == BEFORE
        finally:
            daemon.stop()
            results.close()

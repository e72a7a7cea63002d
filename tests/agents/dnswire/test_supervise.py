"""-M N live: a child that dies is logged and started again; SIGTERM to the
parent stops every child, each flushing, and the parent exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import needs_root, stop_process, unix_redis_server, veth_pair, wait_for

REPO = Path(__file__).resolve().parents[3]
DNSFLOW = str(Path(sys.executable).parent / "dnsflow")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@needs_root
def test_children_restarted_and_stopped(tmp_path: Path) -> None:
    with veth_pair(subnet=72) as pair, unix_redis_server(tmp_path) as sock:
        log = tmp_path / "dnsflow.log"
        pidfile = tmp_path / "dnsflow.pid"
        with log.open("wb") as err:
            parent = subprocess.Popen(
                pair.exec_a(DNSFLOW, "-i", pair.dev_a, "-M", "2", "-P", str(pidfile),
                            "--redis", f"unix://{sock}", "-u", pair.addr_a),
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:

            def started() -> list[tuple[str, int]]:
                text = log.read_text()
                return [(m[1], int(m[2])) for m in
                        re.finditer(r"child_started slot=(\d)/2 pid=(\d+)", text)]  # fmt: skip

            wait_for(lambda: len(started()) == 2 and log.read_text().count("dnswire_started") == 2,
                     timeout=20)  # fmt: skip
            assert int(pidfile.read_text()) != 0
            first = dict(started())
            os.kill(first["1"], signal.SIGKILL)
            wait_for(lambda: len(started()) == 3 and log.read_text().count("dnswire_started") == 3,
                     timeout=10)  # fmt: skip
            text = log.read_text()
            assert "event=dnswire_child_exited slot=1/2 status=-9 restarting=true" in text
            children = [pid for _slot, pid in started()[1:]]
            parent.send_signal(signal.SIGTERM)
            assert parent.wait(20) == 0
        finally:
            stop_process(parent)
        for pid in children:
            wait_for(lambda pid=pid: not alive(pid), timeout=5)
        text = log.read_text()
        assert text.count("event=dnswire_done") >= 2
        assert "Traceback" not in text

"""-M N live: a child that dies is logged and started again; SIGTERM to the
parent stops every child, each flushing, and the parent exits 0; a second
signal kills the children and the parent leaves at once (EXIT_COLD)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agents.dnswire.service import CHILD_EXIT_TIMEOUT, FORWARDED_STOP
from pcapd.core.lifecycle import EXIT_COLD, EXIT_FAILURE
from tests.helpers import needs_root, stop_process, unix_redis_server, veth_pair, wait_for

REPO = Path(__file__).resolve().parents[3]
DNSFLOW = str(Path(sys.executable).parent / "dnsflow")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def pending_signals(pid: int) -> int:
    """The process's shared pending signal mask (bit n-1: signal n)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^ShdPnd:\s*([0-9a-f]+)$", status, re.M)[1], 16)  # type: ignore[index]


class Supervisor:
    def __init__(self, parent: subprocess.Popen[bytes], read: Callable[[], str]) -> None:
        self.parent, self.read = parent, read

    def started(self) -> list[tuple[str, int]]:
        return [(m[1], int(m[2])) for m in
                re.finditer(r"child_started slot=(\d)/2 pid=(\d+)", self.read())]  # fmt: skip

    def wait_started(self, count: int, timeout: float) -> None:
        wait_for(lambda: len(self.started()) == count
                 and self.read().count("dnswire_started") == count, timeout=timeout)  # fmt: skip


@contextlib.contextmanager
def supervisor(
    tmp_path: Path, stderr: int | None = None, read: Callable[[], str] | None = None
) -> Iterator[Supervisor]:
    """`dnsflow -M 2` live on a veth in a namespace, its two children
    started, logging to a file (or to `stderr`, read with `read`); stopped
    (and its children with it) after."""
    log = tmp_path / "dnsflow.log"
    with veth_pair(subnet=225) as pair, unix_redis_server(tmp_path) as sock:
        pidfile = tmp_path / "dnsflow.pid"
        with log.open("wb") as err:
            parent = subprocess.Popen(
                pair.exec_a(DNSFLOW, "-i", pair.dev_a, "-M", "2", "-P", str(pidfile),
                            "--redis", f"unix://{sock}", "-u", pair.addr_a),
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err if stderr is None else stderr,
            )  # fmt: skip
        run = Supervisor(parent, read or log.read_text)
        try:
            run.wait_started(2, timeout=20)
            assert int(pidfile.read_text()) != 0
            yield run
        finally:
            stop_process(parent)
            for _slot, pid in run.started():
                if alive(pid):  # left stopped by a failed test: SIGKILL ends it all the same
                    os.kill(pid, signal.SIGKILL)


@needs_root
def test_children_restarted_and_stopped(tmp_path: Path) -> None:
    with supervisor(tmp_path) as run:
        first = dict(run.started())
        os.kill(first["1"], signal.SIGKILL)
        run.wait_started(3, timeout=10)
        text = run.read()
        assert "event=dnswire_child_exited slot=1/2 status=-9 restarting=true" in text
        children = [pid for _slot, pid in run.started()[1:]]
        run.parent.send_signal(signal.SIGTERM)
        assert run.parent.wait(20) == 0
    for pid in children:
        wait_for(lambda pid=pid: not alive(pid), timeout=5)
    text = run.read()
    assert "event=dnswire_stopping signal=15 children=2" in text
    assert text.count("event=dnswire_done") >= 2
    assert "Traceback" not in text and "Logging error" not in text


@needs_root
def test_a_second_signal_kills_the_children_and_exits_cold(tmp_path: Path) -> None:
    """The children are stopped (SIGSTOP), so they cannot act on the first
    SIGTERM: it is passed on (FORWARDED_STOP pending in each) and the parent waits; the
    second kills them and the parent exits EXIT_COLD at once."""
    with supervisor(tmp_path) as run:
        children = [pid for _slot, pid in run.started()]
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        run.parent.send_signal(signal.SIGTERM)
        passed_on = 1 << (FORWARDED_STOP - 1)
        wait_for(lambda: all(pending_signals(pid) & passed_on for pid in children), timeout=5)
        assert "event=dnswire_stopping signal=15 children=2" in run.read()
        assert run.parent.poll() is None  # warm: still waiting for its children
        run.parent.send_signal(signal.SIGTERM)
        assert run.parent.wait(2) == EXIT_COLD
        for pid in children:
            wait_for(lambda pid=pid: not alive(pid), timeout=2)
    text = run.read()
    assert "event=dnswire_done" not in text  # killed, not flushed
    assert "Traceback" not in text and "Logging error" not in text


@needs_root
def test_a_stop_signalled_to_the_whole_group_is_warm_in_every_child(tmp_path: Path) -> None:
    """Ctrl-C or systemd's control-group kill signals the children too, then
    the parent passes its own on: each child still flushes (the passed-on
    signal is no second one), and the parent exits 0."""
    with supervisor(tmp_path) as run:
        children = [pid for _slot, pid in run.started()]
        for pid in (run.parent.pid, *children):
            os.kill(pid, signal.SIGTERM)
        assert run.parent.wait(20) == 0
    text = run.read()
    assert text.count("event=dnswire_done") == 2 and "exit_now" not in text
    assert "Traceback" not in text


@needs_root
def test_children_deaf_to_sigterm_are_killed_after_the_exit_timeout(tmp_path: Path) -> None:
    """Stopped children cannot act on the forwarded SIGTERM: after
    CHILD_EXIT_TIMEOUT the parent kills them, says so, and exits 1."""
    with supervisor(tmp_path) as run:
        children = [pid for _slot, pid in run.started()]
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        run.parent.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert run.parent.wait(CHILD_EXIT_TIMEOUT + 10) == EXIT_FAILURE
        assert time.monotonic() - began >= CHILD_EXIT_TIMEOUT - 1
        for pid in children:
            wait_for(lambda pid=pid: not alive(pid), timeout=2)
    text = run.read()
    assert text.count("event=dnswire_child_killed") == 2
    assert f"after={CHILD_EXIT_TIMEOUT}" in text and "event=dnswire_done" not in text


def in_write_to_stderr(pid: int) -> bool:
    """Blocked in write(2) on fd 2 (x86-64's syscall number 1)."""
    return Path(f"/proc/{pid}/syscall").read_text().split()[:2] == ["1", "0x2"]


@needs_root
def test_a_signal_during_a_write_to_stderr_is_logged_and_forwarded(tmp_path: Path) -> None:
    """The parent is blocked writing a line to stderr (a full pipe: a slow
    journal) when SIGTERM comes: the handler only records it, and the loop,
    once the write is through, says it and sends it on; no restart follows."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    got = bytearray()

    def read() -> str:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 65536):
                got.extend(chunk)
        return got.decode(errors="replace")

    try:
        with supervisor(tmp_path, write_end, read) as run:
            first = dict(run.started())  # reads the pipe: before it is filled
            # The pipe full, to the byte: the parent's next line blocks. Through
            # a file of its own, as O_NONBLOCK is the open file's, not the pipe's.
            filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
            for size in (4096, 1):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(filler, b"#" * size)
            os.close(filler)
            os.kill(first["1"], signal.SIGKILL)  # its next line: dnswire_child_exited
            wait_for(lambda: in_write_to_stderr(run.parent.pid), timeout=10)
            run.parent.send_signal(signal.SIGTERM)

            def exited() -> bool:
                read()  # the pipe drained: every line can be written now
                return run.parent.poll() is not None

            wait_for(exited, timeout=20)
            # Slot 1's child was killed and, the stop come, not started again:
            # what it held is lost, so the run failed.
            assert run.parent.returncode == EXIT_FAILURE
            text = read()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "event=dnswire_child_exited slot=1/2 status=-9 restarting=true" in text
    assert "event=dnswire_stopping signal=15 children=1" in text
    assert text.count("event=dnswire_child_started") == 2  # slot 1 not started again
    assert text.count("event=dnswire_done") >= 1
    assert "Logging error" not in text and "reentrant" not in text

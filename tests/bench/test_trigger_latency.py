"""bench/trigger_latency.py's probe priority: SCHED_FIFO and a 1 us timer
slack only inside its `with`, the process's own restored after; refused
(an unprivileged user), it says so and the probes go on at normal priority.
Each case in a child process, so pytest's own scheduling is not touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import needs_root

BENCH = Path(__file__).resolve().parents[2] / "bench"

CHILD = """
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
from probes import PR_GET_TIMERSLACK, ProbePriority
if sys.argv[2] == "nobody":  # imported first: the interpreter's files may be root's
    os.setgid(65534); os.setuid(65534)
libc = ctypes.CDLL(None, use_errno=True)
def state():
    return os.sched_getscheduler(0), libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
before = state()
priority = ProbePriority()
for _ in range(2):
    with priority:
        inside = state()
    print("inside", *inside, "after", *state(), "before", *before, flush=True)
"""


def probe_priority(user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(BENCH), user],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), *sys.path])},
    )  # fmt: skip


@needs_root
def test_fifo_and_the_timer_slack_hold_only_inside_and_are_restored() -> None:
    done = probe_priority("root")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    for line in done.stdout.splitlines():
        _, policy, slack, _, after_policy, after_slack, _, *before = line.split()
        # The kernel gives a real-time task no slack at all (it reads 0 here).
        assert int(policy) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO and int(slack) in (0, 1000)
        assert [after_policy, after_slack] == before and int(after_policy) == os.SCHED_OTHER


@needs_root  # to become an unprivileged user
def test_refused_it_says_the_probes_run_at_normal_priority_and_goes_on() -> None:
    done = probe_priority("nobody")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "trigger_latency: SCHED_FIFO refused (Operation not permitted): "
        "the probes run at normal priority\n"
    )  # once, though it was entered twice
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        _, policy, slack, _, *after_and_before = line.split()
        assert int(policy) == os.SCHED_OTHER and int(slack) == 1000
        assert after_and_before[:2] == after_and_before[3:]

"""`pcapd` itself: every command module is listed once, and a bad invocation
of the command tree exits 2 with argparse's message from the parser it concerns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pcapd.cli
from pcapd.core.lifecycle import EXIT_CONFIG

CLI = Path(pcapd.cli.__file__).parent


def pcapd_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", *args], capture_output=True, text=True, timeout=30
    )


def test_every_command_module_is_listed() -> None:
    modules = {p.stem for p in CLI.glob("*.py")} - {"__init__", "common"}
    commands: tuple[object, ...] = (*pcapd.cli.COMMANDS, *pcapd.cli.AGENTS)
    listed = [str(getattr(m, "__name__", "")).rsplit(".", 1)[1] for m in commands]
    assert sorted(listed) == sorted(modules)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pcapd: error: the following arguments are required: COMMAND"),
        (["nosuch"], "pcapd: error: argument COMMAND: invalid choice: 'nosuch'"),
        (["agent"], "pcapd agent: error: the following arguments are required: AGENT"),
        (["agent", "nosuch"], "pcapd agent: error: argument AGENT: invalid choice: 'nosuch'"),
        (["agent", "dnstap", "--nosuch"],
         "pcapd agent dnstap: error: unrecognized arguments: --nosuch"),
        (["spool"], "pcapd spool: error: the following arguments are required: ACTION"),
        (["spool", "list"],
         "pcapd spool list: error: the following arguments are required: -c/--config"),
        (["capture"], "pcapd capture: error: the following arguments are required: -i/--interface"),
        (["check-config", "a", "b"], "pcapd check-config: error: unrecognized arguments: b"),
    ],
)  # fmt: skip
def test_bad_invocations(args: list[str], message: str) -> None:
    done = pcapd_run(*args)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines()[-1].startswith(message), done.stderr


def test_serve_reads_pcapdaemon_flags_itself() -> None:
    """Not argparse's: `-help` is Go's, and `--` ends the flags as in Go."""
    helped = pcapd_run("serve", "-help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pcapd serve -config FILE")
    # Without the ignored -upload the defaults name no destination: nothing starts.
    done = pcapd_run("serve", "--", "-upload")
    assert done.returncode == EXIT_CONFIG
    assert "ignoring '-upload': flags end at the first argument" in done.stderr

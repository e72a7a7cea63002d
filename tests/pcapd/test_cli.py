"""`pcapd` itself: every command module is listed once and imported only when
it runs, and a bad invocation of the command tree exits 2 with argparse's
message from the parser it concerns."""

from __future__ import annotations

import argparse
import json
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


LISTED = (*pcapd.cli.COMMANDS, *pcapd.cli.AGENTS)


def test_every_command_module_is_listed() -> None:
    modules = {p.stem for p in CLI.glob("*.py")} - {"__init__", "common"}
    assert sorted(entry.module for entry in LISTED) == sorted(modules)


@pytest.mark.parametrize("entry", LISTED, ids=lambda entry: entry.name)
def test_a_module_registers_its_listed_name_and_no_help_line(entry: pcapd.cli.Listed) -> None:
    """The help line is written once, in the list, which `pcapd --help` shows
    without importing the module."""
    sub = argparse.ArgumentParser().add_subparsers()
    entry.load().register(sub)
    assert list(sub.choices) == [entry.name]
    assert sub._get_subactions() == []  # the help lines argparse would list


def test_help_lists_every_command_with_its_line() -> None:
    helped = pcapd_run("--help").stdout + pcapd_run("agent", "--help").stdout
    for entry in LISTED:
        assert entry.name in helped and entry.help in helped, entry


def imported(*args: str) -> list[str]:
    """The modules of pcapd.cli and the heavy libraries that `pcapd ARGS` imported."""
    code = (
        "import json, sys, pcapd.cli\n"
        "try:\n    status = pcapd.cli.main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    status = exc.code\n"
        "heavy = {'agents', 'triggers', 'uploaders', 'redis', 'boto3', 'flask', 'pcap'}\n"
        "print(json.dumps([status, sorted(m for m in sys.modules\n"
        "    if m.startswith('pcapd.cli.') or m.partition('.')[0] in heavy)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30
    )
    status, modules = json.loads(done.stdout.splitlines()[-1])
    assert status == 0, done.stderr
    return list(modules)


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    """Each call of `pcapd` imported every command (and through them redis,
    boto3, ...): ~0.5 s before it did anything."""
    assert imported("--help") == ["pcapd.cli.common"]
    assert imported("agent", "--help") == ["pcapd.cli.common"]
    config = tmp_path / "pcapd.toml"
    config.write_text(f'[general]\nnode = "n1"\nwritelocal = true\nlocaldir = "{tmp_path}"\n')
    assert imported("check-config", str(config)) == ["pcapd.cli.check_config", "pcapd.cli.common"]
    dnstap = imported("agent", "dnstap", "--help")
    assert [m for m in dnstap if m.startswith("pcapd.cli.")] == [
        "pcapd.cli.agent_dnstap", "pcapd.cli.common"
    ]  # fmt: skip


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

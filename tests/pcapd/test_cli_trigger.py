"""`pcapd trigger` refuses bad input in one line, before anything is published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE
from tests.helpers import free_port


def trigger(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "trigger",
         "--redis-url", f"redis://127.0.0.1:{free_port()}/0", *args],
        input=stdin, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("not json", "pcapd trigger: standard input is not JSON: Expecting value"),
        ("[1, 2]", "pcapd trigger: standard input must hold a JSON object"),
    ],
)
def test_bad_stdin_is_refused(stdin: str, message: str) -> None:
    done = trigger("--stdin", stdin=stdin)
    assert done.returncode == EXIT_CONFIG and done.stderr.startswith(message), done.stderr


def test_signing_key_that_cannot_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PCAPD_NO_SUCH_KEY", raising=False)
    done = trigger("--kid", "ops", "--key", "env:PCAPD_NO_SUCH_KEY")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip() == (
        "pcapd trigger: --key: environment variable PCAPD_NO_SUCH_KEY is not set"
    )
    nokey = trigger("--kid", "ops")
    assert nokey.returncode == EXIT_CONFIG
    assert nokey.stderr.strip().startswith("pcapd trigger: --kid ops: give --key")


def test_unreachable_redis_is_one_line() -> None:
    done = trigger("--node", "any", "-i", "lo")
    assert done.returncode == EXIT_FAILURE
    assert done.stderr.startswith("pcapd trigger: Redis at redis://127.0.0.1:")
    assert "Traceback" not in done.stderr


def test_unknown_option_is_refused_by_the_command_s_parser() -> None:
    done = trigger("--nosuch")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines()[-1] == "pcapd trigger: error: unrecognized arguments: --nosuch"


def test_results_stream_that_the_config_turns_off(tmp_path: Path) -> None:
    config = tmp_path / "pcapd.toml"
    config.write_text('[redis]\nresults_stream = ""\n')
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "results", "--stream", "-c", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == (
        f'pcapd results: {config} sets results_stream = "": no stream is written; '
        "follow the channel instead\n"
    )

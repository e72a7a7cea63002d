"""`pcapd trigger` refuses bad input in one line, before anything is published."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    assert done.returncode == 1 and done.stderr.startswith(message), done.stderr


def test_signing_key_that_cannot_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PCAPD_NO_SUCH_KEY", raising=False)
    done = trigger("--kid", "ops", "--key", "env:PCAPD_NO_SUCH_KEY")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "pcapd trigger: --key: environment variable PCAPD_NO_SUCH_KEY is not set"
    )
    nokey = trigger("--kid", "ops")
    assert nokey.stderr.strip().startswith("pcapd trigger: --kid ops: give --key")


def test_unreachable_redis_is_one_line() -> None:
    done = trigger("--node", "any", "-i", "lo")
    assert done.returncode == 1
    assert done.stderr.startswith("pcapd trigger: Redis at redis://127.0.0.1:")
    assert "Traceback" not in done.stderr

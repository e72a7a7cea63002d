"""`pcapd trigger` refuses bad input in one line, before anything is published;
`--wait` (and `pcapd results`) print a resent result once."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcapd.client import is_message
from pcapd.core.events import ResultEvent
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from tests.helpers import RedisServer, free_port, set_acl_user, stop_process, wait_for
from tests.pcapd.core.test_results import resent


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
        ("[" * 100_000, "pcapd trigger: standard input is not JSON: maximum recursion depth"),
        # json.loads takes them and the daemon does not: refused before publishing.
        (
            '{"node": "n", "duration": Infinity}',
            "pcapd trigger: standard input is not JSON: Infinity is not a JSON number",
        ),
        (
            '{"node": "n", "packets": -Infinity}',
            "pcapd trigger: standard input is not JSON: -Infinity is not a JSON number",
        ),
        ('{"node": "n", "id": NaN}', "pcapd trigger: standard input is not JSON: NaN is not"),
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


def test_a_filter_right_after_wait_is_refused_saying_where_it_goes() -> None:
    """--wait takes an optional SECONDS, so a filter word right after it is
    read as the seconds: the error says so, and the README's form parses."""
    done = trigger("-i", "lo", "--wait", "host", "10.1.2.3")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines()[-1] == (
        "pcapd trigger: error: argument --wait: 'host' is not a number of seconds; "
        "put the filter after another option (--wait --packets 10 host 10.1.2.3) "
        "or give the seconds (--wait 60 host 10.1.2.3)"
    )
    for seconds in ("nan", "-5", "inf", "1e9"):
        refused = trigger("-i", "lo", "--wait", seconds, "host", "10.1.2.3")
        assert refused.returncode == EXIT_CONFIG
        assert refused.stderr.splitlines()[-1] == (
            f"pcapd trigger: error: argument --wait: {seconds}: seconds must be 0..604800"
        )
    parsed = trigger("-i", "lo", "--wait", "--packets", "10", "host", "10.1.2.3")
    assert parsed.returncode == EXIT_FAILURE  # parsed, then no Redis on that port
    assert parsed.stderr.startswith("pcapd trigger: Redis at redis://127.0.0.1:"), parsed.stderr


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


@contextlib.contextmanager
def published_from_stdin(
    server: RedisServer, body: dict[str, Any], *flags: str
) -> Iterator[subprocess.Popen[str]]:
    """`pcapd trigger --stdin FLAGS` given `body`, once its request is on
    the channel; stopped on the way out if it has not ended."""
    listener = server.client().pubsub()
    listener.subscribe("capture")
    wait = subprocess.Popen(
        [sys.executable, "-m", "pcapd", "trigger", "--redis-url", server.url, "--stdin", *flags],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait.stdin is not None
        wait.stdin.write(json.dumps(body))
        wait.stdin.close()
        wait.stdin = None  # closed: communicate() would flush it
        deadline = time.monotonic() + 30
        while not is_message(listener.get_message(timeout=1)):
            assert time.monotonic() < deadline, "no request published"
        yield wait
    finally:
        if wait.poll() is None:
            stop_process(wait)  # type: ignore[arg-type]
            wait.communicate()
        listener.close()


def test_wait_prints_a_resent_result_once(redis_srv: RedisServer) -> None:
    """The reply channel gets one event twice (a resend: same event_id) and
    then another: `--count 2` prints both, the first once."""
    body = {"id": "t1", "node": "any", "interface": ["lo"]}
    with published_from_stdin(redis_srv, body, "--wait", "60", "--count", "2") as wait:
        resent(redis_srv, ResultEvent("t1", "n1", "empty", interface="lo"), "pcapd-reply-t1")
        resent(redis_srv, ResultEvent("t1", "n1", "empty", interface="eth0"), "pcapd-reply-t1")
        out, err = wait.communicate(timeout=60)
    assert wait.returncode == EXIT_OK, err
    assert [json.loads(line)["interface"] for line in out.splitlines()] == ["lo", "eth0"]


@pytest.mark.parametrize("duration", ["x", None, 10**400, True, -5])
def test_wait_for_a_body_whose_bounds_the_daemon_refuses(
    redis_srv: RedisServer, duration: Any
) -> None:
    """--stdin's duration is no JSON integer in range: --wait waits the
    default bounds (the daemon's `rejected` ends it), no traceback."""
    body = {"id": "t2", "node": "n1", "interface": ["lo"], "duration": duration}
    with published_from_stdin(redis_srv, body, "--wait") as wait:
        time.sleep(0.5)  # past the wait's start: a bound it could not read ended it there
        assert wait.poll() is None, wait.communicate()[1]
        rejected = ResultEvent("t2", "n1", "rejected", error="duration: expected a JSON integer")
        resent(redis_srv, rejected, "pcapd-reply-t2")
        out, err = wait.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["rejected"]


def test_results_skips_what_is_no_result_object_and_goes_on(redis_srv: RedisServer) -> None:
    """Anyone may publish on the results channel: nesting json cannot
    read (RecursionError, not ValueError), text that is not JSON and a
    list are skipped, and the result after them is printed."""
    follower = subprocess.Popen(
        [sys.executable, "-m", "pcapd", "results", "--redis-url", redis_srv.url,
         "--count", "1", "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = redis_srv.client()
    wait_for(lambda: client.pubsub_numsub("capture-results")[0][1] >= 1)
    for junk in ("[" * 100_000, '{"id": ' * 100_000, "not json", "[1, 2]"):
        client.publish("capture-results", junk)
    client.publish("capture-results", json.dumps({"id": "after", "node": "n1"}))
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == EXIT_OK, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["after"]


def test_results_stream_prints_an_entry_held_twice_once(redis_srv: RedisServer) -> None:
    first = resent(redis_srv, ResultEvent("s1", "n1", "empty"), expired=True)
    resent(redis_srv, ResultEvent("s2", "n1", "empty"))
    assert redis_srv.client().xlen("capture-results") == 3
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "results", "--redis-url", redis_srv.url, "--stream",
         "--from-start", "--count", "3", "--timeout", "3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["id"], e["event_id"]) for e in printed][:1] == [("s1", first.event_id)]
    assert [e["id"] for e in printed] == ["s1", "s2"]


def test_results_stream_refused_its_newest_id_says_so_rather_than_replaying(
    redis_srv: RedisServer,
) -> None:
    """Following from now needs XINFO STREAM; a user denied it once got the
    whole stream replayed as new events."""
    resent(redis_srv, ResultEvent("old", "n1", "empty"))
    set_acl_user(redis_srv.port, "follower", ["on", ">pw", "~*", "&*", "+@all", "-xinfo|stream"])
    url = redis_srv.url.replace("redis://", "redis://follower:pw@")
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "results", "--redis-url", url, "--stream",
         "--count", "1", "--timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (EXIT_FAILURE, "")
    assert done.stderr.startswith("pcapd results: Redis at ") and (
        "no permissions to run the 'xinfo|stream' command" in done.stderr
    ), done.stderr
    redis_srv.client().delete("capture-results")
    started = subprocess.run(  # no stream yet: followed from its start, nothing to print
        [sys.executable, "-m", "pcapd", "results", "--redis-url", redis_srv.url, "--stream",
         "--count", "1", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (started.returncode, started.stdout) == (EXIT_OK, ""), started.stderr

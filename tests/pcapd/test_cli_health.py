"""`pcapd health` against real processes: a `pcapd serve` with metrics on a
free loopback port (its private Redis stopped for the unready case), and the
dnstap agent on a unix socket; configs without a listener and bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agents.test_metrics import agent_process
from tests.helpers import RedisServer, free_port, wait_for
from tests.metrics_scrape import ready
from tests.pcapd.daemon_fixture import Daemon
from tests.pcapd.test_daemon_metrics import SOURCE, metrics_section

TIMEOUT = 90


def health(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "health", *argv],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


def test_a_ready_daemon_then_one_whose_redis_is_gone(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Daemon(private_redis, tmp_path, extra_sections=metrics_section(port))
    config = str(daemon.config_path)
    daemon.start()
    try:
        wait_for(lambda: ready(f"http://127.0.0.1:{port}")[0] == 200, timeout=20)
        done = health("-c", config)
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        assert body["ready"] is True
        assert f"source:{SOURCE}" in body["checks"]
        private_redis.stop()
        wait_for(lambda: ready(f"http://127.0.0.1:{port}")[0] == 503, timeout=30)
        done = health("-c", config)
        assert done.returncode == 1
        assert json.loads(done.stdout)["ready"] is False
        assert f"http://127.0.0.1:{port}/readyz: not ready: " in done.stderr
        assert "redis: " in done.stderr and "unreachable" in done.stderr
        assert "disk:local" not in done.stderr  # only the failing checks are named
        live = health("-c", config, "--live")
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout) == {"alive": True}
    finally:
        daemon.stop()


def test_wait_started_before_the_daemon_succeeds_once_it_is_up(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Daemon(redis_srv, tmp_path, extra_sections=metrics_section(port))
    waiting = subprocess.Popen(
        [sys.executable, "-m", "pcapd", "health", "-c", str(daemon.config_path), "--wait", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiting.poll() is None  # nothing answers yet: it keeps trying
        daemon.start()
        out, err = waiting.communicate(timeout=TIMEOUT)
        assert waiting.returncode == 0, err
        assert json.loads(out)["ready"] is True
    finally:
        waiting.kill()
        waiting.wait()
        daemon.stop()


def test_nothing_listening_is_a_failure_naming_the_address() -> None:
    port = free_port()
    done = health("--url", f"http://127.0.0.1:{port}", "--wait", "1")
    assert done.returncode == 1
    assert f"http://127.0.0.1:{port}/readyz: no answer: " in done.stderr
    assert "refused" in done.stderr


def test_no_listener_configured_names_the_field(redis_srv: RedisServer, tmp_path: Path) -> None:
    config = str(Daemon(redis_srv, tmp_path).config_path)
    message = (
        "pcapd health: metrics.listen is empty: pcapd serve serves no health checks; "
        "set it (docs/operations.md)"
    )
    done = health("-c", config)
    assert (done.returncode, done.stdout) == (2, "")
    assert message in done.stderr
    done = health("-c", config, "--optional", "--live", "--wait", "30")
    assert done.returncode == 0, done.stderr
    assert message in done.stderr and "--optional" in done.stderr
    done = health("-c", config, "--agent", "flow")
    assert done.returncode == 2
    assert "agents.flow.metrics_listen is empty: pcapd agent flow serves no" in done.stderr


def test_a_bad_config_or_command_line_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[agents.dnstap]\nmetrics_listen = "localhost:x"\n')
    done = health("-c", str(config), "--agent", "dnstap", "--optional")
    assert done.returncode == 2
    assert "agents.dnstap.metrics_listen: 'localhost:x' is not ADDRESS:PORT" in done.stderr
    config.write_text("[metrics\n")
    done = health("-c", str(config))
    assert done.returncode == 2
    assert f"{config}: error: " in done.stderr
    done = health()
    assert done.returncode == 2
    assert "give -c FILE" in done.stderr
    done = health("--url", "127.0.0.1:9")
    assert done.returncode == 2
    assert "expected http://HOST:PORT" in done.stderr


def test_an_agent_is_asked_on_its_own_listener(private_redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agents.toml"
    config.write_text(
        f"[redis]\nport = {private_redis.port}\n\n[agents.dnstap]\n"
        f'socket = "{tmp_path / "dnstap.sock"}"\nmetrics_listen = "127.0.0.1:{port}"\n'
    )
    argv = [sys.executable, "-m", "pcapd", "agent", "dnstap", "-c", str(config)]
    with agent_process(argv, tmp_path / "dnstap.log"):
        live = health("-c", str(config), "--agent", "dnstap", "--live", "--wait", "30")
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout) == {"alive": True}
        # no resolver is connected: not ready, and the check says so
        readiness = health("-c", str(config), "--agent", "dnstap")
        assert readiness.returncode == 1, readiness.stderr
        assert json.loads(readiness.stdout)["checks"]["redis"]["ok"] is True
        assert "input: no resolver connected to the dnstap socket" in readiness.stderr
        # the serve address is not the agent's: without --agent nothing is configured
        assert health("-c", str(config)).returncode == 2

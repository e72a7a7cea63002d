"""`make run`: Redis (started if none answers), the daemon, one capture on lo.

Prints the result event and the file's path. On a terminal the daemon then
keeps serving until Ctrl-C; otherwise everything started here is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "scripts" / "demo.toml"
RUN_DIR = ROOT / "run"
REDIS_PORT = 6379


def redis_up() -> bool:
    try:
        return bool(redis.Redis(port=REDIS_PORT, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    sys.exit(f"demo: {what} did not happen within {timeout:.0f}s")


def main() -> int:
    if os.geteuid() != 0:
        print("demo: capturing packets needs root (or CAP_NET_RAW): run `sudo make run`",
              file=sys.stderr)  # fmt: skip
        return 1
    os.chdir(ROOT)
    RUN_DIR.mkdir(exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        if redis_up():
            print(f"demo: using the Redis already answering on 127.0.0.1:{REDIS_PORT}")
        else:
            server = shutil.which("redis-server") or "/usr/bin/redis-server"
            print(f"demo: starting a private redis-server on 127.0.0.1:{REDIS_PORT}")
            started.append(subprocess.Popen(
                [server, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                 "--dir", str(RUN_DIR)],
                stdout=subprocess.DEVNULL,
            ))  # fmt: skip
            wait(redis_up, 10, "redis-server answering")
        log_path = RUN_DIR / "pcapd.log"
        print(f"demo: starting `pcapd serve -c {CONFIG.relative_to(ROOT)}` (log: {log_path})")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pcapd", "serve", "-c", str(CONFIG)],
            stderr=log_path.open("ab"),
        )
        started.append(daemon)
        client = redis.Redis(port=REDIS_PORT)
        wait(lambda: client.pubsub_numsub("capture")[0][1] > 0, 15, "the daemon subscribing")
        print("demo: pinging 127.0.0.1 while asking for 10 ICMP packets on alias 'local'")
        pinger = subprocess.Popen(["ping", "-c", "30", "-i", "0.2", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL)  # fmt: skip
        trigger = subprocess.run(
            [sys.executable, "-m", "pcapd", "trigger", "-c", str(CONFIG), "--alias", "local",
             "--packets", "10", "--timeout", "5", "--wait", "30", "--count", "1", "icmp"],
            capture_output=True, text=True,
        )  # fmt: skip
        pinger.terminate()
        if trigger.returncode != 0:
            print(trigger.stderr, file=sys.stderr)
            print(log_path.read_text()[-2000:], file=sys.stderr)
            return 1
        result = json.loads(trigger.stdout)
        print("demo: result event:")
        print(json.dumps(result, indent=2))
        print(f"demo: capture file: {result['locations'].get('local')}")
        if sys.stdin.isatty():
            print("demo: pcapd keeps serving; try `.venv/bin/pcapd trigger --wait "
                  "--alias local --packets 5 icmp` in another shell. Ctrl-C stops.")  # fmt: skip
            with contextlib.suppress(KeyboardInterrupt):
                daemon.wait()
        return 0
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())

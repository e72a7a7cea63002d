"""`make bench` runs each benchmark in bench/ and nothing else: the modules
they share do nothing alone, and dnsmix.py wants a file name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAIN = 'if __name__ == "__main__":'


def test_make_bench_runs_every_script_with_a_main_but_the_generator() -> None:
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "bench"], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    loop = re.search(r"for b in (.*?); do", dry)
    assert loop is not None, dry
    run = {ROOT / name for name in loop.group(1).split()}
    scripts = {path for path in (ROOT / "bench").glob("*.py") if MAIN in path.read_text()}
    assert run == scripts - {ROOT / "bench" / "dnsmix.py"}
    assert len(run) >= 10
    # The peers go in under the constraints: no version the tests use moves.
    assert "pip install -q -c constraints.txt -e '.[bench]'" in dry


def test_the_generator_says_how_it_is_run(tmp_path: Path) -> None:
    for argv in (
        [],
        ["--help"],
        [str(tmp_path / "x.pcap"), "ten"],
        [str(tmp_path / "x.pcap"), "²"],
    ):
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "dnsmix.py"), *argv],
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=tmp_path)  # fmt: skip
        assert (done.returncode, done.stderr) == (
            2,
            "usage: .venv/bin/python bench/dnsmix.py OUT.pcap [RESPONSES]\n",
        )
    assert list(tmp_path.iterdir()) == []  # no file named --help, nor x.pcap

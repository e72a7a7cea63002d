"""Reading a process's /metrics, /healthz and /readyz with a real HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Found = dict[tuple[str, frozenset[tuple[str, str]]], float]

SCRAPE_TIMEOUT = 10.0

# Run inside a network namespace (`ip netns exec NS python -c ...`), where
# the test's own loopback cannot reach.
_FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
    "    code, body = r.status, r.read()\n"
    "except urllib.error.HTTPError as e:\n"
    "    code, body = e.code, e.read()\n"
    "sys.stdout.write(str(code) + '\\n' + body.decode())\n"
)


def get(url: str, wrap: Sequence[str] = ()) -> tuple[int, str]:
    """(status, body) of a GET; `wrap` runs the client inside a namespace."""
    if wrap:
        done = subprocess.run(
            [*wrap, sys.executable, "-c", _FETCH, url],
            capture_output=True, text=True, timeout=SCRAPE_TIMEOUT + 5,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        code, _, body = done.stdout.partition("\n")
        return int(code), body
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(
    base: str, wrap: Sequence[str] = ()
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value from `base`/metrics."""
    code, text = get(base + "/metrics", wrap)
    assert code == 200, text
    found: Found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def exported_names(text: str) -> dict[str, str]:
    """metric family name -> type, for every family the text names (with or
    without samples), as the parser reads it."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def ready(base: str, wrap: Sequence[str] = ()) -> tuple[int, dict[str, Any]]:
    code, body = get(base + "/readyz", wrap)
    report: dict[str, Any] = json.loads(body)
    return code, report

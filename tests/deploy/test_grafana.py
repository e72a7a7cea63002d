"""deploy/grafana/pcapd.json and the alerting rules in docs/operations.md:
every PromQL expression parses, and every metric it names is one a real
process exports (a daemon and the three agents, started here and scraped
over HTTP)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.agents.test_metrics import agent_process
from tests.helpers import RedisServer, free_port, wait_for
from tests.metrics_scrape import get
from tests.pcapd.daemon_fixture import Daemon

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pcapd.json"
OPERATIONS = ROOT / "docs" / "operations.md"
# The users' documentation: every metric it names must be exported.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BUILTIN = {"up"}  # series Prometheus itself makes for every target

# PromQL's functions and aggregations the dashboard may call.
FUNCTIONS = {
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "sum", "min", "max",
    "avg", "count", "topk", "bottomk", "quantile", "abs", "clamp_min", "clamp_max", "time",
    "max_over_time", "min_over_time", "avg_over_time", "absent", "changes", "resets",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset"}  # fmt: skip
LABEL_LIST_AFTER = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"""
    r"""|(?P<str>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]+\])|(?P<op>==|!=|=~|!~|>=|<=|[-+*/%^(){}=,<>]))"""
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class PromQLError(ValueError):
    pass


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects; PromQLError on what is not PromQL
    (unknown function, unbalanced brackets, stray characters)."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    tokens: list[tuple[str, str]] = []
    at = 0
    while at < len(expr.rstrip()):
        match = TOKEN.match(expr, at)
        if match is None or match.end() == at:
            raise PromQLError(f"cannot read {expr[at:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        at = match.end()
    names: set[str] = set()
    depth: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text in "({":
            depth.append(text)
        elif text in ")}":
            if not depth or depth.pop() != {")": "(", "}": "{"}[text]:
                raise PromQLError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "name" and depth[-1:] == ["{"]:
            pass  # a label matcher's name
        elif kind == "name" and text in LABEL_LIST_AFTER:
            if nxt != "(":
                raise PromQLError(f"{text} needs a label list in {expr!r}")
            close = next(j for j in range(i + 1, len(tokens)) if tokens[j][1] == ")")
            i = close + 1
            continue
        elif kind == "name" and text in KEYWORDS:
            pass
        elif kind == "name" and (nxt == "(" or nxt in ("by", "without")):
            if text not in FUNCTIONS:
                raise PromQLError(f"unknown function {text!r} in {expr!r}")
        elif kind == "name":
            names.add(text)
        i += 1
    if depth:
        raise PromQLError(f"unclosed {depth[-1]!r} in {expr!r}")
    return names


def expressions() -> Iterator[str]:
    def walk(panels: list[dict[str, object]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", []) or []:  # type: ignore[attr-defined]
                yield target["expr"]
            yield from walk(panel.get("panels", []) or [])  # type: ignore[arg-type]

    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def rule_expressions() -> list[str]:
    """The `expr` of every alerting rule in docs/operations.md's YAML blocks."""
    found: list[str] = []
    for block in OPERATIONS.read_text().split("```yaml\n")[1:]:
        document = yaml.safe_load(block.split("```", 1)[0])
        for group in document.get("groups", []):
            found.extend(rule["expr"] for rule in group["rules"])
    return found


def documented_metrics() -> set[str]:
    """Every `pcapd_...` name the README and docs/*.md write in backquotes."""
    found: set[str] = set()
    for path in DOCS:
        found.update(re.findall(r"`(pcapd_[a-z0-9_]+)", path.read_text()))
    return found


def series_names(text: str) -> set[str]:
    """Every series name the exposition can carry, samples or not: counters
    as `<name>_total`, histograms with their bucket, sum and count."""
    from prometheus_client.parser import text_string_to_metric_families

    found: set[str] = set()
    for family in text_string_to_metric_families(text):
        found.update(sample.name for sample in family.samples)
        if family.type == "counter":
            found.add(family.name + "_total")
        elif family.type in ("histogram", "summary"):
            found.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
            found.add(family.name)  # as the docs name a histogram
        else:
            found.add(family.name)
    return found


def test_the_parser_finds_names_and_refuses_what_is_not_promql() -> None:
    expr = 'histogram_quantile(0.9, sum by (le, sink) (rate(a_seconds_bucket{x="y"}[5m])))'
    assert metric_names(expr) == {"a_seconds_bucket"}
    assert metric_names("b_bytes / on (instance) c_bytes") == {"b_bytes", "c_bytes"}
    for bad in ("rate(a_total[5m]", "sumz(a)", "a{x=}}", "a ; b"):
        with pytest.raises(PromQLError):
            metric_names(bad)


def test_every_dashboard_alert_and_documented_metric_is_exported(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    exprs, rules = list(expressions()), rule_expressions()
    assert len(exprs) >= 20 and len(rules) >= 8
    wanted = set().union(*(metric_names(e) for e in exprs + rules)) - BUILTIN
    documented = documented_metrics()
    assert len(documented) >= 40
    ports = {name: free_port() for name in ("serve", "dnstap", "flow", "dnswire")}
    daemon = Daemon(
        redis_srv, tmp_path / "serve",
        extra_sections=f'\n[metrics]\nlisten = "127.0.0.1:{ports["serve"]}"\n'
        f'[delivery]\nspool_dir = "{tmp_path / "spool"}"\n'
        f'[s3]\nupload = true\nendpoint = "http://127.0.0.1:{free_port()}"\nbucket = "b"\n'
        'region = "us-east-1"\n',
    )  # fmt: skip
    config = tmp_path / "agents.toml"
    config.write_text(f"""
[redis]
port = {redis_srv.port}

[agents.dnstap]
socket = "{tmp_path / "dnstap.sock"}"
stats_interval = 0
metrics_listen = "127.0.0.1:{ports["dnstap"]}"

[agents.flow]
interface = "lo"
our_nets = ["127.0.0.0/8"]
metrics_listen = "127.0.0.1:{ports["flow"]}"

[agents.dnswire]
interface = "lo"
stats_interval = 0
metrics_listen = "127.0.0.1:{ports["dnswire"]}"
""")
    agent = [sys.executable, "-m", "pcapd", "agent"]
    daemon.start()
    try:
        with (
            agent_process([*agent, "dnstap", "-c", str(config)], tmp_path / "dnstap.log"),
            agent_process([*agent, "flow", "-c", str(config)], tmp_path / "flow.log"),
            agent_process([*agent, "dnswire", "-c", str(config)], tmp_path / "dnswire.log"),
        ):
            exported: set[str] = set()
            for name, port in ports.items():
                base = f"http://127.0.0.1:{port}"
                wait_for(lambda b=base: _up(b), timeout=30)
                code, text = get(base + "/metrics")
                assert code == 200, (name, text)
                exported |= series_names(text)
    finally:
        daemon.stop()
    missing = sorted(wanted - exported)
    assert not missing, f"the dashboard or the alerts name metrics no process exports: {missing}"
    undefined = sorted(documented - exported)
    assert not undefined, f"the docs name metrics no process exports: {undefined}"


def _up(base: str) -> bool:
    try:
        return get(base + "/healthz")[0] == 200
    except OSError:
        return False


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "pcapd"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    subprocess.run(["jq", "-e", ".panels | length > 0", str(DASHBOARD)], check=True,
                   capture_output=True)  # fmt: skip

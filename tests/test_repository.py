"""What ships beside the code stays true to it."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agents.dnstap.config import DnstapConfig, parse_dnstap_config
from agents.dnswire.config import DnswireConfig, parse_dnswire_config
from agents.flow.config import FlowConfig, parse_flow_config
from pcapd.core.config import (
    CloudsharkConfig,
    CorrelatorConfig,
    DeliveryConfig,
    FleetConfig,
    GeneralConfig,
    MetricsConfig,
    RedisConfig,
    S3Config,
    SecurityConfig,
    SqsConfig,
    SyslogConfig,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent


EXAMPLE = ROOT / "config.toml.example"
# Every section the example documents, and the dataclass it is read into.
SECTIONS: dict[str, Any] = {
    "general": GeneralConfig, "redis": RedisConfig, "syslog": SyslogConfig,
    "s3": S3Config, "cloudshark": CloudsharkConfig, "delivery": DeliveryConfig,
    "sqs": SqsConfig, "security": SecurityConfig, "fleet": FleetConfig,
    "correlator": CorrelatorConfig, "metrics": MetricsConfig,
    "agents.dnstap": DnstapConfig, "agents.flow": FlowConfig, "agents.dnswire": DnswireConfig,
}  # fmt: skip
AGENTS = {"agents.dnstap", "agents.flow", "agents.dnswire"}


def test_config_example_loads_without_errors_or_warnings() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    config = parse_config(data, hostname="example")
    assert config.warnings == ()
    assert parse_dnstap_config(config.agents["dnstap"]).warnings == ()
    assert parse_flow_config(config.agents["flow"]).warnings == ()
    assert parse_dnswire_config(config.agents["dnswire"]).warnings == ()


def test_every_option_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    for section, cls in SECTIONS.items():
        body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for name in cls.__dataclass_fields__.keys() - {"warnings"}:
            assert f"\n{name} =" in body or f"\n# {name} =" in body, f"{section}.{name}"


def test_the_example_values_are_the_defaults() -> None:
    """What the example shows uncommented is what a config without it gets."""
    data = tomllib.loads(EXAMPLE.read_text())
    example, defaults = parse_config(data, "example"), parse_config({}, "example")
    for section in SECTIONS.keys() - AGENTS:
        assert getattr(example, section) == getattr(defaults, section), section
    assert parse_dnstap_config(data["agents"]["dnstap"]) == DnstapConfig()
    assert parse_flow_config(data["agents"]["flow"]) == FlowConfig()
    assert parse_dnswire_config(data["agents"]["dnswire"]) == DnswireConfig()


def make_dry_run(target: str) -> list[str]:
    """The commands `make TARGET` would run, without running them."""
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "--no-print-directory", target],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, f"make {target}: {done.stderr}"
    return done.stdout.splitlines()


def test_readme_two_commands_are_the_makefile_targets() -> None:
    """The README's "Two commands" are `make run` and `make test`, and each
    does what the README says: the demo, and ruff, mypy and pytest."""
    section = (ROOT / "README.md").read_text().split("\n## Two commands\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    assert make_dry_run("run")[-1] == ".venv/bin/python scripts/demo.py"
    assert (ROOT / "scripts" / "demo.py").is_file()
    test = make_dry_run("test")
    for step in (".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"):
        assert step in test
    assert test[-1] == (
        ".venv/bin/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder"
    ), "the suite runs last, after the checks, its files side by side"


def test_the_slow_files_handed_out_first_exist() -> None:
    from tests.conftest import SLOW_FIRST

    assert [path for path in SLOW_FIRST if not (ROOT / path).is_file()] == []
    assert len(set(SLOW_FIRST)) == len(SLOW_FIRST)


def test_ci_runs_make_test_from_the_repository_root(tmp_path: Path) -> None:
    """`.ci/run` (what CI calls) is `make test`: run it with a `make` that
    only records how it was called."""
    record = tmp_path / "make.calls"
    shim = tmp_path / "bin" / "make"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$PWD $*" >> {record}\n')
    shim.chmod(0o755)
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], cwd=tmp_path, stdin=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == [f"{ROOT} test"]


def test_pytest_stays_strict(pytestconfig: pytest.Config) -> None:
    """Warnings are errors, unknown markers are errors, a hung test fails."""
    assert "--strict-markers" in pytestconfig.getini("addopts")
    assert pytestconfig.getini("filterwarnings")[0] == "error"
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 300

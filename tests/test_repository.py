"""What ships beside the code stays true to it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from agents.dnstap.config import DnstapConfig, parse_dnstap_config
from agents.flow.config import FlowConfig, parse_flow_config
from pcapd.core.config import (
    CloudsharkConfig,
    DeliveryConfig,
    GeneralConfig,
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
    "sqs": SqsConfig, "security": SecurityConfig,
    "agents.dnstap": DnstapConfig, "agents.flow": FlowConfig,
}  # fmt: skip


def test_config_example_loads_without_errors_or_warnings() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    config = parse_config(data, hostname="example")
    assert config.warnings == ()
    assert parse_dnstap_config(config.agents["dnstap"]).warnings == ()
    assert parse_flow_config(config.agents["flow"]).warnings == ()


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
    for section in SECTIONS.keys() - {"agents.dnstap", "agents.flow"}:
        assert getattr(example, section) == getattr(defaults, section), section
    assert parse_dnstap_config(data["agents"]["dnstap"]) == DnstapConfig()
    assert parse_flow_config(data["agents"]["flow"]) == FlowConfig()


def test_readme_shows_both_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text

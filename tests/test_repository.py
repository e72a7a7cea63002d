"""What ships beside the code stays true to it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pcapd.core.config import (
    CloudsharkConfig,
    CorrelatorConfig,
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


def test_config_example_loads_without_errors_or_warnings() -> None:
    data = tomllib.loads((ROOT / "config.toml.example").read_text())
    config = parse_config(data, hostname="example")
    assert config.warnings == ()


def test_every_option_is_documented_in_the_example() -> None:
    text = (ROOT / "config.toml.example").read_text()
    sections: dict[str, Any] = {
        "general": GeneralConfig, "redis": RedisConfig, "syslog": SyslogConfig,
        "s3": S3Config, "cloudshark": CloudsharkConfig, "delivery": DeliveryConfig,
        "sqs": SqsConfig, "security": SecurityConfig, "correlator": CorrelatorConfig,
    }  # fmt: skip
    for section, cls in sections.items():
        body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for name in cls.__dataclass_fields__:
            assert f"\n{name} =" in body or f"\n# {name} =" in body, f"{section}.{name}"


def test_readme_shows_both_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text

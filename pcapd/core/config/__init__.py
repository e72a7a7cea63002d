"""The one typed config object, read from pcapdaemon-compatible TOML.

pcapdaemon's sample config loads unchanged. Every bound is a named field with
a default constant in `sections.py`, and each section has its reader in the
module of its family (`general.py`, `sources.py`, `interfaces.py`,
`delivery.py`, `correlator.py`). `parse_config` collects *every* problem,
each naming the field (`general.maxpackets: ...`), and raises them together
as one `ConfigError`, so `pcapd check-config` can print them all at once. Keys pcapd does not know
are warnings, not errors, as pcapdaemon ignored them too.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pcapd.core.config.correlator import _correlator
from pcapd.core.config.delivery import _cloudshark, _delivery, _s3
from pcapd.core.config.general import _fleet, _general, _metrics, _syslog
from pcapd.core.config.interfaces import _interfaces, check_rings

# Every section value and named default or bound, importable from here as before.
from pcapd.core.config.sections import *
from pcapd.core.config.sources import _redis, _security, _sqs
from pcapd.core.configread import ConfigError as ConfigError  # every command imports it here
from pcapd.core.configread import Table, key_name


@dataclass(frozen=True, slots=True)
class Config:
    general: GeneralConfig
    redis: RedisConfig = RedisConfig()
    syslog: SyslogConfig = SyslogConfig()
    interfaces: tuple[InterfaceConfig, ...] = ()
    cloudshark: CloudsharkConfig = CloudsharkConfig()
    s3: S3Config = S3Config()
    sqs: SqsConfig = SqsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    security: SecurityConfig = SecurityConfig()
    correlator: CorrelatorConfig = CorrelatorConfig()
    fleet: FleetConfig = FleetConfig()
    metrics: MetricsConfig = MetricsConfig()
    # [agents.*] tables, validated by each agent's own config module.
    agents: Mapping[str, Any] = field(default_factory=dict)
    # Remote sinks in the order their sections appear in the file.
    remote_order: tuple[str, ...] = ("s3", "cloudshark")
    # pcapdaemon's [kafka] listen = true: pcapd reads no Kafka, so it is no source.
    kafka_listen: bool = False
    warnings: tuple[str, ...] = ()

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """alias -> interface names that carry it, in config order."""
        found: dict[str, list[str]] = {}
        for iface in self.interfaces:
            for alias in iface.aliases:
                found.setdefault(alias, []).append(iface.name)
        return {alias: tuple(names) for alias, names in found.items()}

    def serve_problems(self) -> list[str]:
        """What stops `pcapd serve` from doing anything useful with this config."""
        problems = []
        if not (self.redis.listen or self.redis.stream_listen or self.sqs.listen):
            if self.kafka_listen:
                problems.append(
                    "kafka.listen: pcapd does not read Kafka, and no other request source "
                    "is enabled: use [redis] listen (pub/sub), [redis] stream_listen "
                    "(a stream) or [sqs] listen instead"
                )
            problems.append(
                "redis.listen, redis.stream_listen, sqs.listen: at least one request "
                "source must be enabled"
            )
        if not (self.general.writelocal or self.s3.upload or self.cloudshark.upload):
            problems.append(
                "general.writelocal, s3.upload, cloudshark.upload: at least one "
                "destination must be enabled"
            )
        return problems


def parse_config(data: Mapping[str, Any], hostname: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    warnings: list[str] = []
    host = hostname or socket.gethostname()

    def section(name: str) -> Table:
        return Table(data.get(name), name, errors, warnings)

    sections = {
        "general": section("general"),
        "redis": section("redis"),
        "syslog": section("syslog"),
        "cloudshark": section("cloudshark"),
        "s3": section("s3"),
        "sqs": section("sqs"),
        "delivery": section("delivery"),
        "security": section("security"),
        "correlator": section("correlator"),
        "fleet": section("fleet"),
        "metrics": section("metrics"),
    }
    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        errors.append("agents: expected a table of [agents.<name>] tables")
        agents = {}
    errors.extend(f"agents.{key_name(name)}: expected a table ([agents.{key_name(name)}])"
                  for name, table in agents.items() if not isinstance(table, dict))  # fmt: skip
    agents = {name: table for name, table in agents.items() if isinstance(table, dict)}
    config = Config(
        general=_general(sections["general"], host),
        redis=_redis(sections["redis"]),
        syslog=_syslog(sections["syslog"]),
        interfaces=_interfaces(data.get("interface"), errors, warnings),
        cloudshark=_cloudshark(sections["cloudshark"]),
        s3=_s3(sections["s3"]),
        sqs=_sqs(sections["sqs"]),
        delivery=_delivery(sections["delivery"]),
        security=_security(sections["security"]),
        fleet=_fleet(sections["fleet"]),
        metrics=_metrics(sections["metrics"]),
        agents=agents,
        remote_order=tuple(
            dict.fromkeys([k for k in data if k in ("s3", "cloudshark")] + ["s3", "cloudshark"])
        ),
    )
    errors.extend(check_rings(config.general, config.interfaces))
    # After the rest, so errors keep the order of the sections above.
    config = replace(config, correlator=_correlator(sections["correlator"], config.security))
    for s in sections.values():
        s.finish()
    kafka = data.get("kafka")
    if kafka is not None:
        config = replace(
            config, kafka_listen=isinstance(kafka, dict) and kafka.get("listen") is True
        )
        warnings.append(
            "kafka: pcapd does not read Kafka; section ignored (use [redis] listen, "
            "[redis] stream_listen or [sqs] listen)"
        )
    known = set(sections) | {"interface", "agents", "kafka"}
    warnings.extend(
        f"{key_name(name)}: unknown section, ignored" for name in sorted(set(data) - known)
    )
    if errors:
        raise ConfigError(errors, warnings=warnings)
    return replace(config, warnings=tuple(warnings))


Overrides = Mapping[str, Mapping[str, Any]]


def merge_overrides(data: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """`data` with `{section: {key: value}}` laid over it (command-line flags win)."""
    merged = dict(data)
    for name, values in overrides.items():
        table = merged.get(name)
        merged[name] = {**(table if isinstance(table, dict) else {}), **values}
    return merged


def load_config(
    path: str | os.PathLike[str] | None,
    hostname: str | None = None,
    overrides: Overrides | None = None,
) -> Config:
    """Read and validate a TOML file; errors name the file and every bad field.

    `overrides` (section -> key -> value) are applied before validation, so a
    value given on the command line is checked as if the file held it. With
    no path, the config is the defaults plus the overrides.
    """
    if path is None:
        return parse_config(merge_overrides({}, overrides or {}), hostname)
    where = os.fspath(path)
    data = read_toml(where)
    try:
        return parse_config(merge_overrides(data, overrides or {}), hostname)
    except ConfigError as exc:
        raise ConfigError(exc.errors, where, exc.warnings) from None


def read_toml(where: str) -> dict[str, Any]:
    """The file's TOML, not yet validated; a ConfigError naming the file when
    it cannot be read or is no TOML."""
    try:
        with open(where, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror}"], where) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], where) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"not UTF-8 text (TOML must be UTF-8): {exc.reason} at byte {exc.start}"], where
        ) from exc
    except ValueError as exc:  # open(): a NUL in the path (no command line holds one)
        raise ConfigError([f"cannot read config: {exc}"], repr(where)) from exc

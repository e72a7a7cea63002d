"""[[interface]] lookback, lookback_bytes, lookback_bpf and [general] maxlookback."""

from __future__ import annotations

from typing import Any

import pytest

from pcapd.core.config import (
    DEFAULT_LOOKBACK_BYTES,
    DEFAULT_MAXLOOKBACK,
    ConfigError,
    InterfaceConfig,
    parse_config,
)

HOST = "web10"


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, HOST)
    return info.value.errors


def ring(**fields: Any) -> dict[str, Any]:
    return {"interface": [{"name": "eth0", **fields}]}


def test_defaults_keep_no_ring() -> None:
    config = parse_config({"interface": [{"name": "eth0"}]}, HOST)
    assert config.interfaces == (InterfaceConfig("eth0"),)
    assert config.interfaces[0].lookback == 0
    assert config.general.maxlookback == DEFAULT_MAXLOOKBACK


def test_a_ring_is_read() -> None:
    config = parse_config(
        ring(lookback=30, lookback_bytes=8 << 20, lookback_bpf="not port 22"), HOST
    )
    assert config.interfaces[0] == InterfaceConfig(
        "eth0", lookback=30, lookback_bytes=8 << 20, lookback_bpf="not port 22"
    )
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"lookback": -1}, "interface[0].lookback: must be at least 0 and at most 86400, got -1"),
        ({"lookback": 10**6},
         "interface[0].lookback: must be at least 0 and at most 86400, got 1000000"),
        ({"lookback": 2.5}, "interface[0].lookback: expected an integer, got 2.5"),
        ({"lookback": "30"}, "interface[0].lookback: expected an integer, got '30'"),
        ({"lookback": True}, "interface[0].lookback: expected an integer, got True"),
        ({"lookback": 10, "lookback_bytes": 1000},
         "interface[0].lookback_bytes: must be at least 2097152 and at most 1099511627776, "
         "got 1000"),
        ({"lookback": 10, "lookback_bytes": 2**62},
         f"interface[0].lookback_bytes: must be at least 2097152 and at most 1099511627776, "
         f"got {2**62}"),
        ({"lookback": 10, "lookback_bpf": "host"},
         "interface[0].lookback_bpf: does not compile as a filter for Ethernet (bad filter), "
         "got 'host'"),
        ({"lookback": 10, "lookback_bpf": "port 99999"},
         "interface[0].lookback_bpf: does not compile as a filter for Ethernet (bad filter), "
         "got 'port 99999'"),
        ({"lookback": 10, "lookback_bpf": "host \u00e9"},
         "interface[0].lookback_bpf: holds U+00E9 at character 5; a filter is printable "
         "ASCII, got 'host \u00e9'"),
        ({"lookback": 10, "lookback_bpf": 7},
         "interface[0].lookback_bpf: expected a string, got 7"),
        ({"lookback_bytes": 8 << 20},
         "interface[0].lookback_bytes: only used with lookback > 0 (seconds the ring keeps)"),
        ({"lookback_bpf": "udp"},
         "interface[0].lookback_bpf: only used with lookback > 0 (seconds the ring keeps)"),
    ],
)  # fmt: skip
def test_bad_ring_fields_name_field_value_and_rule(fields: dict[str, Any], error: str) -> None:
    assert errors_of(ring(**fields)) == [error]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-5, "general.maxlookback: must be at least 1 and at most 86400, got -5"),
        (0, "general.maxlookback: must be at least 1 and at most 86400, got 0"),
        (86401, "general.maxlookback: must be at least 1 and at most 86400, got 86401"),
        ("300", "general.maxlookback: expected an integer, got '300'"),
    ],
)
def test_bad_maxlookback(value: Any, error: str) -> None:
    assert errors_of({"general": {"maxlookback": value}}) == [error]


def test_rings_must_leave_room_for_a_capture_of_maxbytes() -> None:
    data: dict[str, Any] = {
        "general": {"max_memory": 100 << 20, "maxbytes": 40 << 20},
        "interface": [
            {"name": "eth0", "lookback": 10, "lookback_bytes": 32 << 20},
            {"name": "eth1"},
            {"name": "eth2", "lookback": 10, "lookback_bytes": 32 << 20},
        ],
    }
    assert errors_of(data) == [
        "interface[0].lookback_bytes=33554432, interface[2].lookback_bytes=33554432: rings "
        "hold 67108864 of general.max_memory=104857600, leaving 37748736, below "
        "general.maxbytes=41943040: a capture of maxbytes could never be admitted"
    ]
    data["general"]["maxbytes"] = 30 << 20
    assert parse_config(data, HOST).interfaces[2].lookback_bytes == 32 << 20


def test_default_ring_fits_the_default_memory() -> None:
    config = parse_config(ring(lookback=60), HOST)
    assert config.interfaces[0].lookback_bytes == DEFAULT_LOOKBACK_BYTES

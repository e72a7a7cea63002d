from __future__ import annotations

import math
from pathlib import Path

import pytest

from agents.dnstap.config import (
    MAX_FRAME_TIMEOUT,
    MIN_FRAME_TIMEOUT,
    DnstapConfig,
    HostPort,
    parse_dnstap_config,
)
from pcapd.core.config import ConfigError, load_config


def test_defaults() -> None:
    cfg = parse_dnstap_config({})
    assert cfg == DnstapConfig()
    assert cfg.ttl_grace == 900 and cfg.dedup_window == 1.0
    assert cfg.message_types == ("CLIENT_RESPONSE",) and cfg.record_types == ("A", "AAAA")
    assert cfg.message_type_numbers == frozenset({6})
    assert cfg.record_type_numbers == frozenset({1, 28})


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "pcapd.toml"
    path.write_text(
        '[redis]\nurl = "redis://127.0.0.1:6390/0"\n'
        "[agents.dnstap]\n"
        'socket = "/tmp/x.sock"\nsocket_mode = "0600"\nlisten = "[::1]:6000"\n'
        'message_types = ["client_response", "CLIENT_QUERY"]\nrecord_types = ["A"]\n'
        'ignore = ["Local", "in-addr.arpa."]\ndedup_window = 2\nsurprise = 1\n'
    )
    cfg = parse_dnstap_config(load_config(path).agents.get("dnstap", {}))
    assert cfg.socket == "/tmp/x.sock" and cfg.socket_mode == 0o600
    assert cfg.listen == HostPort("::1", 6000) and str(cfg.listen) == "[::1]:6000"
    assert cfg.message_types == ("CLIENT_RESPONSE", "CLIENT_QUERY")
    assert cfg.record_types == ("A",)
    assert cfg.ignore == ("local.", "in-addr.arpa.")
    assert cfg.dedup_window == 2.0
    assert cfg.warnings == ("agents.dnstap.surprise: unknown option, ignored",)


def test_every_error_names_its_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config(
            {
                "socket_mode": "rw-rw----",
                "listen": "localhost:6000",
                "ttl_grace": 0,
                "message_types": ["CLIENT_RESPONSE", "NOPE"],
                "record_types": "MX",
                "dedup_window": "1s",
                "dedup_scope": "everyone",
                "write_combining": "yes",
                "ping_interval": 0,
                "batch_ops": 2_000,
                "max_queue_ops": 1_000,
                "tls_cert": str(tmp_path / "missing.pem"),
                "redis_url": "http://x",
                "udp_output": "127.0.0.1:99999",
                "socket_group": "no-such-group-here",
            }
        )
    assert info.value.errors == [
        "agents.dnstap.redis_url: scheme is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://",
        "agents.dnstap.socket_mode: 'rw-rw----' is not an octal mode such as \"0660\"",
        "agents.dnstap.listen: 'localhost:6000' is not ADDRESS:PORT with a literal IP address",
        "agents.dnstap.ttl_grace: must be at least 1 and at most 2147483647, got 0",
        "agents.dnstap.message_types: expected one of " + ", ".join(
            ["AUTH_QUERY", "AUTH_RESPONSE", "RESOLVER_QUERY", "RESOLVER_RESPONSE",
             "CLIENT_QUERY", "CLIENT_RESPONSE", "FORWARDER_QUERY", "FORWARDER_RESPONSE",
             "STUB_QUERY", "STUB_RESPONSE", "TOOL_QUERY", "TOOL_RESPONSE", "UPDATE_QUERY",
             "UPDATE_RESPONSE"]) + ", got 'NOPE'",
        "agents.dnstap.record_types: expected one of A, AAAA, got 'MX'",
        "agents.dnstap.dedup_window: expected a number, got '1s'",
        "agents.dnstap.dedup_scope: expected one of client, global, got 'everyone'",
        "agents.dnstap.write_combining: expected true or false, got 'yes'",
        "agents.dnstap.ping_interval: must be at least 0.05 and at most 3600.0, got 0",
        "agents.dnstap.udp_output: '127.0.0.1:99999': port '99999' is not a port in 0..65535",
        "agents.dnstap.batch_ops: 2000 exceeds max_queue_ops=1000",
        "agents.dnstap.tls_cert: tls_cert and tls_key go together",
        "agents.dnstap.tls_cert: TLS needs a TCP listener: set agents.dnstap.listen",
        f"agents.dnstap.tls_cert: '{tmp_path / 'missing.pem'}' is not a readable file",
        "agents.dnstap.socket_group: no group named 'no-such-group-here'",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "rule"),
    [(0, "must be at least 1.0 and at most 3600.0, got 0"),
     (-1, "must be at least 1.0 and at most 3600.0, got -1"),
     (0.5, "must be at least 1.0 and at most 3600.0, got 0.5"),
     (1e9, "must be at least 1.0 and at most 3600.0, got 1000000000.0"),
     (math.nan, "must be a finite number, got nan"),
     (math.inf, "must be a finite number, got inf"),
     ("x", "expected a number, got 'x'")],
)  # fmt: skip
def test_frame_timeout_has_its_own_bounds(value: object, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({"frame_timeout": value})
    assert info.value.errors == [f"agents.dnstap.frame_timeout: {rule}"]
    for bound in (MIN_FRAME_TIMEOUT, MAX_FRAME_TIMEOUT):
        assert parse_dnstap_config({"frame_timeout": bound}).frame_timeout == bound


def test_no_listener_and_bad_modes() -> None:
    with pytest.raises(ConfigError, match=r"agents\.dnstap\.socket: no listener"):
        parse_dnstap_config({"socket": ""})
    with pytest.raises(ConfigError, match=r"agents.dnstap.socket_mode: 4096 is not a mode"):
        parse_dnstap_config({"socket_mode": 0o10000})
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config([])  # type: ignore[arg-type]
    assert info.value.errors == ["agents.dnstap: expected a table, got an array"]
    assert parse_dnstap_config({"socket_mode": 0o640}).socket_mode == 0o640


@pytest.mark.parametrize("text", ["0660", "660", "0o660", "0O660"])
def test_socket_mode_takes_octal_text_with_or_without_0o(text: str) -> None:
    """int(x, 8) as ShoDoHFlo read it takes a 0o prefix; Python users write one."""
    assert parse_dnstap_config({"socket_mode": text}).socket_mode == 0o660


@pytest.mark.parametrize("text", ["+660", "0_660", " 660", "0o 660", "0o", "0o0o660", "0x1b0"])
def test_socket_mode_refuses_what_int_alone_would_read(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({"socket_mode": text})
    assert info.value.errors == [
        f'agents.dnstap.socket_mode: {text!r} is not an octal mode such as "0660"'
    ]


@pytest.mark.parametrize(
    ("output", "interface", "error"),
    [
        ("127.0.0.1:5000", "::1", "'::1' is IPv6 but udp_output 127.0.0.1:5000 is IPv4"),
        ("[::1]:5000", "127.0.0.1", "'127.0.0.1' is IPv4 but udp_output [::1]:5000 is IPv6"),
    ],
)
def test_udp_interface_must_match_the_output_family(
    output: str, interface: str, error: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({"udp_output": output, "udp_interface": interface})
    assert info.value.errors == [f"agents.dnstap.udp_interface: {error}"]
    same = output.rsplit(":", 1)[0].strip("[]")
    assert parse_dnstap_config({"udp_output": output, "udp_interface": same}).udp_interface == same


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://127.0.0.1:abc/0", "Port could not be cast to integer value as 'abc'"),
        ("redis://127.0.0.1:70000/0", "Port out of range 0-65535"),
    ],
)
def test_redis_url_with_a_bad_port(url: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({"redis_url": url})
    assert info.value.errors == [f"agents.dnstap.redis_url: bad port: {error}"]


FLOATS = ["dedup_window", "flush_interval", "handshake_timeout", "stats_interval"]


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_floats_must_be_finite(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({key: value})
    assert info.value.errors == [f"agents.dnstap.{key}: must be a finite number, got {value!r}"]


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("dedup_window", 0.0, 3600.0),
        ("flush_interval", 0.001, 10.0),
        ("handshake_timeout", 0.1, 3600.0),
        ("stats_interval", 0.0, 86400.0),
    ],
)
def test_floats_are_bounded(key: str, low: float, high: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dnstap_config({key: high + 1})
    rule = f"agents.dnstap.{key}: must be at least {low} and at most {high}"
    assert info.value.errors == [f"{rule}, got {high + 1!r}"]
    assert getattr(parse_dnstap_config({key: high}), key) == high

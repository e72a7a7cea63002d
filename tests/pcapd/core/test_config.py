"""pcapd/core/config/: pcapdaemon's sample loads unchanged, defaults apply, every
problem is reported with its field and value, secrets never print."""

from __future__ import annotations

import dataclasses
import math
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.config import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CHANNEL,
    DEFAULT_DURATION,
    DEFAULT_LOCALDIR,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAXBYTES,
    DEFAULT_MAXDURATION,
    DEFAULT_MAXPACKETS,
    DEFAULT_MAXTIMEOUT,
    DEFAULT_REDIS_PORT,
    DEFAULT_RESULTS_CHANNEL,
    DEFAULT_RESULTS_STREAM,
    DEFAULT_SNAPLENGTH,
    DEFAULT_SYSLOG_PRIORITY,
    DEFAULT_SYSLOG_TAG,
    DEFAULT_TIMEOUT,
    Config,
    ConfigError,
    InterfaceConfig,
    load_config,
    parse_config,
)
from pcapd.core.fields import IFACE_RULE
from pcapd.core.secret import Secret

DATA = Path(__file__).parent.parent / "data"
SAMPLE = DATA / "pcapdaemon.toml"
HOST = "testnode"


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, HOST)
    return info.value.errors


def parse_toml(text: str) -> Config:
    return parse_config(tomllib.loads(text), HOST)


# --- pcapdaemon's sample config ------------------------------------------------


def test_sample_file_is_the_seed_verbatim_with_tabs() -> None:
    text = SAMPLE.read_text()
    assert "listen\t\t= true" in text  # pcapdaemon's own tab alignment survives
    assert text.startswith("[general]\n")


def test_pcapdaemon_sample_config_loads_unchanged() -> None:
    config = load_config(SAMPLE, hostname=HOST)
    g = config.general
    assert (g.node, g.maxpackets, g.writelocal, g.localdir, g.snaplength) == (
        HOST,
        50_000,
        False,
        "/tmp",
        500,
    )
    assert (g.defaulttimeout, g.maxtimeout, g.maxduration, g.maxbytes, g.packetdebug) == (
        10,
        3600,
        3600,
        100_000_000,
        False,
    )

    cs = config.cloudshark
    assert (cs.host, cs.scheme, cs.port, cs.upload) == ("www.cloudshark.org", "https", 443, True)
    assert cs.token == Secret("fffffffffffffffffff")

    r = config.redis
    assert (r.listen, r.host, r.port, r.channel) == (
        True,
        "node.running.redis.net",
        6379,
        "capture",
    )
    assert r.auth is not None and r.auth.reveal() == "password"
    assert r.url is None
    assert r.describe() == "redis://node.running.redis.net:6379/0"

    assert (config.syslog.enabled, config.syslog.priority, config.syslog.tag) == (
        True,
        25,
        "pcapdaemon",
    )

    assert config.interfaces == (
        InterfaceConfig("eth0", ("main", "public")),
        InterfaceConfig("lo", ("local",)),
    )
    assert config.aliases() == {"main": ("eth0",), "public": ("eth0",), "local": ("lo",)}

    s3 = config.s3
    assert (s3.upload, s3.endpoint, s3.bucket, s3.folder, s3.region, s3.acl, s3.encryption) == (
        True,
        "s3.amazonaws.com",
        "pcapdaemon",
        "pcaps",
        "us-east-1",
        "private",
        False,
    )
    assert s3.accessid == "x" * 25
    assert s3.accesskey == Secret("x" * 23)

    sqs = config.sqs
    assert (sqs.listen, sqs.region, sqs.url, sqs.waitseconds, sqs.chunksize) == (
        True,
        "us-east-1",
        "https://example.amazone.com/asdfasdf/myqueue",
        20,
        10,
    )
    assert sqs.accessid == "x" * 25
    assert sqs.accesskey == Secret("x" * 23)

    assert config.warnings == ()
    assert config.serve_problems() == []


def test_sample_config_repr_hides_every_secret() -> None:
    config = load_config(SAMPLE, hostname=HOST)
    text = repr(config)
    assert "fffffffffffffffffff" not in text  # cloudshark token
    assert "'password'" not in text  # redis auth
    assert "Secret('**********')" in text
    # accesskey ("x" * 23) is a substring of the public accessid, so check the field.
    assert repr(config.s3.accesskey) == "Secret('**********')"
    assert str(config.sqs.accesskey) == "Secret('**********')"


def test_secrets_with_distinct_values_never_appear_in_repr_or_str() -> None:
    config = parse_config(
        {
            "redis": {"url": "redis://alice:hunter2-url@127.0.0.1:6380/1", "auth": "hunter2-auth"},
            "cloudshark": {"token": "hunter2-token"},
            "s3": {"accessid": "AKIDPUBLIC", "accesskey": "hunter2-s3"},
            "sqs": {"accessid": "AKIDPUBLIC", "accesskey": "hunter2-sqs"},
            "security": {"keys": {"k1": "hunter2-hmac"}},
        },
        HOST,
    )
    for text in (repr(config), str(config)):
        assert "hunter2" not in text
        assert "AKIDPUBLIC" in text  # the check above is not vacuous


# --- defaults ------------------------------------------------------------------


def assert_all_defaults(config: Config) -> None:
    g = config.general
    assert g.node == HOST
    assert g.maxpackets == DEFAULT_MAXPACKETS == 50_000
    assert g.writelocal is False
    assert g.localdir == DEFAULT_LOCALDIR
    assert g.snaplength == DEFAULT_SNAPLENGTH
    assert g.defaulttimeout == DEFAULT_TIMEOUT
    assert g.maxtimeout == DEFAULT_MAXTIMEOUT
    assert g.maxduration == DEFAULT_MAXDURATION
    assert g.maxbytes == DEFAULT_MAXBYTES
    assert g.packetdebug is False
    assert g.defaultduration == DEFAULT_DURATION
    assert g.format == "pcap"
    assert g.max_concurrent == DEFAULT_MAX_CONCURRENT
    assert g.max_memory == DEFAULT_MAX_MEMORY
    assert g.buffer_size == DEFAULT_BUFFER_SIZE
    assert g.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    r = config.redis
    assert (r.listen, r.host, r.port, r.channel, r.auth, r.url, r.db) == (
        True,
        "127.0.0.1",
        DEFAULT_REDIS_PORT,
        DEFAULT_CHANNEL,
        None,
        None,
        0,
    )
    assert (r.results_channel, r.results_stream) == (
        DEFAULT_RESULTS_CHANNEL,
        DEFAULT_RESULTS_STREAM,
    )
    assert config.syslog.enabled is False
    assert (config.syslog.priority, config.syslog.tag) == (
        DEFAULT_SYSLOG_PRIORITY,
        DEFAULT_SYSLOG_TAG,
    )
    assert config.interfaces == ()
    assert config.aliases() == {}
    assert (config.cloudshark.upload, config.s3.upload, config.sqs.listen) == (False, False, False)
    assert config.warnings == ()


def test_empty_file_gets_every_default(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert_all_defaults(load_config(path, hostname=HOST))


@pytest.mark.parametrize("text", ["[general]\n", "[general]\n[redis]\n[cloudshark]\n[s3]\n[sqs]\n"])
def test_empty_sections_get_every_default(text: str) -> None:
    assert_all_defaults(parse_toml(text))


def test_node_defaults_to_the_hostname() -> None:
    assert parse_config({}).general.node == socket.gethostname()
    assert parse_config({"general": {"node": "edge-7"}}, HOST).general.node == "edge-7"


def test_missing_keys_default_while_set_keys_are_kept() -> None:
    config = parse_toml("[general]\nmaxpackets = 10\n[redis]\nport = 7000\n")
    assert config.general.maxpackets == 10
    assert config.general.maxbytes == DEFAULT_MAXBYTES
    assert config.general.snaplength == DEFAULT_SNAPLENGTH
    assert (config.redis.port, config.redis.host, config.redis.channel) == (
        7000,
        "127.0.0.1",
        "capture",
    )


def test_default_timeout_and_duration_follow_lower_caps() -> None:
    general = parse_toml("[general]\nmaxtimeout = 5\nmaxduration = 30\n").general
    assert (general.defaulttimeout, general.maxtimeout) == (5, 5)
    assert (general.defaultduration, general.maxduration) == (30, 30)


def test_new_general_fields_are_read() -> None:
    g = parse_toml(
        '[general]\nnode = "edge-1"\nformat = "pcapng"\nmax_concurrent = 3\n'
        "max_memory = 209715200\nbuffer_size = 1048576\nmaxbytes = 1000000\n"
    ).general
    assert (g.node, g.format, g.max_concurrent, g.max_memory, g.buffer_size) == (
        "edge-1",
        "pcapng",
        3,
        200 * 1024 * 1024,
        1024 * 1024,
    )


def test_alias_may_be_a_single_string_and_aliases_span_interfaces() -> None:
    config = parse_toml(
        '[[interface]]\nname = "eth0"\nalias = "uplink"\n'
        '[[interface]]\nname = "eth1"\nalias = ["uplink", "backup"]\n'
        '[[interface]]\nname = "lo"\n'
    )
    assert config.interfaces[0] == InterfaceConfig("eth0", ("uplink",))
    assert config.interfaces[2] == InterfaceConfig("lo", ())
    assert config.aliases() == {"uplink": ("eth0", "eth1"), "backup": ("eth1",)}


def test_a_long_alias_is_quoted_cut_with_a_marker() -> None:
    """40 characters of it, and "\u2026" after the quote when there are more:
    a position past them is then no surprise, and a cut one is not taken for
    the whole."""
    cut = f"{'a' * 40!r}\u2026"
    long, bad = "a" * 5000, "a" * 57 + "\t" + "a" * 42
    assert errors_of({"interface": [{"name": "lo", "alias": [long, bad, "a" * 40]}]}) == [
        f"interface[0].alias[0]: {cut} is 5000 characters; the limit is 1024",
        f"interface[0].alias[1]: {cut} holds a control character U+0009 at character 57",
    ]
    twice = {
        "general": {"writelocal": True},
        "interface": [{"name": "lo", "alias": ["b" * 41] * 2}],
    }
    assert parse_config(twice, HOST).warnings == (
        f"interface[0].alias[1]: {'b' * 40!r}\u2026 is already an alias of 'lo' (alias[0]); "
        "a request naming it captures there once",
    )
    assert errors_of({"interface": [{"name": "x" * 41}]}) == [
        f"interface[0].name: {'x' * 40!r}\u2026 is not an interface name ({IFACE_RULE})"
    ]


# --- errors: field, value, rule ------------------------------------------------

BAD_VALUES = [
    ({"general": {"maxpackets": "lots"}}, "general.maxpackets: expected an integer, got 'lots'"),
    (
        {"general": {"maxpackets": 0}},
        "general.maxpackets: must be at least 1 and at most 2147483647, got 0",
    ),
    (
        {"general": {"maxpackets": -5}},
        "general.maxpackets: must be at least 1 and at most 2147483647, got -5",
    ),
    ({"general": {"maxpackets": True}}, "general.maxpackets: expected an integer, got True"),
    ({"general": {"maxpackets": 1.5}}, "general.maxpackets: expected an integer, got 1.5"),
    ({"general": {"writelocal": "yes"}}, "general.writelocal: expected true or false, got 'yes'"),
    ({"general": {"writelocal": 1}}, "general.writelocal: expected true or false, got 1"),
    ({"general": {"localdir": 5}}, "general.localdir: expected a string, got 5"),
    (
        {"general": {"snaplength": 300_000}},
        "general.snaplength: must be at least 1 and at most 262144, got 300000",
    ),
    (
        {"general": {"maxbytes": 99}},
        "general.maxbytes: must be at least 100 and at most 1099511627776, got 99",
    ),
    ({"general": {"format": "erf"}}, "general.format: expected one of pcap, pcapng, got 'erf'"),
    ({"general": {"log_format": "xml"}}, "general.log_format: expected one of kv, json, got 'xml'"),
    (
        {"general": {"max_concurrent": 5000}},
        "general.max_concurrent: must be at least 1 and at most 1024, got 5000",
    ),
    (
        {"general": {"buffer_size": 1000}},
        "general.buffer_size: must be at least 65536 and at most 2147483647, got 1000",
    ),
    (
        {"general": {"defaulttimeout": 100, "maxtimeout": 50}},
        "general.defaulttimeout: 100 exceeds maxtimeout=50",
    ),
    (
        {"general": {"defaultduration": 100, "maxduration": 50}},
        "general.defaultduration: 100 exceeds maxduration=50",
    ),
    (
        {"general": {"max_memory": 1048576}},
        "general.maxbytes: 100000000 exceeds max_memory=1048576: "
        "a capture of that size could never be admitted",
    ),
    ({"redis": {"port": 70000}}, "redis.port: must be at least 1 and at most 65535, got 70000"),
    ({"redis": {"port": "6379"}}, "redis.port: expected an integer, got '6379'"),
    ({"redis": {"listen": "true"}}, "redis.listen: expected true or false, got 'true'"),
    ({"redis": {"db": -1}}, "redis.db: must be at least 0 and at most 2147483647, got -1"),
    ({"redis": {"auth": 1234}}, "redis.auth: expected a string, got an integer (value not shown)"),
    (
        {"redis": {"results_dedup_window": 0}},
        "redis.results_dedup_window: must be at least 1 and at most 86400, got 0",
    ),
    (
        {"redis": {"results_dedup_window": 86401}},
        "redis.results_dedup_window: must be at least 1 and at most 86400, got 86401",
    ),
    ({"syslog": {"priority": 192}}, "syslog.priority: must be at least 0 and at most 191, got 192"),
    ({"redis": "localhost"}, "redis: expected a table, got a string"),
    (
        {"cloudshark": {"scheme": "ftp"}},
        "cloudshark.scheme: expected one of http, https, got 'ftp'",
    ),
    ({"cloudshark": {"upload": True}}, "cloudshark.token: required when cloudshark.upload = true"),
    ({"s3": {"upload": True}}, "s3.bucket: required when s3.upload = true"),
    (
        {"s3": {"accessid": "AKID"}},
        "s3.accessid, s3.accesskey: set both, or neither for boto3's chain",
    ),
    ({"s3": {"sse": "des"}}, "s3.sse: expected one of AES256, aws:kms, got 'des'"),
    ({"sqs": {"listen": True}}, "sqs.url: required when sqs.listen = true"),
    ({"sqs": {"chunksize": 11}}, "sqs.chunksize: must be at least 1 and at most 10, got 11"),
    ({"sqs": {"waitseconds": 21}}, "sqs.waitseconds: must be at least 1 and at most 20, got 21"),
    (
        {"security": {"require_signed": True}},
        "security.keys: required when security.require_signed = true",
    ),
    ({"interface": {"name": "eth0"}}, "interface: expected [[interface]] tables"),
    ({"interface": [{"alias": ["x"]}]}, "interface[0].name: required"),
    (
        {"interface": [{"name": "eth0"}, {"name": "eth0"}]},
        "interface[1].name: 'eth0' is defined twice",
    ),
    (
        {"interface": [{"name": "eth0", "alias": [1]}]},
        "interface[0].alias: expected a list of strings, got [1]",
    ),
    ({"agents": "dnstap"}, "agents: expected a table of [agents.<name>] tables"),
]


# Every float option of the daemon's sections, with its bounds.
FLOATS = [
    ("cloudshark", "timeout", 0.1, 3600.0),
    ("cloudshark", "connect_timeout", 0.1, 300.0),
    ("cloudshark", "read_timeout", 0.1, 3600.0),
    ("delivery", "backoff_initial", 0.0, 3600.0),
    ("delivery", "backoff_max", 0.0, 3600.0),
    ("delivery", "drain_interval", 0.1, 86400.0),
]


@pytest.mark.parametrize(("section", "key", "low", "high"), FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_floats_must_be_finite(
    section: str, key: str, low: float, high: float, value: float
) -> None:
    assert errors_of({section: {key: value}}) == [
        f"{section}.{key}: must be a finite number, got {value!r}"
    ]


@pytest.mark.parametrize(("section", "key", "low", "high"), FLOATS)
def test_floats_are_bounded(section: str, key: str, low: float, high: float) -> None:
    rule = f"{section}.{key}: must be at least {low} and at most {high}"
    assert errors_of({section: {key: high * 2}}) == [f"{rule}, got {high * 2!r}"]
    if low > 0:
        assert errors_of({section: {key: low / 2}}) == [f"{rule}, got {low / 2!r}"]
    else:
        assert errors_of({section: {key: -1.0}}) == [f"{rule}, got -1.0"]
    # The bounds themselves are accepted, as long as backoff_max >= backoff_initial.
    bounds = {key: high}
    if key == "backoff_initial":
        bounds["backoff_max"] = high
    parse_config({section: bounds}, HOST)


def test_sqs_waitseconds_zero_is_refused_saying_why() -> None:
    assert errors_of({"sqs": {"waitseconds": 0}}) == [
        "sqs.waitseconds: 0 turns long polling off, so every empty reply is followed at once "
        "by the next billed ReceiveMessage: use 1..20 (default 20)"
    ]


def test_pcapdaemon_options_once_ignored_are_read() -> None:
    config = parse_config(
        {"general": {"logrequests": True, "naming": "pcapdaemon"}, "cloudshark": {"timeout": 15}},
        HOST,
    )
    assert (config.general.logrequests, config.general.naming) == (True, "pcapdaemon")
    assert (config.cloudshark.connect_timeout, config.cloudshark.read_timeout) == (5.0, 15.0)
    assert config.warnings == ()
    short = parse_config({"cloudshark": {"timeout": 2}}, HOST).cloudshark
    assert (short.connect_timeout, short.read_timeout) == (2.0, 2.0)
    defaults = parse_config({}, HOST).general
    assert (defaults.logrequests, defaults.naming) == (False, "pcapd")
    assert errors_of({"general": {"naming": "go"}}) == [
        "general.naming: expected one of pcapd, pcapdaemon, got 'go'"
    ]
    assert errors_of({"cloudshark": {"timeout": 15, "read_timeout": 30}}) == [
        "cloudshark.timeout, cloudshark.read_timeout: set one, not both"
    ]


def test_overrides_win_over_the_file_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[redis]\nhost = 'file'\nport = 7000\n[general]\nmaxpackets = 10\n")
    config = load_config(path, HOST, {"redis": {"port": 7001}, "cloudshark": {"host": "cs"}})
    assert (config.redis.host, config.redis.port) == ("file", 7001)
    assert (config.general.maxpackets, config.cloudshark.host) == (10, "cs")
    with pytest.raises(ConfigError) as info:
        load_config(path, HOST, {"redis": {"port": 70000}})
    assert info.value.errors == ["redis.port: must be at least 1 and at most 65535, got 70000"]
    assert load_config(None, HOST, {"redis": {"port": 7002}}).redis.port == 7002


@pytest.mark.parametrize(("data", "message"), BAD_VALUES)
def test_each_error_names_field_and_value(data: dict[str, Any], message: str) -> None:
    assert errors_of(data) == [message]


def test_several_errors_are_reported_together() -> None:
    errors = errors_of(
        {
            "general": {"maxpackets": 0, "snaplength": "big", "format": "erf"},
            "redis": {"port": 0, "url": "http://x"},
            "sqs": {"listen": True},
            "interface": [{"name": "eth0"}, {"name": "eth0"}],
        }
    )
    assert errors == [
        "general.maxpackets: must be at least 1 and at most 2147483647, got 0",
        "general.snaplength: expected an integer, got 'big'",
        "general.format: expected one of pcap, pcapng, got 'erf'",
        "redis.url: scheme 'http' is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://",
        "redis.port: must be at least 1 and at most 65535, got 0",
        "interface[1].name: 'eth0' is defined twice",
        "sqs.url: required when sqs.listen = true",
    ]


def test_load_config_names_the_file_and_keeps_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[general]\nmaxpackets = 0\nmaxbytes = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, hostname=HOST)
    assert info.value.path == str(path)
    assert info.value.errors == [
        "general.maxbytes: must be at least 100 and at most 1099511627776, got 1",
        "general.maxpackets: must be at least 1 and at most 2147483647, got 0",
    ]
    assert str(info.value) == f"{path}: " + "; ".join(info.value.errors)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[general\nmaxpackets = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("not valid TOML: ")
    assert "line 1" in info.value.errors[0]

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.errors == ["cannot read config: No such file or directory"]


def test_interface_entries_must_be_tables() -> None:
    assert errors_of({"interface": ["eth0"]}) == [
        "interface[0]: expected a table, got a string",
        "interface[0].name: required",
    ]


def test_config_is_frozen() -> None:
    config = parse_config({}, HOST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.general.maxpackets = 10**9  # type: ignore[misc]


# --- warnings ------------------------------------------------------------------


def test_unknown_keys_and_sections_are_warnings_not_errors() -> None:
    config = parse_toml(
        "[general]\nmaxpackets = 5\nmaxpacket = 6\n"
        "[redis]\nhostname = 'x'\n"
        "[[interface]]\nname = 'lo'\naliases = ['oops']\n"
        "[kafka]\nbrokers = 'x'\n"
        "[sylog]\ntag = 'x'\n"
    )
    assert config.general.maxpackets == 5
    assert set(config.warnings) == {
        "general.maxpacket: unknown option, ignored",
        "redis.hostname: unknown option, ignored",
        "interface[0].aliases: unknown option, ignored",
        "kafka: pcapd does not read Kafka; section ignored (use [redis] listen, "
        "[redis] stream_listen or [sqs] listen)",
        "sylog: unknown section, ignored",
    }
    assert config.interfaces == (InterfaceConfig("lo", ()),)


def test_agents_tables_are_passed_through_without_warnings() -> None:
    config = parse_toml("[agents.dnstap]\nsocket = '/run/dnstap.sock'\n")
    assert config.agents == {"dnstap": {"socket": "/run/dnstap.sock"}}
    assert config.warnings == ()


# --- [redis] url ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
        ("redis://:s3cret-pw@127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
        ("redis://alice:s3cret-pw@redis.example:6379/1", "redis://redis.example:6379/1"),
        ("rediss://alice:s3cret-pw@redis.example:6380", "rediss://redis.example:6380"),
        ("rediss://redis.example/0", "rediss://redis.example/0"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
        ("unix://:s3cret-pw@/run/redis.sock?db=2", "unix:///run/redis.sock"),
        ("unix:///run/redis.sock?password=s3cret-pw", "unix:///run/redis.sock"),
    ],
)
def test_redis_url_schemes_and_describe_hides_password(url: str, described: str) -> None:
    redis = parse_config({"redis": {"url": url}}, HOST).redis
    assert redis.url is not None and redis.url.reveal() == url
    assert redis.describe() == described
    assert "s3cret" not in redis.describe()
    assert "s3cret" not in repr(redis)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("http://127.0.0.1:6379", "http"), ("tcp://127.0.0.1", "tcp"), ("/run/redis.sock", "")],
)
def test_redis_url_bad_scheme(url: str, scheme: str) -> None:
    assert errors_of({"redis": {"url": url}}) == [
        f"redis.url: scheme {scheme!r} is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://"
    ]


def test_redis_url_bad_scheme_error_never_shows_the_password() -> None:
    (error,) = errors_of({"redis": {"url": "http://alice:s3cret-pw@127.0.0.1"}})
    assert error.startswith("redis.url: ")
    assert "s3cret" not in error


def test_host_port_describe_and_tls() -> None:
    redis = parse_config({"redis": {"host": "10.200.0.1", "port": 6390, "db": 3}}, HOST).redis
    assert redis.describe() == "redis://10.200.0.1:6390/3"
    redis = parse_config({"redis": {"tls": True, "auth": "pw", "username": "bob"}}, HOST).redis
    assert redis.describe() == "rediss://127.0.0.1:6379/0"
    assert redis.username == "bob"


# --- env: and file: secrets -----------------------------------------------------


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCAPD_TEST_TOKEN", "tok-from-env")
    monkeypatch.setenv("PCAPD_TEST_URL", "redis://:pw-from-env@127.0.0.1:6390/0")
    config = parse_config(
        {
            "cloudshark": {"token": "env:PCAPD_TEST_TOKEN"},
            "redis": {"url": "env:PCAPD_TEST_URL"},
        },
        HOST,
    )
    assert config.cloudshark.token == Secret("tok-from-env")
    assert config.redis.url == Secret("redis://:pw-from-env@127.0.0.1:6390/0")
    assert config.redis.describe() == "redis://127.0.0.1:6390/0"
    assert "from-env" not in repr(config)


def test_env_url_scheme_is_checked_after_resolving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCAPD_TEST_URL", "http://127.0.0.1")
    assert errors_of({"redis": {"url": "env:PCAPD_TEST_URL"}}) == [
        "redis.url: scheme 'http' is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://"
    ]


def test_env_secret_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PCAPD_TEST_UNSET", raising=False)
    assert errors_of({"redis": {"auth": "env:PCAPD_TEST_UNSET"}}) == [
        "redis.auth: environment variable PCAPD_TEST_UNSET is not set"
    ]


def test_file_secret_is_read_and_stripped(tmp_path: Path) -> None:
    key = tmp_path / "s3.key"
    key.write_text("key-from-file\n")
    config = parse_config({"s3": {"accessid": "AKID", "accesskey": f"file:{key}"}}, HOST)
    assert config.s3.accesskey == Secret("key-from-file")
    assert "key-from-file" not in repr(config)


def test_file_secret_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert errors_of({"redis": {"auth": f"file:{missing}"}}) == [
        f"redis.auth: cannot read {missing}: No such file or directory"
    ]


def test_security_keys_resolve_env_and_report_each_missing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PCAPD_TEST_K1", "hmac-one")
    monkeypatch.delenv("PCAPD_TEST_K2", raising=False)
    config = parse_config({"security": {"keys": {"k1": "env:PCAPD_TEST_K1", "k0": "lit"}}}, HOST)
    assert config.security.keys == {"k1": Secret("hmac-one"), "k0": Secret("lit")}
    assert errors_of({"security": {"keys": {"k2": "env:PCAPD_TEST_K2"}}}) == [
        "security.keys.k2: environment variable PCAPD_TEST_K2 is not set"
    ]


# --- serve checks ------------------------------------------------------------


def test_serve_problems_name_the_fields() -> None:
    config = parse_config({"redis": {"listen": False}}, HOST)
    assert config.serve_problems() == [
        "redis.listen, redis.stream_listen, sqs.listen: at least one request source "
        "must be enabled",
        "general.writelocal, s3.upload, cloudshark.upload: at least one destination "
        "must be enabled",
    ]
    ok = parse_config({"general": {"writelocal": True}}, HOST)
    assert ok.serve_problems() == []
    sqs_only = parse_config(
        {
            "redis": {"listen": False},
            "sqs": {"listen": True, "url": "http://127.0.0.1/q"},
            "s3": {"upload": True, "bucket": "b"},
        },
        HOST,
    )
    assert sqs_only.serve_problems() == []


@pytest.mark.parametrize("url", ["redis://127.0.0.1:99999/0", "redis://127.0.0.1:abc/0"])
def test_redis_url_bad_port_is_a_config_error(url: str) -> None:
    """A bad port must be reported by check-config, not crash describe() later."""
    (error,) = errors_of({"redis": {"url": url}})
    assert error.startswith("redis.url: ")


def test_redis_url_bad_port_error_never_shows_the_password() -> None:
    (error,) = errors_of({"redis": {"url": "redis://:s3cret-pw@127.0.0.1:99999/0"}})
    assert error.startswith("redis.url: ")
    assert "s3cret" not in error


def test_describe_keeps_ipv6_brackets() -> None:
    redis = parse_config({"redis": {"url": "redis://:pw@[::1]:6380/1"}}, HOST).redis
    assert redis.describe() == "redis://[::1]:6380/1"


#      from pcapd.core.config import ConfigError, load_config) ---------------------


def test_config_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[general]\nlocaldir = "/tmp/caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert len(info.value.errors) == 1
    assert "UTF-8" in info.value.errors[0] or "utf-8" in info.value.errors[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"delivery": {"attempt_timeout": 7200.0}},
            "delivery.attempt_timeout: must be at least 0.1 and at most 3600.0, got 7200.0",
        ),
        (
            {"delivery": {"shutdown_grace": 4000}},
            "delivery.shutdown_grace: must be at least 1.0 and at most 3600.0, got 4000",
        ),
        ({"security": {"dedup_prefix": ""}}, "security.dedup_prefix: must be 1 to 64 characters"),
    ],
)
def test_delivery_deadlines_and_dedup_prefix_are_bounded(
    data: dict[str, Any], message: str
) -> None:
    assert errors_of(data) == [message]


def test_delivery_deadlines_and_dedup_prefix_are_read() -> None:
    config = parse_config(
        {"delivery": {"attempt_timeout": 5, "shutdown_grace": 20.5},
         "security": {"dedup_prefix": "site1:seen:"}},
        HOST,
    )  # fmt: skip
    assert (config.delivery.attempt_timeout, config.delivery.shutdown_grace) == (5.0, 20.5)
    assert config.security.dedup_prefix == "site1:seen:"
    assert errors_of({"delivery": {"attempt_timeout": 0.0}})[0].startswith(
        "delivery.attempt_timeout: "
    )


def test_a_cluster_config_pointed_at_another_url_is_what_the_url_says() -> None:
    """An agent's redis_url or --redis-url replaces [redis]'s cluster seeds."""
    base = parse_config({"redis": {"cluster": True, "nodes": ["10.0.0.1:7000"]}}, HOST).redis
    assert base.clustered and base.describe() == "redis+cluster://10.0.0.1:7000"
    single = base.with_url(Secret("redis://127.0.0.1:6379/0"))
    assert not single.clustered and single.nodes == ()
    seed = base.with_url(Secret("rediss+cluster://u:pw@10.0.0.2:7000"))
    assert seed.clustered and seed.describe() == "rediss+cluster://10.0.0.2:7000"

"""pcapd/core/request/: pcapdaemon's message parses; every bad message is rejected
with a message naming the field, the value and the rule."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.config import MAX_SNAPLENGTH, Config, load_config, parse_config
from pcapd.core.fields import (
    ALIAS_RULE,
    MAX_INTERFACES,
    MAX_NODERE_LEN,
    MAX_TEXT_LEN,
    REQUEST_IFACE_RULE,
    show,
)
from pcapd.core.request import (
    CaptureRequest,
    RequestError,
    addressed_to,
    decode_body,
    lookback_problem,
    parse_request,
    resolve_interfaces,
)
from pcapd.engine import available_devices

DATA = Path(__file__).parent.parent / "data"
HOST = "web10"
# Generous sanity bound for RE2 on a pathological pattern; backtracking engines
# take minutes on the same input.
REGEX_BOUND_S = 1.0


@pytest.fixture(scope="module")
def config() -> Config:
    """pcapdaemon's sample config: eth0 = main, public; lo = local."""
    return load_config(DATA / "pcapdaemon.toml", hostname=HOST)


@pytest.fixture(scope="module")
def seed_message() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "pcapdaemon_message.json").read_text())
    return data


def body(**fields: Any) -> bytes:
    """A valid minimal request with `fields` merged in (None removes a field)."""
    data: dict[str, Any] = {"node": "any", "interface": ["lo"]}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def with_raw(field: str, json_text: str) -> str:
    """A valid minimal request plus `field` holding `json_text` exactly as written."""
    return '{"node": "any", "interface": "lo", ' + json.dumps(field) + ": " + json_text + "}"


def rejected(raw: bytes | str, config: Config) -> str:
    with pytest.raises(RequestError) as info:
        parse_request(raw, config)
    return str(info.value)


# --- pcapdaemon's example message ------------------------------------------------


def test_seed_message_as_printed_breaks_its_own_node_rule(
    config: Config, seed_message: dict[str, Any]
) -> None:
    """The README's example lists every field, node and nodere both, which its
    own rules forbid ("Use either node or nodere but not both")."""
    raw = (DATA / "pcapdaemon_message.json").read_bytes()
    assert b"\t" in raw  # kept verbatim
    assert rejected(raw, config) == "node and nodere are exclusive: send one of them"
    one_node = dict(seed_message, nodere=None)
    assert rejected(json.dumps(one_node), config) == (
        "interface and alias are exclusive: send one of them"
    )


@pytest.mark.parametrize(
    ("drop", "node", "nodere", "interfaces", "aliases"),
    [
        (("nodere", "alias"), "node name", None, ("bond1", "bond2"), ()),
        (("nodere", "interface"), "node name", None, (), ("local", "public")),
        (("node", "interface"), None, "node regex", (), ("local", "public")),
        (("node", "alias"), None, "node regex", ("bond1", "bond2"), ()),
    ],
)
def test_seed_message_parses_every_field(
    config: Config,
    seed_message: dict[str, Any],
    drop: tuple[str, str],
    node: str | None,
    nodere: str | None,
    interfaces: tuple[str, ...],
    aliases: tuple[str, ...],
) -> None:
    message = {k: v for k, v in seed_message.items() if k not in drop}
    request = parse_request(json.dumps(message).encode(), config)
    assert (request.node, request.nodere) == (node, nodere)
    assert (request.interfaces, request.aliases) == (interfaces, aliases)
    assert request.tags == ("blah", "tagme", "stuff")
    assert request.bpf == "dst ip 10.0.0.1"
    assert request.customer == "importantcustomer"
    assert (request.snap, request.packets, request.alertid) == (1500, 50, 655443)
    assert (request.timeout, request.duration, request.bytes) == (15, 60, 1000)
    assert request.packetdebug is False
    assert (request.folder, request.bucket, request.acl) == ("myfolder", "mybucket", "public-read")
    # `"encryption": false` leaves the site's setting, as in pcapdaemon.
    assert (request.region, request.endpoint, request.encryption) == (
        "us-east-1",
        "s3.amazonaws.com",
        None,
    )
    assert request.format == "pcap"
    assert request.warnings == ()
    assert len(request.id) == 32 and int(request.id, 16) >= 0  # generated uuid4 hex


def test_seed_aliases_resolve_through_the_sample_config(
    config: Config, seed_message: dict[str, Any]
) -> None:
    message = {k: v for k, v in seed_message.items() if k not in ("nodere", "interface")}
    request = parse_request(json.dumps(message), config)
    assert resolve_interfaces(request, config, {"lo", "eth0"}) == (("lo", "eth0"), ())


def test_generated_ids_differ_and_given_id_is_kept(config: Config) -> None:
    first, second = parse_request(body(), config), parse_request(body(), config)
    assert first.id != second.id
    assert parse_request(body(id="req-1.a:b_c"), config).id == "req-1.a:b_c"


def test_defaults_come_from_config(config: Config) -> None:
    request = parse_request(body(), config)
    # The sample's snaplength, maxpackets, maxbytes, defaulttimeout, and (as in
    # pcapdaemon, the sample having no defaultduration) maxduration.
    assert (request.snap, request.packets, request.bytes) == (500, 50_000, 100_000_000)
    assert (request.duration, request.timeout, request.format) == (3600, 10, "pcap")
    other = parse_config(
        {"general": {"snaplength": 96, "maxpackets": 7, "defaulttimeout": 3, "format": "pcapng"}},
        HOST,
    )
    request = parse_request(body(), other)
    assert (request.snap, request.packets, request.timeout, request.format) == (96, 7, 3, "pcapng")
    assert (request.bpf, request.tags, request.alertid, request.reply_to) == ("", (), None, None)
    assert (request.packetdebug, request.logrequest, request.encryption) == (False, False, None)


# --- node / nodere, interface / alias ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"node": None}, "exactly one of node and nodere is required"),
        ({"nodere": "web"}, "node and nodere are exclusive: send one of them"),
        ({"interface": None}, "exactly one of interface and alias is required"),
        ({"alias": ["local"]}, "interface and alias are exclusive: send one of them"),
        ({"node": ""}, "exactly one of node and nodere is required"),
        ({"node": None, "nodere": ""}, "exactly one of node and nodere is required"),
        ({"node": 5}, "node: expected a string, got 5"),
        ({"node": None, "nodere": ["web"]}, 'nodere: expected a string, got ["web"]'),
        ({"node": "n" * 254}, "node: 254 characters; the limit is 253"),
        (
            {"node": None, "nodere": "a" * (MAX_NODERE_LEN + 1)},
            f"nodere: {MAX_NODERE_LEN + 1} characters; the limit is {MAX_NODERE_LEN}",
        ),
        ({"interface": []}, "exactly one of interface and alias is required"),
        ({"interface": None, "alias": []}, "exactly one of interface and alias is required"),
        ({"interface": ""}, "exactly one of interface and alias is required"),
        ({"interface": 7}, "interface: expected a non-empty list of names, got 7"),
        ({"interface": {"lo": 1}}, 'interface: expected a non-empty list of names, got {"lo": 1}'),
        (
            {"interface": ["lo", 3]},
            f"interface: 3 is not a valid name ({REQUEST_IFACE_RULE})",
        ),
        (
            {"interface": [f"e{i}" for i in range(MAX_INTERFACES + 1)]},
            f"interface: {MAX_INTERFACES + 1} names; the limit is {MAX_INTERFACES}",
        ),
    ],
)
def test_node_and_interface_rules(config: Config, fields: dict[str, Any], message: str) -> None:
    assert rejected(body(**fields), config) == message


def test_single_string_is_a_list_of_one_and_duplicates_collapse(config: Config) -> None:
    assert parse_request(body(interface="eth0"), config).interfaces == ("eth0",)
    request = parse_request(body(interface=None, alias="local"), config)
    assert (request.interfaces, request.aliases) == ((), ("local",))
    assert parse_request(body(interface=["lo", "eth0", "lo"]), config).interfaces == ("lo", "eth0")


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "capture.pcap/",
        "/tmp/x.pcap",
        "a/b",
        "lo\x00",
        "eth 0",
        "eth0\t",
        "eth\u20000",  # EN QUAD: whitespace too
        ".",
        "..",
        "x" * 33,
        "",
    ],
)
def test_interface_names_that_could_be_paths_are_rejected(config: Config, name: str) -> None:
    """pypcap opens a *file* named like the interface if one exists. (An alias
    is only matched against the config's, so it is no path: its own rule.)"""
    assert rejected(body(interface=[name]), config) == (
        f"interface: {json.dumps(name)} is not a valid name ({REQUEST_IFACE_RULE})"
    )


@pytest.mark.parametrize("name", ["x" * 16, "\u00e9" * 8, "enp0s31f6-longname20", "x" * 32])
def test_names_too_long_for_linux_are_skipped_not_refused(config: Config, name: str) -> None:
    """Linux's IFNAMSIZ is 16 with the NUL, so no node has such a device; but a
    fleet's request naming one still captures on the names a node has."""
    request = parse_request(body(interface=["lo", name]), config)
    assert resolve_interfaces(request, config, {"lo"}) == (
        ("lo",),
        (f"interface {name!r}: no such device on this node",),
    )


@pytest.mark.parametrize(
    "name",
    ["eth0", "eth0.100", "enp0s25", "bond0:1", "veth-a@if3", "any", "x" * 15,
     # Linux allows them (dev_valid_name), findalldevs() lists them
     "tap#1", "wg+home", "v=100", "\u00e90", "br-lan[2]", "\u00e9" * 7,
     # libpcap's pseudo-devices, bluetooth-monitor past 15 bytes
     "nflog", "dbus-system", "usbmon0", "bluetooth-monitor"],
)  # fmt: skip
def test_real_interface_names_are_accepted(config: Config, name: str) -> None:
    assert parse_request(body(interface=[name]), config).interfaces == (name,)


# pcapdaemon put any string in its alias map and matched a request's exactly.
ODD_ALIASES = ["local", "public facing", "", "uplink/1", "..", "a,b", "a](missing)",
               "tap#1", "\u00e9-edge", "\u00a0x", "a" * MAX_TEXT_LEN]  # fmt: skip


def alias_config(*aliases: str) -> Config:
    interfaces = [{"name": "lo", "alias": list(aliases)}]
    return parse_config({"general": {"writelocal": True}, "interface": interfaces}, "node1")


@pytest.mark.parametrize("alias", ODD_ALIASES)
def test_any_clean_alias_selects_its_interface_exactly(alias: str) -> None:
    """An alias reaches only logs, results, tags and the heartbeat (never a BPF
    or a path), so a pcapdaemon config's alias loads as it is, with no
    warning, and a request naming it captures there."""
    config = alias_config(alias)
    assert config.warnings == ()
    request = parse_request(body(interface=None, alias=[alias]), config)
    assert resolve_interfaces(request, config, {"lo"}) == (("lo",), ())
    unknown = (alias + "x")[-MAX_TEXT_LEN:]  # differs by its last character
    other = parse_request(body(interface=None, alias=[unknown]), config)
    with pytest.raises(RequestError, match=r"^alias: none of .* exists on this node"):
        resolve_interfaces(other, config, {"lo"})


def test_a_mixed_alias_list_captures_once_on_the_interface() -> None:
    """The review's case: pcapdaemon captured on lo for both aliases, once."""
    config = alias_config("local", "public facing")
    request = parse_request(body(interface=None, alias=["local", "public facing"]), config)
    assert resolve_interfaces(request, config, {"lo"}) == (("lo",), ())


@pytest.mark.parametrize("alias", ["x" * 33, "public facing", ".."])
def test_an_alias_this_node_lacks_is_skipped(alias: str) -> None:
    config = alias_config("local")
    request = parse_request(body(interface=None, alias=["local", alias]), config)
    assert resolve_interfaces(request, config, {"lo"}) == (
        ("lo",), (f"alias {alias!r}: not configured on this node",),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("alias", "why"),
    [
        ("pub\tlic", "holds a control character U+0009 at character 3"),
        ("x\u202eevil", "holds a format character U+202E at character 1"),
        ("\u200b", "holds a format character U+200B at character 0"),
        ("a\u2028b", "holds a line separator U+2028 at character 1"),
        ("a\u2029b", "holds a paragraph separator U+2029 at character 1"),
        ("lo\ud800", "holds a lone surrogate (not UTF-8 text) U+D800 at character 2"),
        ("a" * (MAX_TEXT_LEN + 1),
         f"is {MAX_TEXT_LEN + 1} characters; the limit is {MAX_TEXT_LEN}"),
    ],
)  # fmt: skip
def test_an_alias_that_is_not_clean_text_is_rejected(config: Config, alias: str, why: str) -> None:
    """What a terminal or log acts on or hides, and more than MAX_TEXT_LEN."""
    assert rejected(body(interface=None, alias=["local", alias]), config) == (
        f"alias: {show(alias)} {why}"
    )
    assert rejected(body(interface=None, alias=["local", 7]), config) == (
        f"alias: 7 is not a string ({ALIAS_RULE})"
    )


# --- numbers: strict JSON integers, positive, capped ----------------------------------

NUMBER_CAPS = [
    ("packets", "maxpackets", 50_000),
    ("bytes", "maxbytes", 100_000_000),
    ("duration", "maxduration", 3600),
    ("timeout", "maxtimeout", 3600),
]
NUMBER_FIELDS = ["snap", *(name for name, _, _ in NUMBER_CAPS)]


@pytest.mark.parametrize(("field", "cap_name", "cap"), NUMBER_CAPS)
def test_over_a_cap_names_the_cap(config: Config, field: str, cap_name: str, cap: int) -> None:
    assert (
        rejected(body(**{field: cap + 1}), config) == f"{field}={cap + 1} exceeds {cap_name}={cap}"
    )
    huge = 10**30
    assert rejected(body(**{field: huge}), config) == f"{field}={huge} exceeds {cap_name}={cap}"
    assert getattr(parse_request(body(**{field: cap}), config), field) == cap


def test_the_style_guide_example(config: Config) -> None:
    assert rejected(body(packets=900_000), config) == "packets=900000 exceeds maxpackets=50000"


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("true", "true"),
        ("false", "false"),
        ("1.5", "1.5"),
        ("1.0", "1.0"),
        ("1e3", "1000.0"),
        ('"50"', '"50"'),
        ("[50]", "[50]"),
        ('{"n": 1}', '{"n": 1}'),
    ],
)
def test_numbers_must_be_json_integers(config: Config, field: str, raw: str, shown: str) -> None:
    text = with_raw(field, raw)
    assert rejected(text, config) == f"{field}: expected a JSON integer, got {shown}"


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize("value", [-1, -(10**30)])
def test_negative_is_rejected(config: Config, field: str, value: int) -> None:
    assert rejected(body(**{field: value}), config) == f"{field}={value}: must be positive"


def test_zero_packets_is_rejected_as_pcapdaemon_rejects_it(config: Config) -> None:
    assert rejected(body(packets=0), config) == "packets=0: must be positive"


@pytest.mark.parametrize("value", [1, 23])
def test_bytes_must_hold_the_file_header(config: Config, value: int) -> None:
    assert rejected(body(bytes=value), config) == (
        f"bytes={value}: cannot hold the 24-byte pcap file header"
    )
    assert parse_request(body(bytes=24), config).bytes == 24


def test_snap_over_libpcaps_maximum_is_clamped_with_a_warning(config: Config) -> None:
    request = parse_request(body(snap=MAX_SNAPLENGTH + 1), config)
    assert request.snap == MAX_SNAPLENGTH
    assert request.warnings == (
        f"snap={MAX_SNAPLENGTH + 1} exceeds libpcap's maximum; clamped to {MAX_SNAPLENGTH}",
    )
    huge = parse_request(body(snap=10**30), config)
    assert (huge.snap, len(huge.warnings)) == (MAX_SNAPLENGTH, 1)
    exact = parse_request(body(snap=MAX_SNAPLENGTH), config)
    assert (exact.snap, exact.warnings) == (MAX_SNAPLENGTH, ())


def test_caps_follow_the_config() -> None:
    small = parse_config(
        {"general": {"maxpackets": 10, "maxbytes": 5000, "maxduration": 7, "maxtimeout": 3}},
        HOST,
    )
    assert rejected(body(packets=11), small) == "packets=11 exceeds maxpackets=10"
    assert rejected(body(bytes=5001), small) == "bytes=5001 exceeds maxbytes=5000"
    assert rejected(body(duration=8), small) == "duration=8 exceeds maxduration=7"
    assert rejected(body(timeout=4), small) == "timeout=4 exceeds maxtimeout=3"
    request = parse_request(body(), small)
    assert (request.packets, request.bytes, request.duration, request.timeout) == (10, 5000, 7, 3)


def test_a_number_too_long_to_convert_is_not_json(config: Config) -> None:
    message = rejected(with_raw("packets", "9" * 5000), config)
    assert message.startswith("request is not valid JSON: ")


# --- not JSON, not an object, size, constants, nesting -----------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "request is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b"capture lo please",
            "request is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        (
            b'{"node": "any",',
            "request is not valid JSON: Expecting property name enclosed in "
            "double quotes: line 1 column 16 (char 15)",
        ),
        (b"[]", "request must be a JSON object, got list"),
        (b'[{"node": "any", "interface": "lo"}]', "request must be a JSON object, got list"),
        (b'"node any"', "request must be a JSON object, got str"),
        (b"42", "request must be a JSON object, got int"),
        (b"4.2", "request must be a JSON object, got float"),
        (b"null", "request must be a JSON object, got NoneType"),
        (b"true", "request must be a JSON object, got bool"),
    ],
)
def test_not_json_or_not_an_object(config: Config, raw: bytes, message: str) -> None:
    assert rejected(raw, config) == message


def test_invalid_utf8_is_not_json(config: Config) -> None:
    assert rejected(b'{"node": "\xff\xfe"}', config).startswith("request is not valid JSON: ")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_numbers(config: Config, constant: str) -> None:
    raw = with_raw("packets", constant)
    assert rejected(raw, config) == f"request is not valid JSON: {constant} is not a JSON number"


def test_one_megabyte_message_is_rejected_by_size(config: Config) -> None:
    raw = body(customer="x" * (1 << 20))
    assert rejected(raw, config) == (
        f"request is {len(raw)} bytes; the limit is 65536 (general.max_request_bytes)"
    )


def test_size_limit_follows_config() -> None:
    small = parse_config({"general": {"max_request_bytes": 1024}}, HOST)
    raw = body(customer="x" * 1100)
    assert rejected(raw, small) == (
        f"request is {len(raw)} bytes; the limit is 1024 (general.max_request_bytes)"
    )


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_rejected_not_a_crash(config: Config, opener: str) -> None:
    raw = '{"node": "any", "interface": "lo", "x": ' + opener * 10_000
    assert len(raw.encode()) < config.general.max_request_bytes
    assert rejected(raw, config).startswith("request is not valid JSON: ")


def test_deep_but_balanced_nesting_in_an_unknown_field(config: Config) -> None:
    raw = '{"node": "any", "interface": "lo", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert len(raw) < config.general.max_request_bytes
    assert rejected(raw, config).startswith("request is not valid JSON: ")


# --- nodere --------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["(a*)*b", "(a|a)*c", "(x+x+)+y", "(.*a){12}"])
def test_pathological_regex_is_fast(config: Config, pattern: str) -> None:
    start = time.monotonic()
    matched = addressed_to(decode_body(body(node=None, nodere=pattern), 65536), "a" * 5000)
    assert time.monotonic() - start < REGEX_BOUND_S
    assert matched is (pattern == "(.*a){12}")


@pytest.mark.parametrize("pattern", ["(", "web[", "*web", "a{2,1}", "(?<!a)b"])
def test_invalid_regex_is_rejected(config: Config, pattern: str) -> None:
    message = rejected(body(node=None, nodere=pattern), config)
    assert message.startswith(f"nodere: {pattern!r} is not a valid regular expression: ")


def test_backreferences_are_rejected_as_re2_cannot_run_them(config: Config) -> None:
    message = rejected(body(node=None, nodere=r"(a)\1"), config)
    assert message.startswith("nodere: '(a)\\\\1' is not a valid regular expression: ")


@pytest.mark.parametrize(
    ("nodere", "node", "matches"),
    [
        ("web1", "web10", True),  # a search, as pcapdaemon's regexp.MatchString
        ("web1", "xweb1y", True),
        ("^web1$", "web10", False),
        ("^web[0-9]+$", "web10", True),
        ("db", "web10", False),
        ("WEB", "web10", False),
        ("(?i)WEB", "web10", True),
    ],
)
def test_nodere_is_a_search(nodere: str, node: str, matches: bool) -> None:
    assert addressed_to(decode_body(body(node=None, nodere=nodere), 65536), node) is matches


@pytest.mark.parametrize(
    ("node", "host", "matches"),
    [
        ("any", "web10", True),
        ("any", "db1", True),
        ("web10", "web10", True),
        ("web1", "web10", False),
        ("WEB10", "web10", False),
    ],
)
def test_node_is_exact_or_any(node: str, host: str, matches: bool) -> None:
    assert addressed_to(decode_body(body(node=node), 65536), host) is matches


# --- id, format, lookback, reply_to -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", '""'),
        ("has space", '"has space"'),
        ("slash/id", '"slash/id"'),
        ("x" * 129, '"' + "x" * 79 + "..."),  # cut at 80 characters, said so
        ("line\n", '"line\\n"'),
        (5, "5"),
        (True, "true"),
        (["a"], '["a"]'),
    ],
)
def test_bad_id(config: Config, value: Any, shown: str) -> None:
    assert rejected(body(id=value), config) == f"id: {shown} is not 1-128 of A-Z a-z 0-9 . _ : -"


def test_format(config: Config) -> None:
    assert parse_request(body(format="pcapng"), config).format == "pcapng"
    assert parse_request(body(format="pcap"), config).format == "pcap"
    ng = parse_config({"general": {"format": "pcapng"}}, HOST)
    assert parse_request(body(), ng).format == "pcapng"
    assert rejected(body(format="erf"), config) == "format='erf': expected one of pcap, pcapng"
    assert rejected(body(format="PCAP"), config) == "format='PCAP': expected one of pcap, pcapng"
    assert rejected(body(format=1), config) == "format: expected a string, got 1"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("30", 'lookback: expected a JSON integer, got "30"'),
        (1.5, "lookback: expected a JSON integer, got 1.5"),
        (True, "lookback: expected a JSON integer, got true"),
        (-1, "lookback=-1: must be positive"),
        (301, "lookback=301 exceeds maxlookback=300"),
        (10**30, f"lookback={10**30} exceeds maxlookback=300"),
    ],
)
def test_bad_lookback_is_rejected(config: Config, value: Any, error: str) -> None:
    raw = json.dumps({"node": "any", "interface": "lo", "lookback": value})
    assert rejected(raw, config) == error


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), (0, 0), (None, 0), (300, 300)])
def test_lookback_is_read(config: Config, value: Any, seconds: int) -> None:
    raw = json.dumps({"node": "any", "interface": "lo", "lookback": value})
    assert parse_request(raw, config).lookback == seconds


def test_lookback_needs_a_ring_that_holds_it() -> None:
    config = parse_config({"interface": [{"name": "eth0"}, {"name": "eth1", "lookback": 20}]}, HOST)
    ask = parse_request(body(interface=["eth0", "eth1"], lookback=30), config)
    assert lookback_problem(ask, "eth0", config) == (
        "lookback: interface 'eth0' keeps no lookback ring (no [[interface]] lookback)"
    )
    assert lookback_problem(ask, "eth1", config) == (
        "lookback=30 exceeds what the ring on eth1 holds (interface[1].lookback=20)"
    )
    assert lookback_problem(replace(ask, lookback=20), "eth1", config) is None
    assert lookback_problem(replace(ask, lookback=0), "eth0", config) is None


def test_reply_to(config: Config) -> None:
    assert parse_request(body(reply_to="pcapd-reply-42"), config).reply_to == "pcapd-reply-42"
    channel_rule = "reply_to: expected 1-256 printable characters without spaces"
    assert rejected(body(reply_to="has space"), config) == channel_rule
    assert rejected(body(reply_to=""), config) == channel_rule
    assert rejected(body(reply_to="tab\there"), config) == (
        'reply_to: "tab\\there" holds a control character U+0009 at character 3'
    )
    assert rejected(body(reply_to="x" * 257), config) == channel_rule
    assert rejected(body(reply_to=7), config) == "reply_to: expected a string, got 7"


# --- tags, alertid, text fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("blah,tagme,stuff", ("blah", "tagme", "stuff")),
        (" a , b ,,c, ", ("a", "b", "c")),
        (["a", "b c"], ("a", "b c")),
        ([], ()),
        ("", ()),
        ("single", ("single",)),
    ],
)
def test_tags_string_or_list(config: Config, tags: Any, expected: tuple[str, ...]) -> None:
    assert parse_request(body(tags=tags), config).tags == expected


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["a", 1], 'tags: expected a string, got ["a", 1]'),
        (5, "tags: expected a string, got 5"),
        ("t" * (MAX_TEXT_LEN + 1), f"tags: {MAX_TEXT_LEN + 1} characters; the limit is 1024"),
        (["t" * 600, "u" * 600], "tags: 1201 characters; the limit is 1024"),
    ],
)
def test_bad_tags(config: Config, tags: Any, message: str) -> None:
    assert rejected(body(tags=tags), config) == message


@pytest.mark.parametrize("alertid", [655443, -3, "INC-42", "x" * 128])
def test_alertid_int_or_string(config: Config, alertid: int | str) -> None:
    assert parse_request(body(alertid=alertid), config).alertid == alertid


def test_alertid_zero_is_none_as_pcapdaemon_omits_it(config: Config) -> None:
    assert parse_request(body(alertid=0), config).alertid is None


@pytest.mark.parametrize(
    ("alertid", "shown"),
    [
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        (["a"], '["a"]'),
        ({"a": 1}, '{"a": 1}'),
        ("x" * 129, '"' + "x" * 79 + "..."),
    ],
)
def test_bad_alertid(config: Config, alertid: Any, shown: str) -> None:
    assert rejected(body(alertid=alertid), config) == (
        f"alertid: expected an integer or a short string, got {shown}"
    )


@pytest.mark.parametrize(
    "field", ["customer", "bpf", "folder", "bucket", "acl", "region", "endpoint", "sig", "kid"]
)
def test_text_fields_must_be_strings(config: Config, field: str) -> None:
    assert rejected(body(**{field: 12}), config) == f"{field}: expected a string, got 12"
    assert rejected(body(**{field: [1]}), config) == f"{field}: expected a string, got [1]"


def test_bpf_has_its_own_length_limit(config: Config) -> None:
    assert parse_request(body(bpf="x" * 4096), config).bpf == "x" * 4096
    assert rejected(body(bpf="x" * 4097), config) == "bpf: 4097 characters; the limit is 4096"
    assert rejected(body(customer="c" * 1025), config) == (
        "customer: 1025 characters; the limit is 1024"
    )


@pytest.mark.parametrize("field", ["packetdebug", "logrequest", "encryption"])
def test_flags_must_be_booleans(config: Config, field: str) -> None:
    assert rejected(body(**{field: 1}), config) == f"{field}: expected true or false, got 1"
    assert rejected(body(**{field: "true"}), config) == (
        f'{field}: expected true or false, got "true"'
    )


def test_ts_must_be_an_integer(config: Config) -> None:
    assert parse_request(body(ts=1_700_000_000), config).ts == 1_700_000_000
    assert rejected(body(ts=1.5), config) == "ts: expected a JSON integer (Unix seconds), got 1.5"
    assert rejected(body(ts=True), config) == (
        "ts: expected a JSON integer (Unix seconds), got true"
    )


# --- packetdebug, unknown fields -------------------------------------------------------


def test_packetdebug_only_where_config_allows(config: Config) -> None:
    assert config.general.packetdebug is False
    request = parse_request(body(packetdebug=True), config)
    assert request.packetdebug is False
    assert request.warnings == (
        "packetdebug: not allowed by this node's config (general.packetdebug)",
    )
    allowed = parse_config({"general": {"packetdebug": True}}, HOST)
    request = parse_request(body(packetdebug=True), allowed)
    assert (request.packetdebug, request.warnings) == (True, ())
    assert parse_request(body(packetdebug=False), allowed).packetdebug is False


def test_unknown_fields_are_warnings(config: Config) -> None:
    request = parse_request(body(priority=5, Nodes="x", bpf="icmp"), config)
    assert request.warnings == (
        "Nodes: unknown field, ignored",
        "priority: unknown field, ignored",
    )
    assert request.bpf == "icmp"


def test_logrequest_and_s3_fields(config: Config) -> None:
    request = parse_request(
        body(logrequest=True, bucket="b", folder="f", encryption=True, sig="ab", kid="k1"), config
    )
    assert (request.logrequest, request.bucket, request.folder, request.encryption) == (
        True,
        "b",
        "f",
        True,
    )
    assert (request.sig, request.kid) == ("ab", "k1")


def test_request_id_travels_with_errors_after_the_id_is_known(config: Config) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body(id="r-7", packets=0), config)
    assert info.value.request_id == "r-7"
    with pytest.raises(RequestError) as info:
        parse_request(b"[]", config)
    assert info.value.request_id is None


def test_request_is_frozen(config: Config) -> None:
    request = parse_request(body(), config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.packets = 10**9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"node": None}, "exactly one of node and nodere"),
        ({"nodere": "x"}, "exactly one of node and nodere"),
        ({"interfaces": ()}, "one of interfaces and aliases"),
        ({"packets": 0}, "packets must be positive"),
        ({"bytes": -1}, "bytes must be positive"),
    ],
)
def test_capture_request_validates_on_construction(changes: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "id": "r",
        "node": "any",
        "nodere": None,
        "interfaces": ("lo",),
        "aliases": (),
        "bpf": "",
        "snap": 1,
        "packets": 1,
        "bytes": 100,
        "duration": 1,
        "timeout": 1,
        "format": "pcap",
    }
    fields.update(changes)
    with pytest.raises(ValueError, match=message):
        CaptureRequest(**fields)


# --- resolve_interfaces ---------------------------------------------------------------


def test_missing_interfaces_are_skipped_with_warnings(config: Config) -> None:
    request = parse_request(body(interface=["eth0", "enp0s25", "lo"]), config)
    assert resolve_interfaces(request, config, {"lo", "eth0"}) == (
        ("eth0", "lo"),
        ("interface 'enp0s25': no such device on this node",),
    )


def test_all_interfaces_missing_names_them(config: Config) -> None:
    request = parse_request(body(id="r2", interface=["bond1", "bond2"]), config)
    with pytest.raises(RequestError) as info:
        resolve_interfaces(request, config, {"lo"})
    assert str(info.value) == (
        "interface: none of ['bond1', 'bond2'] exists on this node "
        "(interface 'bond1': no such device on this node; "
        "interface 'bond2': no such device on this node)"
    )
    assert info.value.request_id == "r2"


def test_aliases_resolve_through_interface_tables(config: Config) -> None:
    request = parse_request(body(interface=None, alias=["public", "main", "local"]), config)
    # eth0 carries both public and main: captured once.
    assert resolve_interfaces(request, config, {"lo", "eth0"}) == (("eth0", "lo"), ())
    assert resolve_interfaces(request, config, {"lo"}) == (
        ("lo",),
        ("interface 'eth0': no such device on this node",),
    )


def test_unknown_alias(config: Config) -> None:
    request = parse_request(body(interface=None, alias=["local", "dmz"]), config)
    assert resolve_interfaces(request, config, {"lo"}) == (
        ("lo",),
        ("alias 'dmz': not configured on this node",),
    )
    only_unknown = parse_request(body(interface=None, alias="dmz"), config)
    with pytest.raises(RequestError) as info:
        resolve_interfaces(only_unknown, config, {"lo", "eth0"})
    assert str(info.value) == (
        "alias: none of ['dmz'] exists on this node (alias 'dmz': not configured on this node)"
    )


def test_alias_without_interface_tables() -> None:
    bare = parse_config({}, HOST)
    request = parse_request(body(interface=None, alias="local"), bare)
    with pytest.raises(RequestError, match=r"alias: none of \['local'\] exists on this node"):
        resolve_interfaces(request, bare, {"lo"})


def test_a_file_named_like_an_interface_is_never_used(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pypcap would open ./eth9 as a savefile; only the host's devices count."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eth9").write_bytes(b"\xd4\xc3\xb2\xa1")  # a pcap magic number
    devices = available_devices()  # what the daemon passes: pcap's device list
    assert "lo" in devices and "eth9" not in devices
    request = parse_request(body(interface=["eth9", "lo"]), config)
    assert resolve_interfaces(request, config, devices) == (
        ("lo",),
        ("interface 'eth9': no such device on this node",),
    )
    only_file = parse_request(body(interface="eth9"), config)
    with pytest.raises(RequestError, match="none of \\['eth9'\\] exists"):
        resolve_interfaces(only_file, config, devices)


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_names_are_rejected(config: Config, name: str) -> None:
    """ "." and ".." are directories, never interfaces (Linux forbids both
    names). As aliases they are only matched against the config's."""
    assert rejected(body(interface=[name]), config).startswith(f"interface: {json.dumps(name)} ")


def test_size_limit_counts_bytes_not_characters(config: Config) -> None:
    """A str body is measured as UTF-8 on the wire, not as characters."""
    text = with_raw("x", '"' + "é" * 40_000 + '"')
    size = len(text.encode())
    assert len(text) < 65536 < size
    assert rejected(text, config) == (
        f"request is {size} bytes; the limit is 65536 (general.max_request_bytes)"
    )


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("a**", "bad repetition operator: **"), ("a{1001}", "invalid repetition size: {1001}")],
)
def test_invalid_regex_reason_is_text_not_bytes_repr(
    config: Config, pattern: str, reason: str
) -> None:
    assert rejected(body(node=None, nodere=pattern), config) == (
        f"nodere: {pattern!r} is not a valid regular expression: {reason}"
    )


def test_invalid_regex_writes_nothing_to_stderr(
    config: Config, capfd: pytest.CaptureFixture[str]
) -> None:
    """RE2 logs parse errors to fd 2 itself, bypassing pcapd's one-line log format."""
    capfd.readouterr()
    rejected(body(node=None, nodere="web["), config)
    assert capfd.readouterr().err == ""


def test_request_round_trips_through_plain_json_and_drops_unknown_fields(config: Config) -> None:
    message = {"node": HOST, "interface": ["lo", "eth0"], "bpf": "udp", "tags": ["a", "b"]}
    request = parse_request(json.dumps(message), config)
    stored = json.loads(json.dumps(request.to_dict()))  # what a spool sidecar holds
    assert stored["interfaces"] == ["lo", "eth0"] and stored["tags"] == ["a", "b"]
    assert CaptureRequest.from_dict(stored) == request
    assert CaptureRequest.from_dict({**stored, "added_later": 1}) == request


@pytest.mark.parametrize(("bad", "shown"), [("\ud800", '"\\ud800"'), (5, "5"), (["a"], '["a"]')])
def test_a_spooled_reply_to_the_parser_would_refuse_is_dropped_and_said(
    config: Config, bad: object, shown: str
) -> None:
    """A spool entry from before reply_to was checked, or edited by hand:
    read back, its request has no reply_to (a result could not be sent to
    it) and says why in `warnings`; the rest of it is kept, so its capture
    is still delivered."""
    request = parse_request(json.dumps({"node": HOST, "interface": "lo"}), config)
    stored = {**json.loads(json.dumps(request.to_dict())), "reply_to": bad}
    back = CaptureRequest.from_dict(stored)
    assert back.reply_to is None and back.interfaces == ("lo",)
    assert back.warnings == (
        f"reply_to: {shown} dropped: "
        + ("expected 1-256 printable characters without spaces" if isinstance(bad, str)
           else f"expected a string, got {shown}"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="reply_to"):
        dataclasses.replace(request, reply_to=bad)  # type: ignore[arg-type]

"""pcapdaemon's senders, unchanged: the messages of its README and its tests/*.json,
and what a Go client built on its message struct sends, each with the outcome
pcapdaemon's code gives (read from its capture.go and redis.go) beside pcapd's.
Where they differ, the difference is deliberate and says why; README.md lists
these under "Differences from pcapdaemon"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from pcapd.core.config import MAX_SNAPLENGTH, Config, load_config
from pcapd.core.request import (
    RequestError,
    addressed_to,
    decode_body,
    parse_fields,
    parse_request,
    resolve_interfaces,
)
from tests.pcapd.core.test_request import DATA
from uploaders.policy import check_overrides

HOST = "node name"  # the README's own node name, so its message is for this host
DEVICES = {"lo", "eth0"}  # a host without pcapdaemon's example enp0s25 or bond1
# The sample config's defaults: snaplength 500, maxbytes, maxduration, defaulttimeout.
DEFAULTS = {"snap": 500, "bytes": 100_000_000, "duration": 3600, "timeout": 10}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(DATA / "pcapdaemon.toml", hostname=HOST)


def capture(interfaces: str, packets: int, **given: int | str) -> str:
    """An outcome: what is captured where, with every bound."""
    values = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    flags = "".join(f" {flag}" for flag in ("packetdebug", "logrequest") if flag in given)
    return (
        f"capture {interfaces} packets={packets} snap={values['snap']} bytes={values['bytes']} "
        f"duration={values['duration']} timeout={values['timeout']}{flags}"
    )


NOT_CAPTURED = "not captured"
SILENT = "not captured: not this node"


def outcome(raw: str, config: Config) -> tuple[str, str]:
    """(outcome, what pcapd tells the sender) for one message, as the controller
    runs it: node match, parse, S3 policy, interfaces."""
    try:
        data = decode_body(raw, config.general.max_request_bytes)
        if not addressed_to(data, HOST):
            return SILENT, ""
        request = parse_fields(data, config)
        check_overrides(request, config.s3)
        interfaces, skipped = resolve_interfaces(request, config, DEVICES)
    except RequestError as exc:
        return NOT_CAPTURED, str(exc)
    flags = {"packetdebug": 1} if request.packetdebug else {}
    flags.update({"logrequest": 1} if request.logrequest else {})
    found = capture(
        "+".join(interfaces), request.packets, snap=request.snap, bytes=request.bytes,
        duration=request.duration, timeout=request.timeout, **flags,
    )  # fmt: skip
    return found, "; ".join(request.warnings + skipped)


README = (DATA / "pcapdaemon_message.json").read_text()


def readme_without(*names: str) -> str:
    return json.dumps({k: v for k, v in json.loads(README).items() if k not in names})


# pcapdaemon's tests/*.json, the bodies of their PUBLISH lines.
DURATION_TEST = (
    '{"bpf":"host 8.8.8.8","timeout":300,"duration":10,"customer":"blah","node":"any",'
    '"packets":100,"interface":["eth0","enp0s25"],"snap":1500,'
    '"tags":"networkipcount,iptype:prefix"}'
)
LOGREQ_TEST = DURATION_TEST.replace('"timeout":300,', '"timeout":300,"logrequest":true,')
PACKETDEBUG_TEST = DURATION_TEST.replace(
    '"bpf":"host 8.8.8.8",', '"bpf":"host 8.8.8.8","packetdebug":true,'
)
SIZE_TEST = (
    '{"bpf":"host 8.8.8.8","timeout":300,"duration":1000,"bytes":900,"customer":"blah",'
    '"node":"any","packets":1000,"interface":["eth0","enp0s25"],"snap":1500,'
    '"tags":"networkipcount,iptype:prefix"}'
)
MSG_JSON = (
    '{"node": "any", "interface": ["enp0s25"], "tags": "blah,tagme,stuff", "bpf": "port 22",'
    ' "customer": "importantcustomer", "snap": 1500, "packets": 25, "alertid": 655443,'
    ' "timeout": 15, "folder": "myfolder", "bucket": "mybucket", "acl": "public-read",'
    ' "region": "us-east-1", "endpoint": "s3.amazonaws.com", "encryption": true}'
)
PUBLISH_MSG = (
    '{"timeout":15,"interface":"eth0","node":"any","tags":"blah,tagme,stuff",'
    '"bpf":"tcp and port 22","customer":"importantcustomer","snap":1500,"alertid":655443,'
    '"packets":25}'
)
ALIAS_ONLY = readme_without("nodere", "interface", "bucket", "acl", "region", "endpoint")


@dataclass(frozen=True)
class Case:
    name: str
    message: str
    pcapdaemon: str  # what its code does with the message
    pcapd: str
    told: str = ""  # pcapd's error or warnings, exactly
    deliberate: str = ""  # why pcapd differs, where it does


CASES = [
    Case("README as printed", README,
         "not captured (log only: both node and nodere are set)", NOT_CAPTURED,
         "node and nodere are exclusive: send one of them"),
    Case("README, node and interface", readme_without("nodere", "alias"),
         "not captured (bond1, bond2 not on this host)", NOT_CAPTURED,
         "bucket='mybucket': this site does not allow that bucket (s3.allowed_buckets: none)"),
    Case("README, nodere and alias", readme_without("node", "interface"),
         "not captured ('node regex' does not match)", SILENT),
    Case("README, node and alias, with its S3 overrides", readme_without("nodere", "interface"),
         capture("lo+eth0", 50, snap=1500, bytes=1000, duration=60, timeout=15)
         + ", to bucket mybucket", NOT_CAPTURED,
         "bucket='mybucket': this site does not allow that bucket (s3.allowed_buckets: none)",
         "a message sends captures only where [s3] allows (allowed_buckets, ...)"),
    Case("README, node and alias, no S3 overrides", ALIAS_ONLY,
         capture("lo+eth0", 50, snap=1500, bytes=1000, duration=60, timeout=15),
         capture("lo+eth0", 50, snap=1500, bytes=1000, duration=60, timeout=15)),
    Case("tests/durationtest.json", DURATION_TEST,
         capture("eth0", 100, snap=1500, duration=10, timeout=300),
         capture("eth0", 100, snap=1500, duration=10, timeout=300),
         "interface 'enp0s25': no such device on this node"),
    Case("tests/logreqtest.json", LOGREQ_TEST,
         capture("eth0", 100, snap=1500, duration=10, timeout=300, logrequest=1),
         capture("eth0", 100, snap=1500, duration=10, timeout=300, logrequest=1),
         "interface 'enp0s25': no such device on this node"),
    Case("tests/packetdebug.json", PACKETDEBUG_TEST,
         capture("eth0", 100, snap=1500, duration=10, timeout=300, packetdebug=1),
         capture("eth0", 100, snap=1500, duration=10, timeout=300),
         "packetdebug: not allowed by this node's config (general.packetdebug); "
         "interface 'enp0s25': no such device on this node",
         "a message turns on packetdebug only where [general] packetdebug = true"),
    Case("tests/sizetest.json", SIZE_TEST,
         capture("eth0", 1000, snap=1500, bytes=900, duration=1000, timeout=300),
         capture("eth0", 1000, snap=1500, bytes=900, duration=1000, timeout=300),
         "interface 'enp0s25': no such device on this node"),
    Case("tests/msg.json", MSG_JSON, "not captured (enp0s25 not on this host)", NOT_CAPTURED,
         "bucket='mybucket': this site does not allow that bucket (s3.allowed_buckets: none)"),
    Case("publish.msg (interface as a string)", PUBLISH_MSG,
         "not captured (json: cannot unmarshal string into []string)",
         capture("eth0", 25, snap=1500, timeout=15), "",
         "a single name is read as a list of one, as pcapdaemon's first format had it"),
    Case("Go client, zero values", '{"node":"any","interface":["lo"],"snap":0,"packets":10}',
         capture("lo", 10), capture("lo", 10)),
    Case("other senders' zeros and empties",
         '{"node":"","nodere":"name$","interface":[],"alias":["local"],"packets":5,"snap":0,'
         '"bytes":0,"duration":0,"timeout":0,"alertid":0,"tags":"","customer":"","bucket":"",'
         '"folder":"","acl":"","region":"","endpoint":"","encryption":false}',
         capture("lo", 5), capture("lo", 5)),
    Case("Go client, packets not set", '{"node":"any","interface":["lo"],"snap":0,"packets":0}',
         "not captured (log only: packets must be set to between 1 and maxpackets)",
         NOT_CAPTURED, "packets=0: must be positive"),
    Case("no packets field at all", '{"node":"any","interface":["lo"]}',
         "not captured (log only: packets must be set to between 1 and maxpackets)",
         capture("lo", 50_000), "",
         "pcapdaemon's documented default applies: maxpackets"),
    Case("keys in another case", '{"Node":"any","INTERFACE":["lo"],"BPF":"icmp","Packets":5}',
         capture("lo", 5), capture("lo", 5)),
    Case("snap over libpcap's maximum", '{"node":"any","interface":["lo"],"packets":5,'
         '"snap":300000}',
         capture("lo", 5, snap=MAX_SNAPLENGTH), capture("lo", 5, snap=MAX_SNAPLENGTH),
         f"snap=300000 exceeds libpcap's maximum; clamped to {MAX_SNAPLENGTH}"),
    Case("bytes below a file header", '{"node":"any","interface":["lo"],"packets":5,"bytes":10}',
         capture("lo", 5, bytes=10) + ", file of one packet past 10 bytes", NOT_CAPTURED,
         "bytes=10: cannot hold the 24-byte pcap file header",
         "the file never exceeds bytes, and no file can be 10 bytes"),
    Case("negative timeout", '{"node":"any","interface":["lo"],"packets":5,"timeout":-5}',
         "not captured (the timer fires at once, no packet, no upload)", NOT_CAPTURED,
         "timeout=-5: must be positive"),
    Case("interface and alias both", '{"node":"any","interface":["lo"],"alias":["public"],'
         '"packets":5}',
         capture("lo", 5), NOT_CAPTURED,
         "interface and alias are exclusive: send one of them",
         "a request naming both is ambiguous; pcapdaemon silently ignored alias"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_pcapdaemon_messages(config: Config, case: Case) -> None:
    assert outcome(case.message, config) == (case.pcapd, case.told)
    # Not captured is not captured, whatever the reason; pcapd also says why.
    same = case.pcapdaemon == case.pcapd or (
        case.pcapd.startswith(NOT_CAPTURED) and case.pcapdaemon.startswith(NOT_CAPTURED)
    )
    assert same == (not case.deliberate), "a difference, and only one, says why it is deliberate"


# --- keys in any case -----------------------------------------------------------


def test_folded_keys_are_read_and_exact_keys_win(config: Config) -> None:
    request = parse_request('{"NODE":"db1","node":"any","Interface":"lo","pac\u212aets":7}', config)
    assert (request.node, request.interfaces, request.packets) == ("any", ("lo",), 7)
    assert request.warnings == ('"NODE": ignored, node is given',)
    last = parse_request('{"NODE":"db1","Node":"any","interface":"lo","\u017fnap":64}', config)
    assert (last.node, last.snap) == ("any", 64)
    assert last.warnings == ('"NODE": ignored, "Node" comes later',)


def test_pcapds_own_fields_are_exact_case(config: Config) -> None:
    request = parse_request('{"node":"any","interface":"lo","ID":"x","Format":"pcapng"}', config)
    assert (request.format, len(request.id)) == ("pcap", 32)
    assert request.warnings == ("Format: unknown field, ignored", "ID: unknown field, ignored")


@pytest.mark.parametrize(
    ("message", "matches"),
    [
        ({"Node": HOST}, True),
        ({"NODE": "db1"}, False),
        ({"node": "", "NodeRE": "^node"}, True),
        ({"node": "", "nodere": "^db"}, False),
        ({"nodere": "", "node": "db1"}, False),
    ],
)
def test_node_matching_reads_keys_and_empties_as_the_parser_does(
    config: Config, message: dict[str, Any], matches: bool
) -> None:
    data = {**message, "interface": ["lo"]}
    assert addressed_to(data, HOST) is matches
    parsed = parse_fields(data, config)  # and the parser agrees on which field names the node
    assert (parsed.node or parsed.nodere) == next(v for v in message.values() if v)

"""pcapd/core/request/ against poisonous input: lone surrogates, NULs and
control characters in every field, wrong types, huge values; then fuzzing
(Hypothesis, and a fast loop over 100k generated requests). Whatever comes in,
the parser answers a CaptureRequest whose text is clean, or a RequestError
naming the field; nothing else escapes it."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcapd.core.config import MAX_SNAPLENGTH, Config, load_config
from pcapd.core.fields import KNOWN_FIELDS, REQUEST_IFACE_RULE, text_problem
from pcapd.core.request import (
    CaptureRequest,
    RequestError,
    addressed_to,
    decode_body,
    parse_fields,
    parse_request,
)
from pcapd.pcapfile import pcapng_header
from pcapd.signing import canonical
from tests.pcapd.core.test_request import DATA, HOST, body, rejected

FUZZ_INPUTS = 100_000
FUZZ_CPU_BUDGET_S = 30.0  # 8-10 s of CPU here; generous, as the machine is shared

# A list of pairs, not a dict literal: linters cannot tell surrogate keys apart.
POISON_CHARS = dict(
    [
        ("\ud800", "a lone surrogate (not UTF-8 text) U+D800"),
        ("\udfff", "a lone surrogate (not UTF-8 text) U+DFFF"),
        ("\x00", "a control character U+0000"),
        ("\x1b", "a control character U+001B"),
        ("\x7f", "a control character U+007F"),
        ("\x85", "a control character U+0085"),
    ]
)
# Free-text fields, and what else the request needs for the field to be read.
TEXT_FIELDS: dict[str, dict[str, Any]] = {
    "node": {},
    "nodere": {"node": None},
    "customer": {},
    "tags": {},
    "alertid": {},
    "folder": {},
    "bucket": {},
    "acl": {},
    "region": {},
    "format": {},
    "sig": {},
    "kid": {},
    "reply_to": {},
}


CONFIG = load_config(DATA / "pcapdaemon.toml", hostname=HOST)


@pytest.fixture
def config() -> Config:
    return CONFIG


# --- every field, every poison ---------------------------------------------------


@pytest.mark.parametrize("char", POISON_CHARS)
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_poison_in_a_text_field_is_rejected_naming_it(
    config: Config, field: str, char: str
) -> None:
    value = f"ab{char}c"
    raw = body(id="req-7", **{**TEXT_FIELDS[field], field: value})
    with pytest.raises(RequestError) as info:
        parse_request(raw, config)
    shown = json.dumps(value)
    assert str(info.value) == f"{field}: {shown} holds {POISON_CHARS[char]} at character 2"
    assert info.value.request_id == "req-7"  # the sender can still find its answer


@pytest.mark.parametrize("char", POISON_CHARS)
def test_poison_in_a_tag_list(config: Config, char: str) -> None:
    message = rejected(body(tags=["ok", f"x{char}"]), config)
    assert message == f"tags: {json.dumps('ok,x' + char)} holds {POISON_CHARS[char]} at character 4"


@pytest.mark.parametrize("char", [*POISON_CHARS, "\t", "\n", "é", "\u2028"])
def test_bpf_is_printable_ascii(config: Config, char: str) -> None:
    """The issue's request: `"bpf": "\\ud800"` used to abort the daemon in pypcap."""
    value = f"host 10.0.0.1{char}"
    assert rejected(body(bpf=value), config) == (
        f"bpf: {json.dumps(value)} holds U+{ord(char):04X} at character 13; "
        "a filter is printable ASCII"
    )
    assert parse_request(body(bpf="tcp[13] & 2 != 0 and not port 22"), config).bpf


def test_the_issue_request_exactly(config: Config) -> None:
    raw = b'{"node":"any","interface":"lo","bpf":"\\ud800"}'
    assert rejected(raw, config) == (
        'bpf: "\\ud800" holds U+D800 at character 0; a filter is printable ASCII'
    )


@pytest.mark.parametrize("char", POISON_CHARS)
@pytest.mark.parametrize("field", ["interface", "alias"])
def test_poison_in_names(config: Config, field: str, char: str) -> None:
    value = f"lo{char}"
    why = (f"is not a valid name ({REQUEST_IFACE_RULE})" if field == "interface"
           else f"holds {POISON_CHARS[char]} at character 2")  # fmt: skip
    assert rejected(body(**{"interface": None, field: ["lo", value]}), config) == (
        f"{field}: {json.dumps(value)} {why}"
    )


def test_poison_in_nodere_is_rejected_not_a_crash_with_id_null(config: Config) -> None:
    """It used to reach RE2 before the parser and fail with `"id": null`."""
    data = decode_body(body(id="r-1", node=None, nodere="web\ud800"), 65536)
    assert addressed_to(data, HOST) is True  # no node can tell: every node rejects
    with pytest.raises(RequestError) as info:
        parse_fields(data, config)
    assert info.value.request_id == "r-1"
    assert str(info.value).startswith('nodere: "web\\ud800" holds a lone surrogate')


def test_a_bad_id_echoes_the_sources_message_id(config: Config) -> None:
    data = decode_body(body(id="r\ud800"), 65536)
    with pytest.raises(RequestError) as info:
        parse_fields(data, config, default_id="1700000000000-0")
    assert str(info.value) == 'id: "r\\ud800" is not 1-128 of A-Z a-z 0-9 . _ : -'
    assert info.value.request_id == "1700000000000-0"
    with pytest.raises(RequestError) as info:
        parse_fields(data, config)
    assert info.value.request_id is None  # nothing usable to echo


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("no\x00de", 'field name "no\\u0000de" holds a control character U+0000 at character 2'),
        ("\ud800", 'field name "\\ud800" holds a lone surrogate (not UTF-8 text) U+D800 at '
                   "character 0"),
    ],
)  # fmt: skip
def test_poison_in_a_field_name(config: Config, key: str, message: str) -> None:
    assert rejected(body(**{key: 1}), config) == message


def test_unknown_fields_may_hold_controls_but_no_surrogate(config: Config) -> None:
    """pcapdaemon ignored unknown fields, so a newline there is served; a lone
    surrogate is not, since the signature and the logs encode every field."""
    served = parse_request(body(note="line 1\nline 2\x00"), config)
    assert served.warnings == ("note: unknown field, ignored",)
    assert rejected(body(note={"deep": [1, ["x\udc80"]]}), config) == (
        "note: holds a lone surrogate (not UTF-8 text) in a field pcapd ignores"
    )
    # A key shadowed by its exact-case twin is ignored too.
    assert rejected(body(NODE="\udc80"), config) == (
        "NODE: holds a lone surrogate (not UTF-8 text) in a field pcapd ignores"
    )


@pytest.mark.parametrize(
    "endpoint",
    ["tcp[99999999]", "host:99999999", "host:port", "http://[::1", "https://", "a b", "é.example"],
)
def test_endpoint_that_no_url_parser_takes_is_rejected(config: Config, endpoint: str) -> None:
    """`tcp[99999999]` used to raise ValueError out of the S3 policy check."""
    assert rejected(body(endpoint=endpoint), config).startswith(
        f"endpoint: {json.dumps(endpoint)}: "
    )


@pytest.mark.parametrize(
    "endpoint", ["s3.amazonaws.com", "http://127.0.0.1:9000", "https://[::1]:443/path"]
)
def test_endpoint_hosts_and_urls_pass(config: Config, endpoint: str) -> None:
    assert parse_request(body(endpoint=endpoint), config).endpoint == endpoint


def test_a_str_body_holding_a_surrogate_is_measured_then_rejected(config: Config) -> None:
    """A str body is measured as bytes; a surrogate in it must not break that."""
    raw = '{"node": "any", "interface": "lo", "customer": "\ud800"}'
    assert rejected(raw, config).startswith('customer: "\\ud800" holds a lone surrogate')


def test_size_is_checked_before_any_parsing(config: Config) -> None:
    """Over max_request_bytes, even a body that is not JSON is rejected by size."""
    raw = b"[" * 70_000
    assert rejected(raw, config) == (
        "request is 70000 bytes; the limit is 65536 (general.max_request_bytes)"
    )


# --- what an accepted request may hold -------------------------------------------


def check_outcome(raw: bytes | str, config: Config) -> CaptureRequest | None:
    """Parse `raw`: any exception but RequestError fails the test, and so does an
    accepted request holding text that cannot be written everywhere it goes."""
    try:
        data = decode_body(raw, config.general.max_request_bytes)
        addressed_to(data, HOST)
        request = parse_fields(data, config)
    except RequestError as exc:
        message = str(exc)
        assert text_problem(message) is None, message
        return None
    for name in ("node", "nodere", "customer", "folder", "bucket", "acl", "region",
                 "endpoint", "reply_to", "sig", "kid", "id"):  # fmt: skip
        value = getattr(request, name)
        assert value is None or text_problem(value) is None, (name, value)
    assert all(text_problem(t) is None for t in request.tags)
    assert request.bpf.isascii() and request.bpf.isprintable()
    assert 0 < request.snap <= MAX_SNAPLENGTH
    assert 24 <= request.bytes <= config.general.maxbytes
    comments = {
        "request_id": request.id,
        "alertid": request.alertid,
        "tags": ",".join(request.tags),
        "customer": request.customer,
        "bpf": request.bpf,
    }
    pcapng_header(1, request.snap, (request.interfaces or ("lo",))[0], comments)
    canonical(data)
    return request


DEEP = 200
POISON_VALUES: list[Any] = [
    *POISON_CHARS, "lo\x00", "any\ud800", "", " ", "x" * 5000, "é" * 300, "..", "../../etc",
    "/", "tcp[99999999]", "host:99999999", "(a*)*b", "web[", "any", "lo", "eth0,lo", "\u212a",
    0, -0, 1, -1, 23, 24, 2**31, 2**63, 10**30, 10**300, 1.5, 1.0, -0.0, 1e308,
    float("inf"), float("-inf"), float("nan"), True, False, None,
    [], {}, [[]], ["lo"] * 65, ["\ud800"], [1], ["lo", None], {"\ud800": 1}, {"a": "\x00"},
    json.loads("[" * DEEP + "]" * DEEP), json.loads('{"a":' * DEEP + "1" + "}" * DEEP),
]  # fmt: skip
POISON_KEYS = [
    *sorted(KNOWN_FIELDS), "NODE", "Node", "Interface", "BPF", "Packets", "pac\u212aets",
    "\u017fnap", "Id", "lookback", "", "\ud800", "no\x00de", "extra", "aliasmatched",
]  # fmt: skip


def seeds() -> list[dict[str, Any]]:
    """pcapdaemon's messages (its README's, with one of each pair) and a minimal one."""
    readme = json.loads((DATA / "pcapdaemon_message.json").read_text())
    return [
        {k: v for k, v in readme.items() if k not in ("nodere", "alias")},
        {k: v for k, v in readme.items() if k not in ("node", "interface")},
        {"node": "any", "interface": ["lo"], "bpf": "icmp", "packets": 10},
    ]


def generated(count: int, seed: int) -> Iterator[bytes]:
    """`count` requests: a seed with 1-3 fields set to poison, deleted or
    renamed, sometimes then damaged byte by byte."""
    rng = random.Random(seed)
    bases = seeds()
    for _ in range(count):
        message = dict(rng.choice(bases))  # values are replaced, never changed in place
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(POISON_KEYS)
            if rng.random() < 0.15:
                message.pop(key, None)
            else:
                message[key] = rng.choice(POISON_VALUES)
        raw = json.dumps(message).encode()
        roll = rng.random()
        if roll < 0.05:
            raw = raw[: rng.randrange(len(raw))]
        elif roll < 0.10:
            at = rng.randrange(len(raw))
            raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :]
        yield raw


def test_fuzz_loop_100k_requests(config: Config) -> None:
    started = time.process_time()
    accepted = 0
    for raw in generated(FUZZ_INPUTS, seed=20261201):
        try:
            accepted += check_outcome(raw, config) is not None
        except Exception as exc:
            raise AssertionError(f"{raw!r} -> {exc!r}") from exc
    cpu = time.process_time() - started
    # Both outcomes are exercised, and quickly enough to run on every change.
    assert 0.05 * FUZZ_INPUTS < accepted < 0.95 * FUZZ_INPUTS, accepted
    assert cpu < FUZZ_CPU_BUDGET_S, f"{FUZZ_INPUTS} requests took {cpu:.1f} s of CPU"


# Hypothesis: its own text strategy includes surrogates only with codec=None.
ANY_TEXT = st.text(st.characters(codec=None), max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
    | st.sampled_from([*POISON_CHARS, "tcp[99999999]", "..", 0, -0.0, 10**300, ["\ud800"]]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=10,
)  # fmt: skip
MESSAGES = st.fixed_dictionaries(
    {"node": st.sampled_from(["any", HOST]) | ANY_TEXT,
     "interface": st.sampled_from([["lo"], "lo", ["eth0", "lo"]]) | JSON_VALUES},
    optional={name: JSON_VALUES for name in sorted(KNOWN_FIELDS - {"node", "interface"})},
) | st.dictionaries(st.sampled_from(POISON_KEYS) | ANY_TEXT, JSON_VALUES, max_size=8)  # fmt: skip


@settings(max_examples=200)
@given(message=MESSAGES)
def test_fuzz_hypothesis_messages(message: dict[str, Any]) -> None:
    check_outcome(json.dumps(message), CONFIG)
    check_outcome(json.dumps(message).encode(), CONFIG)


@settings(max_examples=300)
@given(raw=st.binary(max_size=200) | ANY_TEXT)
def test_fuzz_hypothesis_raw_bodies(raw: bytes | str) -> None:
    check_outcome(raw, CONFIG)

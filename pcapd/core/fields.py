"""What a request's values may hold, read the way pcapdaemon's Go decoder
reads them: text without control characters or lone surrogates, a printable
ASCII BPF, keys folded case-insensitively, zeros and empties as "not given".

`Fields` reads one decoded message field by field; each refusal is a
`RequestError` naming the field, the value and the rule.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pcapd.core.errors import RequestError

MAX_NODE_LEN = 253
MAX_NODERE_LEN = 256
MAX_BPF_LEN = 4096
MAX_TEXT_LEN = 1024
MAX_INTERFACES = 64
PCAP_HEADER_LEN = 24  # the smallest file pcapd writes: a pcap header alone
MAX_SHOWN = 80  # characters of a bad value quoted back to the sender

ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# An interface name, as Linux's dev_valid_name allows them: 1-15 bytes
# (IFNAMSIZ 16 less the NUL), not "." or "..", no "/" (so pcap_open can never
# take one for a path) and no whitespace. Control characters and lone
# surrogates are refused as in every field. ":" stays allowed, as it always
# was here: libpcap's own devices use it (nflog:5), and an alias label
# (eth0:1) is skipped like any name findalldevs() does not list.
MAX_IFACE_BYTES = 15
IFACE_RULE = "1-15 bytes, not . or .., without /, whitespace or control characters"
_IFACE_CHARS = r"(?!\.{1,2}$)[^/\s\x00-\x1f\x7f-\x9f\ud800-\udfff]"
_IFACE_RE = re.compile(_IFACE_CHARS + "{1,15}")
# A request's names, sent to a whole fleet: the same characters, up to 32 as
# before, so a name too long for Linux is skipped like any this node lacks
# (resolve_interfaces keeps only what findalldevs() lists) and the other
# nodes still capture.
REQUEST_IFACE_RULE = "1-32 characters, not . or .., without /, whitespace or control characters"
_REQUEST_IFACE_RE = re.compile(_IFACE_CHARS + "{1,32}")
# libpcap's pseudo-devices that findalldevs() lists past that rule (17 bytes).
_PCAP_DEVICES = frozenset({"bluetooth-monitor"})
# What an alias may be ([[interface]] alias, [correlator] aliases, a request's
# alias). pcapdaemon matched any string exactly, and an alias reaches only
# logs, results, CloudShark tags and the heartbeat, never a BPF or a path: so
# any text, bounded, without what a terminal or log acts on or hides (control
# and format characters: bidi overrides, zero-width; line breaks).
ALIAS_RULE = (
    f"text of at most {MAX_TEXT_LEN} characters, without control or format characters "
    "or line or paragraph separators"
)
_HIDDEN = {"Cf": "a format character", "Zl": "a line separator", "Zp": "a paragraph separator"}
# More digits than any bound read here (2**64 has 20): int() of a longer text
# is refused before it runs (Python refuses over 4300 digits, a ValueError).
MAX_DIGITS = 40
_DIGITS = "0123456789"
CHANNEL_RE = re.compile(r"[\x21-\x7e]{1,256}")
_ENDPOINT_RE = re.compile(r"[\x21-\x7e]+")
# What no field's text may hold: C0 and C1 controls, DEL, and lone surrogates
# (JSON's "\ud800" decodes to one; it is not text, and encoding it to UTF-8
# for libpcap, RE2, a pcapng comment or a signature raises).
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
# libpcap's filter language is ASCII: nothing else reaches pcap_compile.
_BPF_RE = re.compile(r"[\x20-\x7e]*")

# pcapdaemon's Go struct fields. encoding/json matches a key to them case-
# insensitively (Unicode simple folding: "Node", "BPF", even "\u212a" for k), an
# exact-case key first; pcapd's own fields (id, format, sig, ...) are exact.
GO_FIELDS = frozenset(
    {
        "node", "nodere", "interface", "alias", "tags", "bpf", "customer", "snap",
        "packets", "alertid", "timeout", "duration", "bytes", "packetdebug",
        "logrequest", "folder", "bucket", "acl", "region", "endpoint", "encryption",
    }
)  # fmt: skip

KNOWN_FIELDS = frozenset(
    {
        "node", "nodere", "interface", "alias", "bpf", "snap", "packets", "bytes",
        "duration", "timeout", "tags", "customer", "alertid", "packetdebug",
        "logrequest", "folder", "bucket", "acl", "region", "endpoint", "encryption",
        "id", "format", "lookback", "reply_to", "ts", "sig", "kid",
    }
)  # fmt: skip
# Where pcapdaemon's code reads a zero as "not given" and uses its default
# (and pcapd's own lookback: 0 seconds is none).
ZERO_IS_ABSENT = frozenset({"snap", "bytes", "duration", "timeout", "alertid", "lookback"})
# Fields whose empty value pcapdaemon's code reads as "not given".
EMPTY_IS_ABSENT = frozenset(
    {"node", "nodere", "interface", "alias", "tags", "customer", "folder", "bucket",
     "acl", "region", "endpoint"}
)  # fmt: skip


def show(value: Any) -> str:
    """`value` as JSON, cut to MAX_SHOWN characters and "..." when longer:
    what an error quotes back. ASCII only, so a surrogate or control
    character prints as its escape."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):  # nested deeper than json can write back
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def printable(text: str) -> str:
    """`text` for a line on a terminal: as it is when printable, else quoted
    with its escapes (repr), so a control character, a lone surrogate or a
    newline from a heartbeat, a sidecar or a sink's error is never written raw."""
    return text if text.isprintable() else repr(text)


def text_problem(value: str) -> str | None:
    """Why `value` is not clean text (a lone surrogate, a control character), or None."""
    found = _BAD_CHAR_RE.search(value)
    if found is None:
        return None
    char = found.group()
    surrogate = _SURROGATE_RE.match(char) is not None
    kind = "a lone surrogate (not UTF-8 text)" if surrogate else "a control character"
    return f"holds {kind} U+{ord(char):04X} at character {found.start()}"


def channel_problem(value: object) -> str | None:
    """Why `value` is no channel name a request may give as `reply_to`, or
    None: the one rule for the parser, a spooled request read back and a
    refused body's answer (a lone surrogate or a non-string cannot be sent)."""
    if not isinstance(value, str):
        return f"expected a string, got {show(value)}"
    if CHANNEL_RE.fullmatch(value) is None:
        return "expected 1-256 printable characters without spaces"
    return None


def bpf_problem(bpf: str) -> str | None:
    """Why libpcap must not be handed `bpf`, or None: filters are printable ASCII.
    Checked by the parser and again by the engine, the one place that calls
    setfilter: pypcap's setfilter fails on a surrogate after freeing memory it
    frees again later, which aborts the process."""
    if _BPF_RE.fullmatch(bpf):
        return None
    found = re.search(r"[^\x20-\x7e]", bpf)
    assert found is not None
    char = ord(found.group())
    return f"holds U+{char:04X} at character {found.start()}; a filter is printable ASCII"


def is_interface_name(name: object) -> bool:
    """Whether `name` follows IFACE_RULE (or is a pseudo-device libpcap lists):
    the one rule for config and command lines."""
    if not isinstance(name, str):
        return False
    if name in _PCAP_DEVICES:
        return True
    return _IFACE_RE.fullmatch(name) is not None and len(name.encode()) <= MAX_IFACE_BYTES


def requested_interface_problem(name: object) -> str | None:
    """Why a request may not name `name` as an interface (REQUEST_IFACE_RULE), or None."""
    if isinstance(name, str) and _REQUEST_IFACE_RE.fullmatch(name) is not None:
        return None
    return f"is not a valid name ({REQUEST_IFACE_RULE})"


def alias_problem(alias: object) -> str | None:
    """Why `alias` is not an alias (ALIAS_RULE), or None: the one rule for the
    config and requests."""
    if not isinstance(alias, str):
        return f"is not a string ({ALIAS_RULE})"
    if len(alias) > MAX_TEXT_LEN:
        return f"is {len(alias)} characters; the limit is {MAX_TEXT_LEN}"
    problem = text_problem(alias)
    if problem is not None or alias.isprintable():  # in C; true for nearly every alias
        return problem
    for index, char in enumerate(alias):
        kind = _HIDDEN.get(unicodedata.category(char))
        if kind is not None:
            return f"holds {kind} U+{ord(char):04X} at character {index}"
    return None  # not printable for a space other than " " or an unassigned code point


def whole_number(text: str, low: int, high: int, *, base: int = 10) -> int | None:
    """`text` as an integer within low..high, or None. ASCII digits only:
    int() also reads "+53", "5_300", " 53" and other scripts' digits, and
    `str.isdigit` takes '²', which int() refuses. Bounded in length before
    int() runs, which raises past 4300 digits, leading zeros included."""
    digits = _DIGITS[:base]
    significant = text.lstrip("0")
    if not text or len(significant) > MAX_DIGITS or text.strip(digits):
        return None
    number = int(significant or "0", base)
    return number if low <= number <= high else None


def go_fold(key: str) -> str:
    """The key as Go's encoding/json compares it to a field name; ASCII field
    names fold only with their case pair, K with U+212A and s with U+017F."""
    return key.replace("\u017f", "s").replace("\u212a", "k").lower()


def fold_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` with pcapdaemon's fields under their own names, as Go reads them:
    `Node` or `PACKETS` count as `node` or `packets`. An exact-case key wins
    over a folded one; among folded keys, the last (Go keeps the last too).
    Returns the fields and a warning per key shadowed."""
    fields: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    warnings = []
    for key, value in data.items():
        name = key if key in KNOWN_FIELDS else go_fold(key)
        if key in KNOWN_FIELDS or name not in GO_FIELDS:
            fields[key] = value
            continue
        if name in data:
            warnings.append(f"{show(key)}: ignored, {name} is given")
            continue
        if name in chosen:
            warnings.append(f"{show(chosen[name])}: ignored, {show(key)} comes later")
        chosen[name] = key
        fields[name] = value
    return fields, warnings


def given(data: Mapping[str, Any], name: str) -> Any:
    """The field's value, or None where pcapdaemon would not see one: null, and
    (as Go's zero values) 0 and empty strings or lists where its code says so."""
    value = data.get(name)
    if value is None or value is True or value is False:
        return value
    if value == 0 and type(value) is int:
        return None if name in ZERO_IS_ABSENT else value
    if (value == "" or value == []) and name in EMPTY_IS_ABSENT:
        return None
    return value


class Fields:
    def __init__(self, data: Mapping[str, Any], request_id: str | None) -> None:
        self.data = data
        self.request_id = request_id

    def fail(self, message: str) -> RequestError:
        return RequestError(message, self.request_id)

    def value(self, name: str) -> Any:
        return given(self.data, name)

    def integer(self, name: str, default: int, cap: int | None, cap_name: str = "") -> int:
        value = self.value(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{name}: expected a JSON integer, got {show(value)}")
        if value < 1:
            raise self.fail(f"{name}={value}: must be positive")
        if cap is not None and value > cap:
            raise self.fail(f"{name}={value} exceeds {cap_name}={cap}")
        return value

    def check_text(
        self, name: str, value: str, limit: int, rule: Callable[[str], str | None] = text_problem
    ) -> str:
        if len(value) > limit:
            raise self.fail(f"{name}: {len(value)} characters; the limit is {limit}")
        problem = rule(value)
        if problem is not None:
            raise self.fail(f"{name}: {show(value)} {problem}")
        return value

    def text(
        self, name: str, limit: int = MAX_TEXT_LEN, rule: Callable[[str], str | None] = text_problem
    ) -> str | None:
        value = self.value(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{name}: expected a string, got {show(value)}")
        return self.check_text(name, value, limit, rule)

    def flag(self, name: str) -> bool | None:
        value = self.value(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(f"{name}: expected true or false, got {show(value)}")
        return value

    def names(self, name: str, problem: Callable[[object], str | None]) -> tuple[str, ...]:
        """A list of names, each without a `problem`; a single string is
        accepted as a list of one."""
        value = self.value(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(f"{name}: expected a non-empty list of names, got {show(value)}")
        if len(value) > MAX_INTERFACES:
            raise self.fail(f"{name}: {len(value)} names; the limit is {MAX_INTERFACES}")
        for item in value:
            why = problem(item)
            if why is not None:
                raise self.fail(f"{name}: {show(item)} {why}")
        return tuple(dict.fromkeys(value))


def holds_surrogate(value: Any) -> bool:
    stack = [value]  # not recursive: json.loads allows deeper nesting than a Python call chain
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not a host or URL boto3 and the upload policy can use."""
    if not _ENDPOINT_RE.fullmatch(endpoint):
        return "expected a host name or URL of printable ASCII without spaces"
    try:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        return f"not a host name or URL: {exc}"
    if not parts.hostname:
        return "not a host name or URL: no host"
    return None

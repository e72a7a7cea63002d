"""The one config reader: typed reads of one TOML table, for the daemon and every agent.

Each read appends `path.key: rule, got value` to a shared error list instead of
raising, so a caller collects every problem and raises them together as one
`ConfigError` (`pcapd check-config` prints them all). One policy for all:
keys nobody read are warnings (`path.key: unknown option, ignored`, from
`finish()`), as pcapdaemon ignored them; every number is finite and bounded
(an integer read without a maximum is still capped at `MAX_INT`); booleans
are TOML booleans only; a secret's value never appears in a message,
whatever its type.

Why not pydantic v2 (strict mode), measured here (Python 3.11, pydantic 2.14,
2 cores, medians of 7 fresh processes):

| what | ms |
|---|---|
| `import pcapd.core.config` (this reader + the dataclasses + tomllib) | 54 |
| `import pydantic` (lazy: nothing built yet) | 44 |
| `from pydantic import BaseModel` | 79 |
| same + two small strict models defined and one validation | 137 |

(`python -X importtime -c 'import pydantic'`: 45-84 ms cumulative.) Models
for the daemon's nine sections and three agents would cost more again, on
every `pcapd` command and agent start. Its errors do carry the location, but
in its words, not ours: `general.maxpackets: Input should be a valid
integer` (ours: `expected an integer, got 'lots'`), `Input should be less
than or equal to 262144` with no lower bound, `String should match pattern
'^(pcap|pcapng)$'`, and `input_value=` prints a secret written as a number.
Unknown keys are either forbidden (an error, where pcapdaemon configs need a
warning) or silently ignored. Matching today's messages would mean a
translation table over its error types plus our own secret and unknown-key
handling: most of this module again, at twice the start-up cost. So: this
reader, about 300 lines.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pcapd.core.errors import PcapdError
from pcapd.core.fields import IFACE_RULE, is_interface_name, text_problem, whole_number
from pcapd.core.secret import Secret, resolve_secret

# The cap on an integer read without its own maximum: what TOML itself allows.
MAX_INT = 2**63 - 1
MAX_PORT = 65_535
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Whitespace a config string may hold where a request's may not (a filter
# over several lines): read as spaces by the control-character check.
_LINE_SPACE = str.maketrans("\t\n\r", "   ")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A literal IP address and a port, as `host_port` reads it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ConfigError(PcapdError):
    """Every problem found in one config; each line names its field. The
    warnings found beside the errors go with them, so that a typo's "unknown
    option" is printed with the error it may have caused."""

    def __init__(
        self, errors: list[str], path: str | None = None, warnings: Sequence[str] = ()
    ) -> None:
        self.errors = errors
        self.path = path
        self.warnings = tuple(warnings)
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(errors))

    def lines(self) -> list[str]:
        """One `FILE: error: ...` line per problem, then one `FILE: warning: ...`
        per warning, as every command prints them."""
        where = f"{self.path}: " if self.path else ""
        return [f"{where}error: {error}" for error in self.errors] + [
            f"{where}warning: {warning}" for warning in self.warnings
        ]


def key_name(key: str) -> str:
    """A TOML key as a message names it: bare where TOML allows it bare, else
    quoted. A key may hold any text, and one printed bare with a newline in
    it would start a line of its own that reads as another message."""
    return key if _BARE_KEY.fullmatch(key) else repr(key)


def quoted(text: str, limit: int = 40) -> str:
    """`text` quoted for a message, cut to `limit` characters with an ellipsis
    after the quote when it is longer: never taken for the whole of it."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}\u2026"


def toml_type(value: Any) -> str:
    """The TOML name of a value's type, for errors that must not show the value."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), "a date or time")


class Table:
    """Typed reads of the TOML table at dotted path `name`, appending errors.

    Each `get_*` returns its default when the key is absent or its value is
    bad (the error is recorded), so one pass reads the whole table.
    """

    def __init__(
        self,
        table: Any,
        name: str,
        errors: list[str] | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.name = name
        self.errors: list[str] = [] if errors is None else errors
        self.warnings: list[str] = [] if warnings is None else warnings
        self.seen: set[str] = set()
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            self.errors.append(f"{name}: expected a table, got {toml_type(table)}")
            table = {}
        self.table: Mapping[str, Any] = table

    @property
    def present(self) -> bool:
        return bool(self.table)

    def get(self, key: str) -> Any:
        """The raw value (None if absent), marked as read."""
        self.seen.add(key)
        return self.table.get(key)

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.name}.{key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.name}.{key}: {message}")

    def bad(self, key: str, value: Any, rule: str) -> None:
        self.error(key, f"{rule}, got {value!r}")

    def exceeds(self, key: str, value: Any, bound_key: str, bound: Any, why: str = "") -> None:
        """A cross-field bound: `path.key: 2000 exceeds max_queue_ops=1000`."""
        self.error(key, f"{value} exceeds {bound_key}={bound}" + (f": {why}" if why else ""))

    def get_int(
        self, key: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, value, "expected an integer")
            return default
        upper = MAX_INT if maximum is None else maximum
        if not minimum <= value <= upper:
            self.bad(key, value, f"must be at least {minimum} and at most {upper}")
            return default
        return value

    def optional_int(self, key: str, *, maximum: int) -> int | None:
        return self.get_int(key, 0, minimum=1, maximum=maximum) or None  # 0: absent or bad

    def get_float(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(key, value, "expected a number")
            return default
        # TOML allows nan and inf; nan passes every comparison as false.
        if not math.isfinite(value):
            self.bad(key, value, "must be a finite number")
            return default
        if not minimum <= value <= maximum:
            self.bad(key, value, f"must be at least {minimum} and at most {maximum}")
            return default
        return float(value)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(key, value, "expected true or false")
            return default
        return value

    def holds_control(self, key: str, value: str) -> bool:
        """Records an error if `value` holds a control character: os and
        libpcap stop at a NUL, and the others reach logs, heartbeats and
        terminals. Tab, newline and carriage return pass. A lone surrogate
        (a command-line value's bytes that are not UTF-8; TOML is UTF-8) is
        refused too: libpcap, Redis and JSON text cannot take one."""
        problem = text_problem(value.translate(_LINE_SPACE))
        if problem is not None:
            self.error(key, problem)
        return problem is not None

    def get_str(self, key: str, default: str, *, choices: tuple[str, ...] = ()) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.bad(key, value, "expected a string")
            return default
        if self.holds_control(key, value):
            return default
        if choices and value not in choices:
            self.bad(key, value, "expected one of " + ", ".join(choices))
            return default
        return value

    def optional_str(self, key: str, *, choices: tuple[str, ...] = ()) -> str | None:
        """A string, None when absent or "" (TOML has no null)."""
        value = self.get_str(key, "", choices=choices)
        return value or None

    def interface(self, key: str) -> str | None:
        """An interface name, None when absent or "": the rule a request's names
        follow (fields.is_interface_name), so none can be taken for a path by libpcap."""
        value = self.optional_str(key)
        if value is not None and not is_interface_name(value):
            self.error(key, f"{quoted(value)} is not an interface name ({IFACE_RULE})")
            return None
        return value

    def str_list(
        self, key: str, *, checked: bool = True, what: str = "a list of strings"
    ) -> tuple[str, ...]:
        """A list of strings (`what` the error calls it); a single string is a
        list of one. Unless `checked` is false (the caller's rule is
        stricter), none holds a control character."""
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(key, value, f"expected {what}")
            return ()
        if checked and any(self.holds_control(f"{key}[{i}]", v) for i, v in enumerate(value)):
            return ()
        return tuple(value)

    def name_list(
        self, key: str, default: tuple[str, ...], *, choices: Mapping[str, object]
    ) -> tuple[str, ...]:
        """Names from `choices`, case-insensitive, upper-cased, deduplicated, at least one."""
        if self.get(key) is None:
            return default
        before = len(self.errors)
        names = tuple(dict.fromkeys(v.upper() for v in self.str_list(key)))
        bad = [n for n in names if n not in choices]
        if bad:
            self.bad(key, ", ".join(bad), "expected one of " + ", ".join(choices))
        elif not names and len(self.errors) == before:
            self.error(key, "must name at least one of " + ", ".join(choices))
        return names if len(self.errors) == before else default

    def host_port(self, key: str) -> HostPort | None:
        """`ADDRESS:PORT` with a literal IP address (`[::1]:6000` for IPv6), or None."""
        text = self.optional_str(key)
        if text is None:
            return None
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self.error(key, f"{text[:80]!r} is not ADDRESS:PORT with a literal IP address")
            return None
        number = whole_number(port, 0, MAX_PORT)
        if not sep or number is None:
            self.error(key, f"{text[:80]!r}: port {port[:20]!r} is not a port in 0..{MAX_PORT}")
            return None
        return HostPort(host, number)

    def listen(self, key: str) -> HostPort | None:
        """A listener's `ADDRESS:PORT`, or None when absent or empty (off).
        Port 0 is refused: an operator must know where to connect."""
        if not self.get(key):
            return None
        address = self.host_port(key)
        if address is not None and address.port == 0:
            self.error(key, f"{address!s}: port 0 is not a fixed port to connect to")
            return None
        return address

    def secret(self, key: str) -> Secret | None:
        """A secret string; whatever else is written there, the error names only
        its type: `auth = 918273645` is a password too."""
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {toml_type(value)} (value not shown)")
            return None
        return self._resolve_secret(key, value) if value else None

    def _resolve_secret(self, key: str, value: str) -> Secret | None:
        """`env:NAME` and `file:/path` keep secrets out of the config file."""
        try:
            return resolve_secret(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return None

    def secret_map(self, key: str) -> dict[str, Secret]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.error(key, 'expected a table of name = "secret"')
            return {}
        resolved = {
            name: self._resolve_secret(f"{key}.{key_name(name)}", v) for name, v in value.items()
        }
        return {name: s for name, s in resolved.items() if s is not None}

    def tables(self, key: str) -> list[Table]:
        """An array of tables, each read as `path.key[i]` into the same lists."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(key, value, "expected a list of tables")
            return []
        where = f"{self.name}.{key}"
        return [Table(t, f"{where}[{i}]", self.errors, self.warnings) for i, t in enumerate(value)]

    def finish(self) -> None:
        """Warn about every key no read asked for: one policy for daemon and agents."""
        for key in sorted(set(self.table) - self.seen):
            self.warn(key_name(key), "unknown option, ignored")

"""pcapd/core/configread.py: the one reader's rules, each with the message the user sees."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pcapd.core.configread import MAX_INT, Table

# What a read without a default returns for a bad value.
NOTHING: dict[str, Any] = {"secret_map": {}, "str_list": (), "tables": []}


def read(table: Any, call: str, *args: Any, **kwargs: Any) -> tuple[Any, list[str], list[str]]:
    t = Table(table, "agents.x")
    value = getattr(t, call)(*args, **kwargs)
    t.finish()
    return value, t.errors, t.warnings


@pytest.mark.parametrize(
    ("table", "call", "args", "kwargs", "message"),
    [
        ({"n": "lots"}, "get_int", ("n", 5), {}, "agents.x.n: expected an integer, got 'lots'"),
        ({"n": 2.0}, "get_int", ("n", 5), {}, "agents.x.n: expected an integer, got 2.0"),
        ({"n": 2**63}, "get_int", ("n", 5), {},
         f"agents.x.n: must be at least 1 and at most {MAX_INT}, got {2**63}"),
        ({"n": 0}, "get_int", ("n", 5), {"maximum": 9},
         "agents.x.n: must be at least 1 and at most 9, got 0"),
        ({"n": 0}, "optional_int", ("n",), {"maximum": 9},
         "agents.x.n: must be at least 1 and at most 9, got 0"),
        ({"f": "1s"}, "get_float", ("f", 1.0), {"minimum": 0.0, "maximum": 9.0},
         "agents.x.f: expected a number, got '1s'"),
        ({"f": True}, "get_float", ("f", 1.0), {"minimum": 0.0, "maximum": 9.0},
         "agents.x.f: expected a number, got True"),
        ({"f": math.nan}, "get_float", ("f", 1.0), {"minimum": 0.0, "maximum": 9.0},
         "agents.x.f: must be a finite number, got nan"),
        ({"f": 9.5}, "get_float", ("f", 1.0), {"minimum": 0.0, "maximum": 9.0},
         "agents.x.f: must be at least 0.0 and at most 9.0, got 9.5"),
        ({"b": 1}, "get_bool", ("b", False), {}, "agents.x.b: expected true or false, got 1"),
        ({"s": "c"}, "get_str", ("s", "a"), {"choices": ("a", "b")},
         "agents.x.s: expected one of a, b, got 'c'"),
        ({"s": 1}, "optional_str", ("s",), {}, "agents.x.s: expected a string, got 1"),
        ({"l": [1]}, "str_list", ("l",), {}, "agents.x.l: expected a list of strings, got [1]"),
        ({"l": ["a", "z"]}, "name_list", ("l", ("A",)), {"choices": {"A": 1, "B": 2}},
         "agents.x.l: expected one of A, B, got 'Z'"),
        ({"l": []}, "name_list", ("l", ("A",)), {"choices": {"A": 1, "B": 2}},
         "agents.x.l: must name at least one of A, B"),
        ({"l": 5}, "name_list", ("l", ("A",)), {"choices": {"A": 1}},
         "agents.x.l: expected a list of strings, got 5"),
        ({"k": 918273645}, "secret", ("k",), {},
         "agents.x.k: expected a string, got an integer (value not shown)"),
        ({"k": {"a": 4815162342}}, "secret_map", ("k",), {},
         'agents.x.k: expected a table of name = "secret"'),
        ({"h": "localhost:6000"}, "host_port", ("h",), {},
         "agents.x.h: 'localhost:6000' is not ADDRESS:PORT with a literal IP address"),
        ({"h": "[::1]:70000"}, "host_port", ("h",), {},
         "agents.x.h: '[::1]:70000': port '70000' is not a port in 0..65535"),
        ({"t": "x"}, "tables", ("t",), {}, "agents.x.t: expected a list of tables, got 'x'"),
    ],
)  # fmt: skip
def test_each_bad_value_gives_one_message_and_the_default(
    table: dict[str, Any], call: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    value, errors, warnings = read(table, call, *args, **kwargs)
    assert errors == [message]
    assert warnings == []  # a key that was read is never "unknown"
    assert value == (args[1] if len(args) > 1 else NOTHING.get(call))


def test_good_values() -> None:
    t = Table({"n": 3, "f": 2, "l": ["a", "A", "b"], "s": "", "k": "pw"}, "agents.x")
    assert t.get_int("n", 1, maximum=9) == 3
    assert t.get_float("f", 1.0, minimum=0.0, maximum=9.0) == 2.0
    assert t.name_list("l", ("A",), choices={"A": 1, "B": 2}) == ("A", "B")
    assert t.optional_str("s") is None  # TOML has no null: "" is unset
    secret = t.secret("k")
    assert secret is not None and secret.reveal() == "pw" and "pw" not in repr(secret)
    assert str(Table({"h": "[::1]:6000"}, "x").host_port("h")) == "[::1]:6000"
    assert t.errors == []


def test_unknown_keys_are_warnings_with_the_path_and_nested_tables_share_the_lists() -> None:
    t = Table({"a": 1, "zz": 2, "rules": [{"x": 1, "y": 2}, "no"]}, "agents.x")
    t.get_int("a", 1)
    for entry in t.tables("rules"):
        entry.get_int("x", 1)
        entry.finish()
    t.finish()
    assert t.errors == ["agents.x.rules[1]: expected a table, got a string"]
    assert t.warnings == [
        "agents.x.rules[0].y: unknown option, ignored",
        "agents.x.zz: unknown option, ignored",
    ]


def test_a_section_that_is_not_a_table() -> None:
    t = Table([1], "agents.x")
    assert t.get_int("n", 4) == 4
    assert t.errors == ["agents.x: expected a table, got an array"]


def test_exceeds() -> None:
    t = Table({}, "general")
    t.exceeds("maxbytes", 10, "max_memory", 5, "a capture of that size could never be admitted")
    assert t.errors == [
        "general.maxbytes: 10 exceeds max_memory=5: a capture of that size could never be admitted"
    ]

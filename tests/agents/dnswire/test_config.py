"""[agents.dnswire] list options: each bad value an error naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from agents.dnswire.config import parse_dnswire_config
from pcapd.core.config import ConfigError


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"pidfile": 5}, "agents.dnswire.pidfile: expected a path or a list of paths, got 5"),
        ({"pidfile": ["/run/a.pid", 7]},
         "agents.dnswire.pidfile: expected a path or a list of paths, got ['/run/a.pid', 7]"),
        ({"pidfile": ["/run/a.pid", "/run/\x1b.pid"]},
         "agents.dnswire.pidfile[1]: holds a control character U+001B at character 5"),
        ({"udp_dst": {"a": 1}},
         "agents.dnswire.udp_dst: expected a list of IPv4 ADDRESS[:PORT], got {'a': 1}"),
        ({"udp_dst": ["10.0.0.5\x00"]},
         "agents.dnswire.udp_dst[0]: holds a control character U+0000 at character 8"),
    ],
)  # fmt: skip
def test_a_bad_list_value_names_its_key(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dnswire_config({"interface": "lo", **table})
    assert caught.value.errors == [error]


def test_pid_files_one_or_several_each_once() -> None:
    assert parse_dnswire_config({"interface": "lo", "pidfile": "/run/a.pid"}).pidfile == (
        "/run/a.pid",
    )
    listed = ["/run/a.pid", "", "/run/b.pid", "/run/a.pid"]
    assert parse_dnswire_config({"interface": "lo", "pidfile": listed}).pidfile == (
        "/run/a.pid", "/run/b.pid",
    )  # fmt: skip

"""`pcapd check-config FILE`, run as a real process: exit status and every line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcapd.cli import load_agents
from pcapd.core.config import ConfigError, load_config, parse_config
from pcapd.core.fields import IFACE_RULE
from pcapd.core.lifecycle import EXIT_CONFIG

DATA = Path(__file__).parent / "data"
RUN_TIMEOUT_S = 30
NO_SOURCE = (
    "redis.listen, redis.stream_listen, sqs.listen: at least one request source must be enabled"
)
NO_DESTINATION = (
    "general.writelocal, s3.upload, cloudshark.upload: at least one destination must be enabled"
)


def check_config(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCAPD_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "check-config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=path.parent,
        env=env,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pcapd.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, *extra: str) -> list[str]:
    """`check-config` on `text`: exit 2, nothing on stdout, no traceback; its
    lines (`error: ...`, `warning: ...`) without the file's name."""
    path = write(tmp_path, text)
    done = check_config(path, *extra)
    assert (done.returncode, done.stdout) == (EXIT_CONFIG, "")
    assert "Traceback" not in done.stderr
    return [line.removeprefix(f"{path}: ") for line in done.stderr.splitlines()]


def refused(tmp_path: Path, text: str) -> list[str]:
    """`check-config --agent-only` on `text`, its error lines without "error: "."""
    return [line.removeprefix("error: ") for line in problems(tmp_path, text, "--agent-only")]


def test_pcapdaemon_sample_is_ok() -> None:
    path = DATA / "pcapdaemon.toml"
    done = check_config(path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{path}: ok (node {socket.gethostname()})\n"


def test_every_error_is_printed_and_exit_is_2(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nmaxpackets = 0\nsnaplength = 'big'\nwritelocal = true\n"
        "[redis]\nport = 70000\nurl = 'http://127.0.0.1'\nauth = 'env:PCAPD_TEST_UNSET'\n"
        "[[interface]]\nname = 'eth0'\n[[interface]]\nname = 'eth0'\n",
    )
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}: error: general.maxpackets: must be at least 1 and at most 2147483647, got 0",
        f"{path}: error: general.snaplength: expected an integer, got 'big'",
        f"{path}: error: redis.url: scheme 'http' is not one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://",
        f"{path}: error: redis.port: must be at least 1 and at most 65535, got 70000",
        f"{path}: error: redis.auth: environment variable PCAPD_TEST_UNSET is not set",
        f"{path}: error: interface[1].name: 'eth0' is defined twice",
    ]


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[general\n")
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.startswith(f"{path}: error: not valid TOML: ")
    assert len(done.stderr.splitlines()) == 1

    missing = tmp_path / "absent.toml"
    done = check_config(missing)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == f"{missing}: error: cannot read config: No such file or directory\n"

    done = check_config(tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == f"{tmp_path}: error: cannot read config: Is a directory\n"


def test_serve_checks_no_listener_and_no_destination(tmp_path: Path) -> None:
    path = write(tmp_path, "[redis]\nlisten = false\n")
    done = check_config(path)
    assert (done.returncode, done.stdout) == (EXIT_CONFIG, "")
    assert done.stderr.splitlines() == [
        f"{path}: error: {NO_SOURCE}",
        f"{path}: error: {NO_DESTINATION}",
    ]


def test_no_destination_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    done = check_config(path)
    assert (done.returncode, done.stderr) == (EXIT_CONFIG, f"{path}: error: {NO_DESTINATION}\n")


def test_agent_only_skips_the_serve_checks_but_not_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[general]\nnode = 'agent-1'\n[redis]\nlisten = false\n")
    done = check_config(path, "--agent-only")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{path}: ok (node agent-1)\n"

    bad = write(tmp_path, "[redis]\nlisten = 'no'\n")
    done = check_config(bad, "--agent-only")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr == f"{bad}: error: redis.listen: expected true or false, got 'no'\n"


def test_warnings_are_printed_and_do_not_fail(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nnode = 'n1'\nwritelocal = true\nmaxpacket = 5\n[kafka]\nx = 1\n[foo]\n",
    )
    done = check_config(path)
    assert done.returncode == 0
    assert done.stdout == f"{path}: ok (node n1)\n"
    assert done.stderr.splitlines() == [
        f"{path}: warning: general.maxpacket: unknown option, ignored",
        f"{path}: warning: kafka: pcapd does not read Kafka; section ignored (use [redis] "
        "listen, [redis] stream_listen or [sqs] listen)",
        f"{path}: warning: foo: unknown section, ignored",
    ]


def test_warnings_are_printed_beside_the_errors(tmp_path: Path) -> None:
    """The README's example: a typo's "unknown option" comes with the errors,
    as it may be their cause; the agents' sections likewise, the errors
    first whichever section failed (before, these warnings came first)."""
    assert problems(
        tmp_path, "[general]\nmaxpackets = 'lots'\nmaxpacket = 3\n[redis]\nport = 70000\n"
    ) == [
        "error: general.maxpackets: expected an integer, got 'lots'",
        "error: redis.port: must be at least 1 and at most 65535, got 70000",
        "warning: general.maxpacket: unknown option, ignored",
    ]
    assert problems(
        tmp_path,
        "[agents.dnstap]\nsocket_mode = 'xyz'\nsoket = '/run/x.sock'\n"
        "[agents.flow]\nbatch_ops = 0\nsnaplength = 128\n",
        "--agent-only",
    ) == [
        "error: agents.dnstap.socket_mode: 'xyz' is not an octal mode such as \"0660\"",
        "error: agents.flow.batch_ops: must be at least 1 and at most 100000, got 0",
        "warning: agents.dnstap.soket: unknown option, ignored",
        "warning: agents.flow.snaplength: unknown option, ignored",
    ]
    assert problems(
        tmp_path, "[general]\nwritelocal = true\nmaxpacket = 3\n[agents.flow]\nbatch_ops = 0\n"
    ) == [
        "error: agents.flow.batch_ops: must be at least 1 and at most 100000, got 0",
        "warning: general.maxpacket: unknown option, ignored",
    ]


def test_the_agents_sections_are_checked_when_the_daemon_s_are_wrong(tmp_path: Path) -> None:
    """Every problem at once: an error in [redis] does not hide the agents'
    sections' errors and warnings (before, they were checked only once the
    daemon's sections were sound)."""
    assert problems(
        tmp_path,
        "[redis]\nport = 70000\n[agents.flow]\nbatch_ops = 0\nsnaplength = 128\n"
        "[agents.nope]\nx = 1\n",
    ) == [
        "error: redis.port: must be at least 1 and at most 65535, got 70000",
        "error: agents.flow.batch_ops: must be at least 1 and at most 100000, got 0",
        "error: agents: unknown agent 'nope' (dnstap, flow, dnswire)",
        "warning: agents.flow.snaplength: unknown option, ignored",
    ]


def test_kafka_as_the_only_source_is_an_error_naming_the_alternatives(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n[redis]\nlisten = false\n"
        "[kafka]\nlisten = true\nserver = ['k1:9092']\ntopic = 'capture'\n",
    )
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    lines = done.stderr.splitlines()
    assert lines[:2] == [
        f"{path}: error: kafka.listen: pcapd does not read Kafka, and no other request source "
        "is enabled: use [redis] listen (pub/sub), [redis] stream_listen (a stream) or "
        "[sqs] listen instead",
        f"{path}: error: {NO_SOURCE}",
    ]
    assert len(lines) == 3 and lines[2].startswith(f"{path}: warning: kafka: "), lines
    # Beside another source, [kafka] is only a warning.
    path.write_text(path.read_text().replace("listen = false", "listen = true", 1))
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert "warning: kafka: pcapd does not read Kafka" in done.stderr


def test_cli_config_not_utf8_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    from tests.pcapd.test_cli_check_config import check_config

    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[general]\nlocaldir = "/tmp/caf\xe9"\n')
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"{path}: error: ")


def test_agent_sections_are_checked_by_their_agents(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n"
        '[agents.flow]\nrules = [{src = "nope", action = "lower_port"}]\n'
        "[agents.dnstap]\nttl_grace = -1\n"
        "[agents.foo]\nx = 1\n",
    )
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        f"{path}: error: agents.dnstap.ttl_grace: must be at least 1 and at most 2147483647, "
        "got -1",
        f"{path}: error: agents.flow.rules[0].src: unknown network 'nope'",
        f"{path}: error: agents: unknown agent 'foo' (dnstap, flow, dnswire)",
    ]


def test_an_unknown_agent_is_named_quoted_on_its_one_line(tmp_path: Path) -> None:
    """A TOML key may hold any text: printed bare, a newline in it would
    start a line of its own that reads as another message."""
    assert refused(
        tmp_path,
        '[general]\nwritelocal = true\n[agents."x\\nerror: forged"]\n[agents." "]\n',
    ) == [
        r"agents: unknown agent ' ' (dnstap, flow, dnswire)",
        r"agents: unknown agent 'x\nerror: forged' (dnstap, flow, dnswire)",
    ]


def test_keys_that_toml_quotes_are_quoted_on_their_one_line(tmp_path: Path) -> None:
    """Unknown options and sections, [agents.*] that are no table, [security]
    keys names: each key printed bare where TOML writes it bare, else quoted,
    so a newline in one cannot forge a line of its own."""
    path = write(
        tmp_path,
        '[general]\nwritelocal = true\n"x\\nerror: forged" = 1\n"a.b" = 2\nplain-key_1 = 3\n'
        '["y\\nerror: sect"]\na = 1\n'
        '[[interface]]\nname = "lo"\n"z\\nerror: k" = 2\n'
        '[agents.dnstap]\n"v\\nerror: dnstap" = 1\n',
    )
    done = check_config(path, "--agent-only")
    assert done.returncode == 0
    assert done.stderr.splitlines() == [f"{path}: warning: {line}" for line in [
        r"interface[0].'z\nerror: k': unknown option, ignored",
        r"general.'a.b': unknown option, ignored",
        "general.plain-key_1: unknown option, ignored",
        r"general.'x\nerror: forged': unknown option, ignored",
        r"'y\nerror: sect': unknown section, ignored",
        r"agents.dnstap.'v\nerror: dnstap': unknown option, ignored",
    ]]  # fmt: skip
    assert refused(
        tmp_path,
        "[general]\nwritelocal = true\n"
        '[security]\nkeys = {"k\\nerror: key" = "env:PCAPD_TEST_UNSET"}\n'
        '[agents]\n"w\\nerror: agent" = 1\n',
    ) == [
        r"agents.'w\nerror: agent': expected a table ([agents.'w\nerror: agent'])",
        r"security.keys.'k\nerror: key': environment variable PCAPD_TEST_UNSET is not set",
    ]


def test_a_secret_of_any_type_never_prints(tmp_path: Path) -> None:
    """A password written as a bare integer (or any non-string) is still a password."""
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n"
        "[redis]\nauth = 918273645\nurl = 7364519.25\n"
        "[cloudshark]\ntoken = [5550123, 'tok-5550124']\n"
        "[s3]\naccesskey = true\n"
        "[sqs]\naccesskey = 1979-05-27T07:32:00Z\n"
        "[security]\nkeys = { k1 = 4815162342 }\n",
    )
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    for secret in ("918273645", "7364519", "5550123", "5550124", "4815162342", "true", "1979"):
        assert secret not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"{path}: error: redis.url: expected a string, got a float (value not shown)",
        f"{path}: error: redis.auth: expected a string, got an integer (value not shown)",
        f"{path}: error: cloudshark.token: expected a string, got an array (value not shown)",
        f"{path}: error: s3.accesskey: expected a string, got a boolean (value not shown)",
        f"{path}: error: sqs.accesskey: expected a string, got a date or time (value not shown)",
        f'{path}: error: security.keys: expected a table of name = "secret"',
    ]
    agent = write(tmp_path, "[general]\nwritelocal = true\n[agents.dnstap]\nredis_url = 27182818\n")
    done = check_config(agent)
    assert (done.returncode, done.stdout) == (EXIT_CONFIG, "")
    assert done.stderr == (
        f"{agent}: error: agents.dnstap.redis_url: expected a string, got an integer "
        "(value not shown)\n"
    )


def test_agent_unknown_options_are_warnings_with_their_path(tmp_path: Path) -> None:
    """One unknown-key policy for the daemon's sections and every agent's."""
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\nmaxpacket = 5\n"
        "[agents.dnstap]\nsoket = '/run/x.sock'\n"
        '[agents.flow]\nsnaplength = 128\nrules = [{action = "lower_port", ports = [80]}]\n',
    )
    done = check_config(path)
    assert (done.returncode, done.stdout) == (0, f"{path}: ok (node {socket.gethostname()})\n")
    assert done.stderr.splitlines() == [
        f"{path}: warning: general.maxpacket: unknown option, ignored",
        f"{path}: warning: agents.dnstap.soket: unknown option, ignored",
        f"{path}: warning: agents.flow.rules[0].ports: unknown option, ignored",
        f"{path}: warning: agents.flow.snaplength: unknown option, ignored",
    ]


def test_cluster_config_errors_name_their_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n"
        "[redis]\ncluster = 'yes'\nnodes = ['127.0.0.1:7000', 'redis-a:99999']\n",
    )
    done = check_config(path)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        f"{path}: error: redis.cluster: expected true or false, got 'yes'",
        f"{path}: error: redis.nodes: each node must be HOST:PORT with a port in 1..65535, "
        "got 'redis-a:99999'",
    ]
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n[redis]\nnodes = ['127.0.0.1:7000']\n",
    )
    assert check_config(path).stderr.splitlines() == [
        f"{path}: error: redis.nodes: seed nodes are for a cluster: set cluster = true as well"
    ]
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n[redis]\ncluster = true\ndb = 2\n"
        "url = 'unix:///run/redis.sock'\n",
    )
    assert check_config(path).stderr.splitlines() == [
        f"{path}: error: redis.url: a cluster is reached over TCP: unix:// cannot be a cluster "
        "seed",
        f"{path}: error: redis.db: a Redis Cluster has only database 0, got 2",
    ]
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n[redis]\nurl = 'redis+cluster://:pw@10.0.0.1:7000/3'\n",
    )
    assert check_config(path).stderr.splitlines() == [
        f"{path}: error: redis.url: a Redis Cluster has only database 0 (path /0 or none), got '/3'"
    ]


def test_a_cluster_config_is_ok(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n[redis]\ncluster = true\nsharded_pubsub = true\n"
        "nodes = ['10.0.0.1:7000', 'redis-b.example:7001', '[::1]:7002']\n"
        "username = 'pcapd'\nauth = 'pw'\ntls = true\n",
    )
    done = check_config(path)
    assert (done.returncode, done.stderr) == (0, "")


NOT_IFACE = f"is not an interface name ({IFACE_RULE})"
HOSTILE = [
    # (file, its error lines): the daemon's sections, then the agents'
    ('[general]\nwritelocal = true\nnode = "web\\u0000"\n'
     '[redis]\ncluster = true\nnodes = ["127.0.0.1:\u00b2"]\n'
     '[[interface]]\nname = "../capture.pcap"\n'
     f'[[interface]]\nname = "{"e" * 300}"\n'
     "[agents]\nflow = 7\n",
     ["agents.flow: expected a table ([agents.flow])",
      "general.node: holds a control character U+0000 at character 3",
      "redis.nodes: each node must be HOST:PORT with a port in 1..65535, got '127.0.0.1:\u00b2'",
      f"interface[0].name: '../capture.pcap' {NOT_IFACE}",
      f"interface[1].name: '{'e' * 40}'\u2026 {NOT_IFACE}"]),
    ('[general]\nwritelocal = true\n'
     '[agents.dnstap]\nsocket_group = "wheel\\u0000"\n'
     '[agents.dnswire]\ninterface = "eth0/1"\nslot = "1/\u00b2"\n'
     '[agents.flow]\ninterface = ".."\n',
     ["agents.dnstap.socket_group: holds a control character U+0000 at character 5",
      f"agents.flow.interface: '..' {NOT_IFACE}",
      f"agents.dnswire.interface: 'eth0/1' {NOT_IFACE}",
      "agents.dnswire.slot: '1/\u00b2' is not I/N with 1 <= I <= N <= 4294967295"]),
]  # fmt: skip


def test_interface_names_linux_allows_are_accepted_and_others_named(tmp_path: Path) -> None:
    """Linux's rule (dev_valid_name: 1-15 bytes, no '/', whitespace, '.' or
    '..') in [[interface]], [agents.flow] and [agents.dnswire]: names such as
    tap#1 and wg+home are real devices."""
    path = write(
        tmp_path,
        '[general]\nwritelocal = true\n[[interface]]\nname = "tap#1"\nalias = ["vpn"]\n'
        '[[interface]]\nname = "\u00e90"\n[[interface]]\nname = "bluetooth-monitor"\n'
        '[agents.flow]\ninterface = "wg+home"\n[agents.dnswire]\ninterface = "v=100"\n',
    )
    done = check_config(path, "--agent-only")
    assert (done.returncode, done.stderr) == (0, "")
    names = ["a/b", "..", "x" * 16, "\u00e9" * 8, "eth 0", "eth0\t"]
    path = write(tmp_path, "[general]\nwritelocal = true\n" + "".join(
        f'[[interface]]\nname = "{name}"\n' for name in names
    ) + '[[interface]]\nname = "lo\\u0000"\n')  # fmt: skip
    done = check_config(path, "--agent-only")
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        *(
            f"{path}: error: interface[{i}].name: {name!r} {NOT_IFACE}"
            for i, name in enumerate(names)
        ),
        f"{path}: error: interface[{len(names)}].name: "
        "holds a control character U+0000 at character 2",
    ]
    path = write(tmp_path, '[general]\nwritelocal = true\n[agents.flow]\ninterface = "a b"\n'
                 '[agents.dnswire]\ninterface = "tap/1"\n')  # fmt: skip
    done = check_config(path, "--agent-only")
    assert done.stderr.splitlines() == [
        f"{path}: error: agents.flow.interface: 'a b' {NOT_IFACE}",
        f"{path}: error: agents.dnswire.interface: 'tap/1' {NOT_IFACE}",
    ]


def test_zero_padded_numbers_are_read_as_their_value(tmp_path: Path) -> None:
    """Leading zeros past int()'s 4300 digits: the number, not a traceback."""
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n"
        f'[redis]\ncluster = true\nnodes = ["127.0.0.1:{"0" * 5000}7000"]\n'
        f'[agents.dnswire]\ninterface = "lo"\nslot = "{PADDED}/2"\n',
    )
    done = check_config(path)
    assert (done.returncode, done.stderr) == (0, "")


# pcapdaemon loads any string as an alias and matches a request's exactly.
LONG_ALIAS = "a" * 40
ODD_ALIASES = f'["public", "public facing", "", "uplink/1", "..", "public", "{LONG_ALIAS}"]'


def test_any_clean_alias_loads_and_one_given_twice_is_a_warning(tmp_path: Path) -> None:
    """pcapdaemon loaded any alias, so its configs load: each clean alias as it
    is, without a warning; one given twice for an interface is kept once."""
    path = write(
        tmp_path,
        '[general]\nwritelocal = true\n[[interface]]\nname = "lo"\nalias = ["local"]\n'
        f'[[interface]]\nname = "eth0"\nalias = {ODD_ALIASES}\n',
    )
    done = check_config(path, "--agent-only")
    assert (done.returncode, done.stdout) == (0, f"{path}: ok (node {socket.gethostname()})\n")
    assert done.stderr.splitlines() == [
        f"{path}: warning: interface[1].alias[5]: 'public' is already an alias of 'eth0' "
        "(alias[0]); a request naming it captures there once",
    ]
    config = load_config(path)
    assert list(config.aliases()) == [
        "local", "public", "public facing", "", "uplink/1", "..", LONG_ALIAS,
    ]  # fmt: skip


def test_an_alias_that_is_not_clean_text_is_an_error(tmp_path: Path) -> None:
    """What a request may not name either (ALIAS_RULE): a terminal or log acts
    on control characters and hides or reorders text on format characters."""
    assert refused(
        tmp_path,
        '[general]\nwritelocal = true\n[[interface]]\nname = "lo"\n'
        'alias = ["local", "pub\\tlic", "x\\u001b[2J", "\\u202eevil", "a\\u200b", "a\\u2028"]\n',
    ) == [
        r"interface[0].alias[1]: 'pub\tlic' holds a control character U+0009 at character 3",
        r"interface[0].alias[2]: 'x\x1b[2J' holds a control character U+001B at character 1",
        r"interface[0].alias[3]: '\u202eevil' holds a format character U+202E at character 0",
        r"interface[0].alias[4]: 'a\u200b' holds a format character U+200B at character 1",
        r"interface[0].alias[5]: 'a\u2028' holds a line separator U+2028 at character 1",
    ]


def test_a_nul_in_a_list_of_strings_names_the_entry(tmp_path: Path) -> None:
    assert refused(
        tmp_path,
        "[general]\nwritelocal = true\n"
        '[redis]\ncluster = true\nnodes = ["127.0.0.1:7000", "127.0.0.1\\u0000:6379"]\n'
        '[[interface]]\nname = "lo"\nalias = ["pub\\u0000"]\n',
    ) == [
        "redis.nodes[1]: holds a control character U+0000 at character 9",
        r"interface[0].alias[0]: 'pub\x00' holds a control character U+0000 at character 3",
    ]


def test_a_control_character_in_a_string_names_its_field_and_code(tmp_path: Path) -> None:
    """ESC, DEL and C1 controls would reach logs, heartbeats and terminals
    raw; tab and newline pass (a BPF filter over several lines)."""
    assert refused(
        tmp_path,
        '[general]\nwritelocal = true\nnode = "web\\u001b[2J"\n'
        '[redis]\ncluster = true\nnodes = ["127.0.0.1:7000", "b\\u0085:7001"]\n'
        '[delivery]\nspool_dir = "/var/spool/\\u007f"\n',
    ) == [
        "general.node: holds a control character U+001B at character 3",
        "redis.nodes[1]: holds a control character U+0085 at character 1",
        "delivery.spool_dir: holds a control character U+007F at character 11",
    ]
    path = write(
        tmp_path,
        '[general]\nwritelocal = true\n[agents.flow]\nbpf = """udp\n\tand port 53"""\n',
    )
    done = check_config(path, "--agent-only")
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(("text", "errors"), HOSTILE, ids=["daemon", "agents"])
def test_hostile_values_exit_2_each_naming_its_field(
    tmp_path: Path, text: str, errors: list[str]
) -> None:
    """NULs, digits int() refuses, a section that is not a table, interface
    names libpcap could take for a path: each an error line, never a traceback."""
    path = write(tmp_path, text)
    done = check_config(path, "--agent-only")
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"{path}: error: {line}" for line in errors]


LONG = "9" * 5000  # past int()'s 4300 digits: a ValueError, not a number


def test_numbers_int_cannot_convert_or_would_misread_name_their_field(tmp_path: Path) -> None:
    """Digits past int()'s limit, and text int() reads but a port is not
    ("5_300", "+53", other scripts' digits): each an error line, exit 2."""
    path = write(
        tmp_path, f'[general]\nwritelocal = true\n[redis]\ncluster = true\nnodes = ["h:{LONG}"]\n'
    )
    done = check_config(path, "--agent-only")
    assert (done.returncode, done.stderr) == (EXIT_CONFIG, (
        f"{path}: error: redis.nodes: each node must be HOST:PORT with a port in 1..65535, got "
        f"'h:{LONG[:78]}'\n"
    ))  # fmt: skip
    path = write(
        tmp_path,
        "[general]\nwritelocal = true\n"
        f'[agents.dnstap]\nsocket_mode = "+660"\nlisten = "127.0.0.1:{LONG}"\n'
        'metrics_listen = "127.0.0.1:5_300"\n'
        f'[agents.dnswire]\nslot = "{LONG}/2"\nudp_dst = ["127.0.0.1:+53"]\n'
        'listen = "127.0.0.1:\u0665\u0663"\n',
    )
    done = check_config(path, "--agent-only")
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr
    digits = "9" * 20
    assert done.stderr.splitlines() == [f"{path}: error: {line}" for line in [
        "agents.dnstap.socket_mode: '+660' is not an octal mode such as \"0660\"",
        f"agents.dnstap.listen: '127.0.0.1:{'9' * 70}': port '{digits}' is not a port in "
        "0..65535",
        "agents.dnstap.metrics_listen: '127.0.0.1:5_300': port '5_300' is not a port in 0..65535",
        f"agents.dnswire.slot: '{'9' * 40}' is not I/N with 1 <= I <= N <= 4294967295",
        "agents.dnswire.udp_dst: '127.0.0.1:+53': port '+53' is not a port in 1..65535",
        "agents.dnswire.listen: '127.0.0.1:\u0665\u0663': port '\u0665\u0663' is not a port in "
        "0..65535",
    ]]  # fmt: skip


def _example_keys() -> list[tuple[str, str]]:
    """(section, key) for every option config.toml.example shows, set or commented."""
    found, section = [], ""
    example = Path(__file__).parents[2] / "config.toml.example"
    for line in example.read_text().splitlines():
        if heading := re.match(r"#?\s*\[+([\w.]+)\]+\s*$", line):
            section = heading[1]
        elif (option := re.match(r"#?\s*([a-z_0-9]+) = ", line)) and section:
            found.append((section, option[1]))
    return sorted(set(found))


def _field_line() -> re.Pattern[str]:
    """What every error line starts with: the fields it is about, as the
    messages name them (`redis.port`, `interface[0].name`, `agents.flow.rules[1].src`,
    `sqs.accessid, sqs.accesskey`, `interface[0].lookback_bytes=2097152`), then
    ": ". A whole section is named alone (`agents.flow: expected a table`);
    a key below the example's (a [security] keys name, an [agents.*] name, a
    rule's field) may be any text on the line: one TOML would quote is quoted."""
    sections = sorted({s for s, _ in _example_keys()} | {"agents"}, key=len, reverse=True)
    keys = sorted({k for _, k in _example_keys()}, key=len, reverse=True)
    section = "(?:" + "|".join(map(re.escape, sections)) + r")(?:\[\d+\])?"
    key = "(?:" + "|".join(map(re.escape, keys)) + r")(?:\[\d+\])?"
    field = rf"(?:{section}(?:\.{key}(?:\..*)?)?|agents\..*)(?:=[^,:]*)?"
    return re.compile(rf"{field}(?:, {field})*: \S")


FIELD_LINE = _field_line()
TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=20)
# Values that once raised past the checks: drawn as often as all the rest.
PADDED = "0" * 5000 + "1"  # past int()'s 4300 digits until the zeros are stripped
SHARP = st.sampled_from(["h:\u00b2", ["h:\u00b2"], "1/\u00b2", "a/b", "x" * 300, "a\x00",
                         PADDED, "h:" + PADDED, ["h:" + PADDED], "1/" + PADDED])  # fmt: skip
HOSTILE_VALUE = SHARP | st.recursive(
    st.booleans() | st.integers() | st.floats() | TEXT | st.sampled_from([10**30, -(2**63)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=1000)
@given(
    changes=st.lists(st.tuples(st.sampled_from(_example_keys()), HOSTILE_VALUE), max_size=4),
    whole=st.none() | st.tuples(st.sampled_from(["general", "redis", "agents", "agents.flow",
                                                 "agents.dnstap", "agents.dnswire", "interface"]),
                                HOSTILE_VALUE),
)  # fmt: skip
def test_any_value_at_any_level_is_an_error_naming_its_field(
    changes: list[tuple[tuple[str, str], Any]], whole: tuple[str, Any] | None
) -> None:
    """What check-config runs (the file's sections, then each agent's), on
    values TOML can hold and command-line overrides can (lone surrogates):
    a ConfigError whose lines name a field, or a config; never another error.
    Every error and warning is one line with nothing a terminal acts on:
    values and keys (any text) are quoted."""
    data: dict[str, Any] = {"general": {"writelocal": True}}
    for (section, key), value in changes:
        if section == "interface":  # [[interface]]: an array of tables
            table = data.setdefault("interface", [{"name": "lo"}])[0]
        else:
            table = data
            for part in section.split("."):
                table = table.setdefault(part, {})
        table[key] = value
    if whole is not None:
        section, value = whole
        parent = data.setdefault("agents", {}) if section.startswith("agents.") else data
        parent[section.removeprefix("agents.")] = value
    lines: list[str] = []
    try:
        config = parse_config(data, "node1")
        lines += [*config.warnings, *config.serve_problems()]
        for agent in load_agents():
            if agent.SECTION in config.agents:  # as check-config reads them
                lines += agent.check_section(dict(config.agents[agent.SECTION])).warnings
    except ConfigError as exc:
        assert exc.errors
        for line in exc.errors:
            assert FIELD_LINE.match(line), line
        lines += exc.errors
    for line in lines:
        assert line.isprintable(), line

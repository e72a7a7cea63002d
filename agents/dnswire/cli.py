"""Two command lines over one `[agents.dnswire]` config.

- `dnsflow`: DNSFlow's own flags with DNSFlow's meanings, so a unit running
  `dnsflow -i eth0 -u 10.0.0.5 -M 0` keeps working. It records into Redis
  only when given `--redis URL` or `--config FILE` (DNSFlow had no Redis).
- `pcapd agent dnswire`: long options, `-c FILE` for the pcapd config;
  records into Redis by default, exports when given `--udp-dst`/`--write`.

Each option overrides the config key of the same meaning; errors name the
option the user typed. A bad command line is one line on stderr and exit 2
(`EXIT_CONFIG`), never argparse's usage block or a traceback; what a restart
may cure (a device, a file, a held PID file) exits 1.

Where `dnsflow` follows dnsflow.c past what argparse would do: without -i
or -r it captures on libpcap's default device; -P may be given more than
once (an init script passes its own before the user's options) and every
file is held; `-r -` reads standard input and `-w -` writes standard output,
as libpcap takes "-". Where it is stricter, on purpose, each with its own
error: numbers are ASCII digits (atoi read `-M x` as 0, half the CPUs, and
`-s 70000` as 4464; int() would read `1_0` as 10), an empty value is
refused (`-P ""` was a failed open, `-f ""` a filter keeping every packet),
-i with -r, -m with -M, and words that are no flag's value are errors where
dnsflow.c ignored them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NoReturn

from pcapd.core.config import ConfigError, RedisConfig, load_config
from pcapd.core.configread import MAX_PORT
from pcapd.core.fields import MAX_DIGITS, whole_number
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE
from pcapd.core.logs import event, setup_agent_logging

if TYPE_CHECKING:  # the agent's modules load only once the flags are read
    from agents.dnswire.config import DnswireConfig

log = logging.getLogger("pcapd.agents.dnswire")

# config key -> the dnsflow flag that sets it, for error messages
DNSFLOW_FLAGS = {
    "interface": "-i", "read": "-r", "bpf": "-f", "slot": "-m", "processes": "-M",
    "promisc": "-p", "pidfile": "-P", "sample_rate": "-s", "udp_dst": "-u", "write": "-w",
    "pcap_record_port": "-X", "jmirror_port": "-J", "mdns": "-Y", "ports": "-d",
    "checksum_slots": "-c", "redis_url": "--redis",
}  # fmt: skip
LONG_FLAGS = {key: "--" + key.replace("_", "-") for key in DNSFLOW_FLAGS}
LONG_FLAGS.update(bpf="--filter", promisc="--no-promisc", udp_dst="--udp-dst", ports="--port")


@dataclass(frozen=True, slots=True)
class Command:
    """Which command runs the agent: the name its lines begin with, the flag
    each config key is typed as, and whether no -i/-r means libpcap's
    default device (dnsflow.c's) or an error."""

    prog: str
    flags: dict[str, str]
    default_device: bool


DNSFLOW = Command("dnsflow", DNSFLOW_FLAGS, default_device=True)
AGENT = Command("pcapd agent dnswire", LONG_FLAGS, default_device=False)


MAX_LINE = 400  # characters of one error line; a longer one is cut with "..."
MAX_PATH = 200  # characters of the config file's path before its error
SHOWN = 20  # characters of a bad value quoted back by a flag's type
ANY_NUMBER = int("9" * MAX_DIGITS)  # whole_number refuses more digits than that


def _shown(text: str) -> str:
    """`text[:SHOWN]` quoted, its escapes for what a terminal would act on."""
    return repr(text[:SHOWN]) + ("..." if len(text) > SHOWN else "")


def _port(text: str) -> int:
    number = whole_number(text, 1, MAX_PORT)
    if number is None:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a port number (1-{MAX_PORT})")
    return number


def _whole(text: str) -> int:
    """-M, -s: ASCII digits, a leading "-" kept so the config's rule names the
    bound (`must be at least 0 ..., got -1`). dnsflow.c's atoi read `x` as 0
    (for -M, half the CPUs) and `4x` as 4; int() reads `1_0` as 10, ` 4` and
    other scripts' digits: each is refused, named."""
    digits = text.removeprefix("-")
    number = whole_number(digits, 0, ANY_NUMBER)
    if number is None:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number (digits 0-9)")
    return -number if digits != text else number


class UsageError(Exception):
    """A command line argparse cannot read: its message, one line."""


class DnsflowParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises `UsageError` (`dnsflow_main`
    prints it as one line and returns `EXIT_CONFIG`) instead of printing the
    usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(text: str) -> str:
    """`text` as one printable line of at most MAX_LINE characters: what a
    terminal or a log would act on (control characters, lone surrogates) as
    its escape, argparse's "argument -M:" as "-M:", as the config's errors."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = text.removeprefix("argument ")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + "..."


def dnsflow_parser() -> argparse.ArgumentParser:
    p = DnsflowParser(
        prog="dnsflow",
        description="Sniff DNS responses (DNSFlow's job and flags): export DNSFlow v4 UDP "
        "records and/or record ShoDoHFlo's per-client keys in Redis.",
    )
    p.add_argument("-i", dest="interface", metavar="interface",
                   help="capture live here (default: libpcap's default device)")  # fmt: skip
    p.add_argument("-r", dest="read", metavar="pcap_file", help="read a capture file (- stdin)")
    p.add_argument("-f", dest="bpf", metavar="filter_expression", help="replace the filter")
    p.add_argument("-m", dest="slot", metavar="proc_i/n_procs", help="take one slot of n")
    p.add_argument("-M", dest="processes", type=_whole, metavar="n_procs",
                   help="run n processes, one slot each (0: half the CPUs)")  # fmt: skip
    p.add_argument("-p", dest="promisc", action="store_false", default=None,
                   help="do not put the interface in promiscuous mode")  # fmt: skip
    p.add_argument("-P", dest="pidfile", action="append", metavar="pidfile",
                   help="refuse to start while held (repeatable: each is held)")  # fmt: skip
    p.add_argument("-s", dest="sample_rate", type=_whole, metavar="sample_rate",
                   help="keep 1 in N responses, at random")  # fmt: skip
    p.add_argument("-u", dest="udp_dst", action="append", metavar="udp_dst",
                   help="export to this IPv4 ADDR[:PORT] (5300), up to 10")  # fmt: skip
    p.add_argument("-w", dest="write", metavar="pcap_file_dst",
                   help="write the export packets to this pcap file (- stdout)")  # fmt: skip
    p.add_argument("-X", dest="pcap_record_port", type=_port, metavar="pcap_record_recv_port",
                   help="decode pcap records sent over UDP to this port")  # fmt: skip
    p.add_argument("-J", dest="jmirror_port", type=_port, metavar="jmirror_port",
                   help="decode Juniper jmirror sent to this port (usually 30030)")  # fmt: skip
    p.add_argument("-Y", dest="mdns", action="store_true", default=None,
                   help="add the mDNS port (5353)")  # fmt: skip
    p.add_argument("-d", dest="ports", action="append", type=_port, metavar="port",
                   help="another DNS source port (repeatable)")  # fmt: skip
    p.add_argument("-c", dest="checksum_slots", action="store_true", default=None,
                   help="slot IPv4 by UDP checksum (with -M)")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="pcapd TOML ([redis], [agents.dnswire])")
    p.add_argument("--redis", dest="redis_url", metavar="URL", help="also record into Redis")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


AGENT_DESCRIPTION = (
    "Sniff DNS responses and record ShoDoHFlo's per-client keys in Redis, as the dnstap "
    "agent does; optionally export DNSFlow v4 records. Options override [agents.dnswire] "
    "in the config file."
)


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """`pcapd agent dnswire`'s long options (DNSFlow's flags spelt out)."""
    p.add_argument("-c", "--config", metavar="FILE", help="TOML with [redis], [agents.dnswire]")
    p.add_argument("--interface", help="capture live on this interface")
    p.add_argument("--read", metavar="FILE.pcap", help="read a capture file instead")
    p.add_argument("--filter", dest="bpf", help="BPF filter replacing the built one")
    p.add_argument("--slot", metavar="I/N", help="take slot I of N (DNSFlow -m)")
    p.add_argument("--processes", type=_whole, metavar="N", help="N processes (0: half the CPUs)")
    p.add_argument("--no-promisc", dest="promisc", action="store_false", default=None)
    p.add_argument("--pidfile", action="append",
                   help="refuse to start while another process holds it (repeatable)")  # fmt: skip
    p.add_argument("--sample-rate", type=_whole, metavar="N", help="keep 1 in N responses")
    p.add_argument("--udp-dst", action="append", metavar="ADDR[:PORT]",
                   help="export DNSFlow v4 records here (port 5300), up to 10")  # fmt: skip
    p.add_argument("--write", metavar="FILE.pcap", help="write the export packets to a file")
    p.add_argument("--pcap-record-port", type=_port, metavar="PORT")
    p.add_argument("--jmirror-port", type=_port, metavar="PORT")
    p.add_argument("--mdns", action="store_true", default=None, help="add port 5353")
    p.add_argument("--port", dest="ports", action="append", type=_port, help="DNS source port")
    p.add_argument("--checksum-slots", action="store_true", default=None)
    p.add_argument(
        "--redis-url", help="redis://, rediss://, unix://, or redis+cluster:// (overrides [redis])"
    )
    p.add_argument("--no-redis", dest="record", action="store_false", default=None,
                   help="export only, record nothing in Redis")  # fmt: skip
    p.add_argument("--stats-interval", type=float, help="seconds between stats lines (60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


_KEYS = (*DNSFLOW_FLAGS, "record", "stats_interval")


def _settings(
    args: argparse.Namespace, config_path: str | None, record_default: bool
) -> tuple[DnswireConfig, RedisConfig]:
    from agents.dnswire.config import parse_dnswire_config

    config = load_config(config_path) if config_path else None
    setup_agent_logging(config, args.log_level)
    base_redis, raw = RedisConfig(), {}
    if config is not None:
        base_redis, raw = config.redis, dict(config.agents.get("dnswire", {}))
    raw.setdefault("record", record_default)
    raw.update({k: getattr(args, k) for k in _KEYS if getattr(args, k, None) is not None})
    try:
        cfg = parse_dnswire_config(raw)
    except ConfigError as exc:
        raise ConfigError(exc.errors, config_path, exc.warnings) from None
    redis_cfg = base_redis if cfg.redis_url is None else base_redis.with_url(cfg.redis_url)
    return cfg, redis_cfg


# What takes a value that may not be empty (a list's items too); "config" is
# not a key of [agents.dnswire] but names the file.
_TEXT_KEYS = ("interface", "read", "bpf", "slot", "pidfile", "write", "redis_url", "config")


def _empty_values(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """An empty value given on the command line: an error, where the config's
    "" (TOML has no null) is "not given". dnsflow.c failed to open `-P ""`,
    `-w ""` and `-r ""` and kept every packet with `-f ""`; taking each as
    absent would run something else than the line says, silently."""
    problems = []
    for key in _TEXT_KEYS:
        value = getattr(args, key, None)
        values = value if isinstance(value, list) else [value]
        if "" in values:
            flag = flags.get(key, "--config")  # the long name under both commands
            problems.append(f"{flag}: empty; give a value, or leave {flag} out")
    return problems


def prepare(
    command: Command, args: argparse.Namespace, record_default: bool
) -> tuple[DnswireConfig, RedisConfig] | int:
    """The config the command line and the file make, checked; or, each
    problem printed as one line naming the flag typed, `EXIT_CONFIG`."""
    prog, flags = command.prog, command.flags
    try:
        problems = _empty_values(args, flags)
        if problems:
            raise ConfigError(problems)
        cfg, redis_cfg = _settings(args, args.config, record_default)
        if cfg.interface is None and cfg.read is None and not command.default_device:
            problems.append(f"{flags['interface']} or {flags['read']}: give an interface or a file")
        if not cfg.record and not cfg.udp_dst and not cfg.write:
            problems.append(f"output dst missing: give {flags['udp_dst']}, {flags['write']} "
                            "or a Redis to record into")  # fmt: skip
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        if exc.path is not None and len(exc.path) > MAX_PATH:  # the error stays on its line
            exc = ConfigError(exc.errors, exc.path[:MAX_PATH] + "...", exc.warnings)
        # A value typed on the command line is named by its flag; one from
        # the config file keeps its key.
        given = {k: flags[k] for k in flags if getattr(args, k, None) is not None}
        for line in exc.lines():
            for key, flag in given.items():
                line = line.replace(f"agents.dnswire.{key}:", f"{flag}:")
            print(f"{prog}: {one_line(line)}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in cfg.warnings:
        print(f"{prog}: warning: {one_line(warning)}", file=sys.stderr)
    return cfg, redis_cfg


def _runtime_message(text: str, flags: dict[str, str]) -> str:
    """An AgentError names dnsflow's flag (`-r 'x': no such file`); under
    `pcapd agent dnswire` the long option the user typed."""
    for key in ("read", "bpf", "pidfile", "write"):
        short = DNSFLOW_FLAGS[key] + " "
        if text.startswith(short):
            return flags[key] + " " + text.removeprefix(short)
    return text


def _run(command: Command, args: argparse.Namespace, record_default: bool) -> int:
    prepared = prepare(command, args, record_default)
    if isinstance(prepared, int):
        return prepared
    cfg, redis_cfg = prepared

    from agents.dnswire.service import hold_pidfiles, run_one, supervise
    from agents.dnswire.source import AgentError, default_interface
    from pcapd.core.redis_conn import Client, connect

    connector: Callable[[], Client] | None = (lambda: connect(redis_cfg)) if cfg.record else None
    if cfg.record:
        event(log, "dnswire_redis", target=redis_cfg.describe())
    try:
        if cfg.interface is None and cfg.read is None:  # dnsflow.c: pcap_lookupdev()
            cfg = replace(cfg, interface=default_interface())
            event(log, "dnswire_default_device", interface=cfg.interface)
        hold_pidfiles(cfg.pidfile)
        if cfg.process_count > 1:
            return supervise(cfg, connector)
        return run_one(cfg, connector)
    except AgentError as exc:
        why = one_line(_runtime_message(str(exc), command.flags))
        print(f"{command.prog}: error: {why}", file=sys.stderr)
        return EXIT_FAILURE


def dnsflow_args(argv: Sequence[str]) -> argparse.Namespace | int:
    """`dnsflow`'s flags read, or, the error printed as one line, `EXIT_CONFIG`
    (`-h` prints the help and exits 0, as argparse does)."""
    try:
        return dnsflow_parser().parse_args(argv)
    except UsageError as exc:
        print(f"dnsflow: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG


def dnsflow_main(argv: Sequence[str] | None = None) -> int:
    """The `dnsflow` console script."""
    args = dnsflow_args(sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args
    record = args.redis_url is not None or args.config is not None
    return _run(DNSFLOW, args, record)


def agent_main(args: argparse.Namespace) -> int:
    """`pcapd agent dnswire`, its arguments parsed by pcapd/cli/agent_dnswire.py."""
    return _run(AGENT, args, True)


def console() -> None:
    sys.exit(dnsflow_main())


if __name__ == "__main__":  # python -m agents.dnswire.cli, as the console script
    console()

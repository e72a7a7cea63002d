"""Two command lines over one `[agents.dnswire]` config.

- `dnsflow`: DNSFlow's own flags with DNSFlow's meanings, so a unit running
  `dnsflow -i eth0 -u 10.0.0.5 -M 0` keeps working. It records into Redis
  only when given `--redis URL` or `--config FILE` (DNSFlow had no Redis).
- `pcapd agent dnswire`: long options, `-c FILE` for the pcapd config;
  records into Redis by default, exports when given `--udp-dst`/`--write`.

Each option overrides the config key of the same meaning; errors name the
option the user typed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pcapd.core.config import ConfigError, RedisConfig, load_config
from pcapd.core.configread import MAX_PORT
from pcapd.core.fields import whole_number
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


def _port(text: str) -> int:
    number = whole_number(text, 0, MAX_PORT)
    if number is None:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a port number (0-{MAX_PORT})")
    return number


def dnsflow_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnsflow",
        description="Sniff DNS responses (DNSFlow's job and flags): export DNSFlow v4 UDP "
        "records and/or record ShoDoHFlo's per-client keys in Redis.",
    )
    p.add_argument("-i", dest="interface", metavar="interface", help="capture live here")
    p.add_argument("-r", dest="read", metavar="pcap_file", help="read a capture file")
    p.add_argument("-f", dest="bpf", metavar="filter_expression", help="replace the filter")
    p.add_argument("-m", dest="slot", metavar="proc_i/n_procs", help="take one slot of n")
    p.add_argument("-M", dest="processes", type=int, metavar="n_procs",
                   help="run n processes, one slot each (0: half the CPUs)")  # fmt: skip
    p.add_argument("-p", dest="promisc", action="store_false", default=None,
                   help="do not put the interface in promiscuous mode")  # fmt: skip
    p.add_argument("-P", dest="pidfile", metavar="pidfile", help="refuse to start while held")
    p.add_argument("-s", dest="sample_rate", type=int, metavar="sample_rate",
                   help="keep 1 in N responses, at random")  # fmt: skip
    p.add_argument("-u", dest="udp_dst", action="append", metavar="udp_dst",
                   help="export to this IPv4 ADDR[:PORT] (5300), up to 10")  # fmt: skip
    p.add_argument("-w", dest="write", metavar="pcap_file_dst",
                   help="write the export packets to this pcap file")  # fmt: skip
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
    p.add_argument("--processes", type=int, metavar="N", help="N processes (0: half the CPUs)")
    p.add_argument("--no-promisc", dest="promisc", action="store_false", default=None)
    p.add_argument("--pidfile", help="refuse to start while another process holds it")
    p.add_argument("--sample-rate", type=int, metavar="N", help="keep 1 in N responses")
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
        raise ConfigError(exc.errors, config_path) from None
    redis_cfg = base_redis if cfg.redis_url is None else base_redis.with_url(cfg.redis_url)
    return cfg, redis_cfg


def _run(
    prog: str,
    args: argparse.Namespace,
    config_path: str | None,
    record_default: bool,
    flags: dict[str, str],
) -> int:
    from agents.dnswire.agent import AgentError
    from agents.dnswire.service import hold_pidfile, run_one, supervise
    from pcapd.core.redis_conn import Client, connect

    try:
        cfg, redis_cfg = _settings(args, config_path, record_default)
        problems = []
        if cfg.interface is None and cfg.read is None:
            problems.append(f"{flags['interface']} or {flags['read']}: give an interface or a file")
        if not cfg.record and not cfg.udp_dst and not cfg.write:
            problems.append(f"output dst missing: give {flags['udp_dst']}, {flags['write']} "
                            "or a Redis to record into")  # fmt: skip
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        # A value typed on the command line is named by its flag; one from
        # the config file keeps its key.
        given = {k: flags[k] for k in flags if getattr(args, k, None) is not None}
        for line in exc.lines():
            for key, flag in given.items():
                line = line.replace(f"agents.dnswire.{key}:", f"{flag}:")
            print(f"{prog}: {line}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in cfg.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    connector: Callable[[], Client] | None = (lambda: connect(redis_cfg)) if cfg.record else None
    if cfg.record:
        event(log, "dnswire_redis", target=redis_cfg.describe())
    try:
        if cfg.pidfile:
            hold_pidfile(cfg.pidfile)
        if cfg.process_count > 1:
            return supervise(cfg, connector)
        return run_one(cfg, connector)
    except AgentError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def dnsflow_main(argv: list[str] | None = None) -> int:
    """The `dnsflow` console script."""
    args = dnsflow_parser().parse_args(sys.argv[1:] if argv is None else argv)
    record = args.redis_url is not None or args.config is not None
    return _run("dnsflow", args, args.config, record, DNSFLOW_FLAGS)


def agent_main(args: argparse.Namespace) -> int:
    """`pcapd agent dnswire`, its arguments parsed by pcapd/cli/agent_dnswire.py."""
    return _run("pcapd agent dnswire", args, args.config, True, LONG_FLAGS)


def console() -> None:
    sys.exit(dnsflow_main())

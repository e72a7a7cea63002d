"""`pcapd` command line: one module per command, imported only when it runs.

To add a command, write `pcapd/cli/<module>.py` with `register(subparsers)`,
which calls `common.add_command(subparsers, "<name>", run, ...)` and adds its
options; `run(args)` returns the exit status and lets a `ConfigError` or
`UsageError` go up to be printed. Then list it in `COMMANDS`, or in `AGENTS`
for `pcapd agent <name>`, with the one line `pcapd --help` shows for it (the
module passes no `help=`: that line is written here, so listing the commands
imports none of them). An agent module also names its config section
(`SECTION`) and the function that validates it (`check_section`), which
`pcapd check-config` runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pcapd.cli.common import AgentCommand, Command, guarded


@dataclass(frozen=True, slots=True)
class Listed:
    """A command as `pcapd --help` lists it, before its module is imported."""

    name: str  # as typed after `pcapd` (or `pcapd agent`)
    module: str  # pcapd/cli/<module>.py
    help: str  # its line in the parent's --help

    def load(self) -> Command:
        return cast(Command, importlib.import_module(f"{__name__}.{self.module}"))


COMMANDS: tuple[Listed, ...] = (
    Listed("serve", "serve", "run the capture daemon"),
    Listed("capture", "capture", "one bounded capture to a file, like tcpdump -w"),
    Listed("trigger", "trigger", "publish a capture request"),
    Listed("results", "results", "follow result events"),
    Listed("nodes", "nodes", "list the capture nodes, or which would take a request"),
    Listed("health", "health", "ask a running pcapd process whether it is ready"),
    Listed("check-config", "check_config", "validate a config file, printing every error"),
    Listed("spool", "spool", "show or retry captures waiting in the spool"),
    Listed("correlate", "correlate", "show clients, or one client's chains name → address → flow"),
    Listed("web", "web", "serve the correlator web page and JSON API"),
)
AGENTS: tuple[Listed, ...] = (
    Listed("dnstap", "agent_dnstap", "dnstap from BIND/Unbound into Redis"),
    Listed("flow", "agent_flow", "flows, TCP RST and ICMP unreachable into Redis"),
    Listed("dnswire", "agent_dnswire", "DNS answers sniffed off the wire into Redis"),
    Listed("dnsflow-ingest", "agent_dnsflow_ingest", "DNSFlow v4 records from sensors into Redis"),
)


def load_agents() -> list[AgentCommand]:
    """Every agent's module (for the config sections they validate)."""
    return [cast(AgentCommand, entry.load()) for entry in AGENTS]


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


class _LazySubParsers(_SubParsers):
    """Subcommands that stay placeholders (name and help line) until chosen:
    the chosen one's module is imported then and registers its real parser.
    Importing every module at start cost ~0.5 s per call of `pcapd`."""

    listed: dict[str, Listed]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        entry = self.listed.pop(values[0], None)
        if entry is not None:
            # The placeholder's help line stays listed; the module adds none.
            del self._name_parser_map[entry.name]
            entry.load().register(self)
        super().__call__(parser, namespace, values, option_string)


def _add_listed(
    parser: argparse.ArgumentParser, listed: tuple[Listed, ...], dest: str, metavar: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    sub = parser.add_subparsers(action=_LazySubParsers, dest=dest, required=True, metavar=metavar)
    assert isinstance(sub, _LazySubParsers)
    sub.listed = {entry.name: entry for entry in listed}
    for entry in listed:
        sub.add_parser(entry.name, help=entry.help)
    return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcapd",
        description="On-demand bounded packet captures triggered over Redis, "
        "and agents that record DNS answers and flows in Redis.",
    )
    sub = _add_listed(parser, COMMANDS, "command", "COMMAND")
    agent = sub.add_parser(
        "agent", help="run a collector that fills Redis (dnstap, flow, dnswire, dnsflow-ingest)",
        description="Run a long-lived agent. `pcapd agent AGENT --help` describes each.",
    )  # fmt: skip
    _add_listed(agent, AGENTS, "agent", "AGENT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest and not args.takes_rest:
        args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    status: int = guarded(lambda: args.run(args), args.prefix)
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""`pcapd` command line: one module per command.

To add a command, write `pcapd/cli/<name>.py` with `register(subparsers)`,
which calls `common.add_command(subparsers, "<name>", run, ...)` and adds its
options; `run(args)` returns the exit status and lets a `ConfigError` or
`UsageError` go up to be printed. Then list the module in `COMMANDS`, or in
`AGENTS` for `pcapd agent <name>`. An agent module also names its config
section (`SECTION`) and the function that validates it (`check_section`),
which `pcapd check-config` runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pcapd.cli import (
    agent_dnsflow_ingest,
    agent_dnstap,
    agent_dnswire,
    agent_flow,
    capture,
    check_config,
    correlate,
    health,
    nodes,
    results,
    serve,
    spool,
    trigger,
    web,
)
from pcapd.cli.common import AgentCommand, Command, guarded

COMMANDS: tuple[Command, ...] = (
    serve, capture, trigger, results, nodes, health, check_config, spool, correlate, web,
)  # fmt: skip
AGENTS: tuple[AgentCommand, ...] = (agent_dnstap, agent_flow, agent_dnswire, agent_dnsflow_ingest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcapd",
        description="On-demand bounded packet captures triggered over Redis, "
        "and agents that record DNS answers and flows in Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    agent = sub.add_parser(
        "agent", help="run a collector that fills Redis (dnstap, flow, dnswire, dnsflow-ingest)",
        description="Run a long-lived agent. `pcapd agent AGENT --help` describes each.",
    )  # fmt: skip
    agents = agent.add_subparsers(dest="agent", required=True, metavar="AGENT")
    for module in AGENTS:
        module.register(agents)
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

"""`pcapd check-config FILE`: every problem `serve` and the agents would refuse."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from pcapd.cli.common import Subparsers, add_command
from pcapd.core.config import ConfigError, parse_config, read_toml
from pcapd.core.lifecycle import EXIT_OK


def _run(args: argparse.Namespace) -> int:
    data = read_toml(args.config)
    try:
        config = parse_config(data)
    except ConfigError as exc:
        # The agents' sections are checked all the same: every problem at once.
        agents = data.get("agents")
        tables = agents if isinstance(agents, dict) else {}
        problems, warnings = _agent_checks({k: v for k, v in tables.items() if isinstance(v, dict)})
        raise ConfigError([*exc.errors, *problems], args.config,
                          [*exc.warnings, *warnings]) from None  # fmt: skip
    problems = [] if args.agent_only else config.serve_problems()
    agent_problems, agent_warnings = _agent_checks(config.agents)
    problems += agent_problems
    warnings = [*config.warnings, *agent_warnings]
    if problems:
        # The status `serve` would exit with at start-up, through the same
        # path: the warnings after the errors, as every command prints them.
        raise ConfigError(problems, args.config, warnings)
    for warning in warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok (node {config.general.node})")
    return EXIT_OK


def _agent_checks(agents: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Errors and warnings in the [agents.*] sections (`agents`: name ->
    table), which each agent validates itself."""
    if not agents:
        return [], []  # the agents' modules (and Redis clients) need not be imported
    from pcapd.cli import load_agents

    known = {agent.SECTION: agent for agent in load_agents()}
    problems: list[str] = []
    warnings: list[str] = []
    for name, agent in known.items():
        if name not in agents:
            continue
        try:
            warnings.extend(agent.check_section(dict(agents[name])).warnings)
        except ConfigError as exc:
            problems.extend(exc.errors)
            warnings.extend(exc.warnings)
    unknown = sorted(set(agents) - known.keys())
    names = ", ".join(known)
    # Quoted: a TOML key may hold any text, a newline too.
    problems.extend(f"agents: unknown agent {name!r} ({names})" for name in unknown)
    return problems, warnings


def register(subparsers: Subparsers) -> None:
    check = add_command(
        subparsers, "check-config", _run,
        description="Validate a config file. Prints every error, each naming its field; "
        "exits 2 if there is any, as `pcapd serve` would with that file (or, for an "
        "[agents.*] section, which serve does not read, that agent).",
    )  # fmt: skip
    check.add_argument("config", metavar="FILE")
    check.add_argument(
        "--agent-only", action="store_true",
        help="the file only configures agents: skip the checks for `serve`",
    )  # fmt: skip

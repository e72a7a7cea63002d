"""`pcapd` command line: serve, capture, trigger, results, check-config, agent."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pcapd.config import ConfigError, load_config


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{exc.path}: error: {error}", file=sys.stderr)
        return 1
    problems = [] if args.agent_only else config.serve_problems()
    for warning in config.warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"{args.config}: error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: ok (node {config.general.node})")
    return 0


def _agent(args: argparse.Namespace) -> int:
    if args.agent == "dnstap":
        from agents.dnstap.cli import main as dnstap_main

        return dnstap_main(args.agent_args)
    from agents.flow.cli import main as flow_main

    return flow_main(args.agent_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcapd",
        description="On-demand bounded packet captures, and agents that feed Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check-config", help="validate a config file, printing every error",
        description="Validate a config file. Prints every error, each naming its field; "
        "exits 1 if there is any.",
    )  # fmt: skip
    check.add_argument("config", metavar="FILE")
    check.add_argument(
        "--agent-only", action="store_true",
        help="the file only configures agents: skip the checks for `serve`",
    )  # fmt: skip
    check.set_defaults(func=_check_config)

    agent = sub.add_parser(
        "agent", help="run a collector that fills Redis (dnstap, flow)",
        description="Run a long-lived agent. `pcapd agent dnstap --help` and "
        "`pcapd agent flow --help` describe each.",
    )  # fmt: skip
    agent.add_argument("agent", choices=("dnstap", "flow"))
    agent.add_argument("agent_args", nargs=argparse.REMAINDER, metavar="...")
    agent.set_defaults(func=_agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

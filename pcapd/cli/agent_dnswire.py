"""`pcapd agent dnswire`: DNS responses sniffed off the wire into Redis and/or
DNSFlow's v4 export; the agent itself is agents.dnswire (`dnsflow` takes
DNSFlow's own flags, agents.dnswire.cli)."""

from __future__ import annotations

from agents.dnswire.cli import AGENT_DESCRIPTION, add_agent_arguments, agent_main
from agents.dnswire.config import parse_dnswire_config
from pcapd.cli.common import Subparsers, add_command

SECTION = "dnswire"
check_section = parse_dnswire_config


def register(subparsers: Subparsers) -> None:
    p = add_command(subparsers, "dnswire", agent_main, description=AGENT_DESCRIPTION)
    add_agent_arguments(p)

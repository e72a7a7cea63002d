"""`pcapd agent dnsflow-ingest`: DNSFlow v4 UDP records from C sensors into Redis."""

from __future__ import annotations

from agents.dnswire.config import parse_dnswire_config
from agents.dnswire.ingest import DESCRIPTION, add_arguments, main
from pcapd.cli.common import Subparsers, add_command

SECTION = "dnswire"  # ingest reads [agents.dnswire] too
check_section = parse_dnswire_config


def register(subparsers: Subparsers) -> None:
    p = add_command(subparsers, "dnsflow-ingest", main, description=DESCRIPTION)
    add_arguments(p)

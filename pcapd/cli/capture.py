"""`pcapd capture`: one bounded capture to a file, without Redis or a config."""

from __future__ import annotations

import argparse

from pcapd.cli.common import Subparsers, add_bounds, add_command
from pcapd.core.config import DEFAULT_BUFFER_SIZE


def _run(args: argparse.Namespace) -> int:
    from pcapd.oneshot import run_capture

    return run_capture(
        args.interface,
        " ".join(args.expression),
        output=args.write,
        packets=args.packets,
        snap=args.snap,
        max_bytes=args.bytes,
        duration=args.duration,
        timeout=args.timeout,
        fmt=args.format,
        buffer_size=args.buffer_size,
    )


def register(subparsers: Subparsers) -> None:
    capture = add_command(
        subparsers, "capture", _run,
        description="Capture on one interface until the first bound is reached, then write "
        "the file. Needs no Redis and no config. The first SIGTERM/SIGINT ends the capture "
        "and writes it; a second one exits at once, without it. Example: "
        "pcapd capture -i lo -c 100 -w dns.pcap udp port 53",
    )  # fmt: skip
    capture.add_argument("-i", "--interface", required=True)
    capture.add_argument("-w", "--write", metavar="FILE", help="output file, - for stdout")
    capture.add_argument("-B", "--buffer-size", type=int, default=DEFAULT_BUFFER_SIZE,
                         help="kernel buffer in bytes")  # fmt: skip
    add_bounds(capture, one_shot=True)

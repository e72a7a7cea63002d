"""capture_vs_tcpdump's table: what one rate measured (sent, and each
capturer's counts), the verdict on it, and how a row prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Counts:
    captured: int
    dropped: int  # as the capturer's kernel stats report it
    cpu: float  # seconds


@dataclass(frozen=True, slots=True)
class Sent:
    packets: int
    seconds: float
    pps: float
    cpu: float  # seconds tcpreplay ran, the kernel's send and receive paths included


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    rate: int | None  # asked; None for --topspeed
    sent: Sent
    pcapd: Counts
    tcpdump: Counts

    @property
    def ratio(self) -> float:
        return self.pcapd.captured / self.tcpdump.captured if self.tcpdump.captured else 0.0


HEADER = (
    f"{'rate':>9} {'sent':>9} {'sent pps':>9} {'snd us/p':>8} | "
    f"{'pcapd':>9} {'lost':>7} {'kdrop':>7} {'cpu us/p':>8} | "
    f"{'tcpdump':>9} {'lost':>7} {'kdrop':>7} {'cpu us/p':>8} | "
    f"{'ratio':>6} verdict"
)


def verdict(row: Row) -> str:
    pcapd_lost = row.sent.packets - row.pcapd.captured
    tcpdump_lost = row.sent.packets - row.tcpdump.captured
    if tcpdump_lost > 0:
        return "tcpdump loses too" if pcapd_lost > 0 else "ok (tcpdump loses)"
    return "ok" if pcapd_lost == 0 else "MISS"


def format_row(row: Row) -> str:
    def per_packet(counts: Counts) -> float:
        return counts.cpu / counts.captured * 1e6 if counts.captured else 0.0

    return (
        f"{row.label:>9} {row.sent.packets:>9} {row.sent.pps:>9.0f} "
        f"{row.sent.cpu / row.sent.packets * 1e6 if row.sent.packets else 0.0:>8.2f} | "
        f"{row.pcapd.captured:>9} {row.sent.packets - row.pcapd.captured:>7} "
        f"{row.pcapd.dropped:>7} {per_packet(row.pcapd):>8.2f} | "
        f"{row.tcpdump.captured:>9} {row.sent.packets - row.tcpdump.captured:>7} "
        f"{row.tcpdump.dropped:>7} {per_packet(row.tcpdump):>8.2f} | "
        f"{row.ratio:>6.3f} {verdict(row)}"
    )

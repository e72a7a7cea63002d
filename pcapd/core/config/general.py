"""The node's own sections: [general] (its limits and naming), [syslog],
[metrics] and [fleet] (its heartbeat), each read from its TOML table."""

from __future__ import annotations

from pcapd.core.config.sections import *
from pcapd.core.configread import Table


def _general(section: Table, hostname: str) -> GeneralConfig:
    s = section
    maxbytes = s.get_int("maxbytes", DEFAULT_MAXBYTES, minimum=MIN_MAXBYTES, maximum=MAX_MEMORY)
    max_memory = s.get_int(
        "max_memory", DEFAULT_MAX_MEMORY, minimum=MIN_MAX_MEMORY, maximum=MAX_MEMORY
    )
    maxtimeout = s.get_int("maxtimeout", DEFAULT_MAXTIMEOUT, maximum=MAX_SECONDS)
    maxduration = s.get_int("maxduration", DEFAULT_MAXDURATION, maximum=MAX_SECONDS)
    general = GeneralConfig(
        node=s.get_str("node", hostname) or hostname,
        maxpackets=s.get_int("maxpackets", DEFAULT_MAXPACKETS, maximum=MAX_PACKETS),
        writelocal=s.get_bool("writelocal", False),
        localdir=s.get_str("localdir", DEFAULT_LOCALDIR),
        snaplength=s.get_int("snaplength", DEFAULT_SNAPLENGTH, maximum=MAX_SNAPLENGTH),
        defaulttimeout=s.get_int(
            "defaulttimeout", min(DEFAULT_TIMEOUT, maxtimeout), maximum=MAX_SECONDS
        ),
        maxtimeout=maxtimeout,
        maxduration=maxduration,
        maxbytes=maxbytes,
        packetdebug=s.get_bool("packetdebug", False),
        defaultduration=s.get_int("defaultduration", maxduration, maximum=MAX_SECONDS),
        format=s.get_str("format", DEFAULT_FORMAT, choices=FORMATS),
        max_concurrent=s.get_int("max_concurrent", DEFAULT_MAX_CONCURRENT, maximum=MAX_CONCURRENT),
        max_memory=max_memory,
        buffer_size=s.get_int(
            "buffer_size", DEFAULT_BUFFER_SIZE, minimum=MIN_BUFFER_SIZE, maximum=MAX_BUFFER_SIZE
        ),
        max_request_bytes=s.get_int(
            "max_request_bytes",
            DEFAULT_MAX_REQUEST_BYTES,
            minimum=MIN_MAX_REQUEST_BYTES,
            maximum=MAX_MAX_REQUEST_BYTES,
        ),
        log_format=s.get_str("log_format", DEFAULT_LOG_FORMAT, choices=LOG_FORMATS),
        log_level=s.get_str("log_level", DEFAULT_LOG_LEVEL, choices=LOG_LEVELS),
        logrequests=s.get_bool("logrequests", False),
        naming=s.get_str("naming", DEFAULT_NAMING, choices=NAMINGS),
        maxlookback=s.get_int("maxlookback", DEFAULT_MAXLOOKBACK, maximum=MAX_LOOKBACK),
    )
    if general.defaulttimeout > general.maxtimeout:
        s.exceeds("defaulttimeout", general.defaulttimeout, "maxtimeout", general.maxtimeout)
    if general.defaultduration > general.maxduration:
        s.exceeds("defaultduration", general.defaultduration, "maxduration", general.maxduration)
    if general.maxbytes > general.max_memory:
        s.exceeds(
            "maxbytes", general.maxbytes, "max_memory", general.max_memory,
            "a capture of that size could never be admitted",
        )  # fmt: skip
    return general


def _syslog(s: Table) -> SyslogConfig:
    return SyslogConfig(
        enabled=s.get_bool("enabled", s.present),
        priority=s.get_int(
            "priority", DEFAULT_SYSLOG_PRIORITY, minimum=0, maximum=MAX_SYSLOG_PRIORITY
        ),
        tag=s.get_str("tag", DEFAULT_SYSLOG_TAG),
        address=s.get_str("address", DEFAULT_SYSLOG_ADDRESS),
    )


def _metrics(s: Table) -> MetricsConfig:
    return MetricsConfig(listen=s.listen("listen"))


def _fleet(s: Table) -> FleetConfig:
    config = FleetConfig(
        prefix=s.get_str("prefix", DEFAULT_FLEET_PREFIX),
        heartbeat_interval=s.get_float(
            "heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL,
            minimum=MIN_HEARTBEAT_INTERVAL, maximum=MAX_HEARTBEAT_INTERVAL,
        ),
    )  # fmt: skip
    if not config.prefix or len(config.prefix) > MAX_PREFIX_LEN:
        s.errors.append(f"fleet.prefix: {config.prefix!r} must be 1 to {MAX_PREFIX_LEN} characters")
    return config

"""The [correlator] section: the web app's bind, scans, pages and the
captures it may ask for, checked against the [security] keys it signs with."""

from __future__ import annotations

from pcapd.core.config.sections import *
from pcapd.core.configread import Table, quoted
from pcapd.core.fields import alias_problem


def _correlator(s: Table, security: SecurityConfig) -> CorrelatorConfig:
    max_packets = s.get_int("max_packets", DEFAULT_CAPTURE_MAX_PACKETS)
    max_duration = s.get_int("max_duration", DEFAULT_CAPTURE_MAX_DURATION)
    config = CorrelatorConfig(
        host=s.get_str("host", "127.0.0.1") or "127.0.0.1",
        port=s.get_int("port", DEFAULT_CORRELATOR_PORT, maximum=65535),
        token=s.secret("token"),
        read_only=s.get_bool("read_only", False),
        kid=s.optional_str("kid"),
        page_size=s.get_int("page_size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE),
        scan_count=s.get_int("scan_count", DEFAULT_SCAN_COUNT, minimum=10, maximum=MAX_SCAN_COUNT),
        scan_budget=s.get_int("scan_budget", DEFAULT_SCAN_BUDGET, minimum=100),
        scan_seconds=s.get_float(
            "scan_seconds", DEFAULT_SCAN_SECONDS, minimum=0.01, maximum=MAX_SCAN_SECONDS
        ),
        keys_per_command=s.get_int(
            "keys_per_command", DEFAULT_KEYS_PER_COMMAND, maximum=MAX_KEYS_PER_COMMAND
        ),
        keys_per_pipeline=s.get_int("keys_per_pipeline", DEFAULT_KEYS_PER_PIPELINE),
        read_index=s.get_bool("read_index", True),
        max_client_keys=s.get_int("max_client_keys", DEFAULT_MAX_CLIENT_KEYS, minimum=10),
        max_request_keys=s.get_int("max_request_keys", DEFAULT_MAX_REQUEST_KEYS, minimum=10),
        max_prefix_clients=s.get_int("max_prefix_clients", DEFAULT_MAX_PREFIX_CLIENTS),
        nodere=s.str_list("nodere"),
        aliases=_aliases(s),
        default_packets=s.get_int("default_packets", min(DEFAULT_CAPTURE_PACKETS, max_packets)),
        max_packets=max_packets,
        default_duration=s.get_int("default_duration", min(DEFAULT_CAPTURE_DURATION, max_duration)),
        max_duration=max_duration,
        s3_url_expiry=s.get_int("s3_url_expiry", DEFAULT_S3_URL_EXPIRY, maximum=604_800),
        threads=s.get_int("threads", DEFAULT_WEB_THREADS, maximum=256),
        captures_shown=s.get_int("captures_shown", DEFAULT_CAPTURES_SHOWN, maximum=10_000),
        result_wait=s.get_int("result_wait", DEFAULT_RESULT_WAIT, maximum=MAX_RESULT_WAIT),
        redis_timeout=s.get_float(
            "redis_timeout",
            DEFAULT_CORRELATOR_REDIS_TIMEOUT,
            minimum=0.1,
            maximum=MAX_CORRELATOR_REDIS_TIMEOUT,
        ),
    )
    if config.kid and config.kid not in security.keys:
        s.errors.append(f"correlator.kid: {config.kid!r} is not a key in [security] keys")
    if config.keys_per_pipeline < config.keys_per_command:
        s.exceeds("keys_per_command", config.keys_per_command, "keys_per_pipeline",
                  config.keys_per_pipeline, "a pipeline holds at least one command")  # fmt: skip
    if config.default_packets > config.max_packets:
        s.errors.append(f"correlator.default_packets: {config.default_packets} exceeds "
                        f"max_packets={config.max_packets}")  # fmt: skip
    if config.default_duration > config.max_duration:
        s.errors.append(f"correlator.default_duration: {config.default_duration} exceeds "
                        f"max_duration={config.max_duration}")  # fmt: skip
    return config


_EMPTY = "is empty, which the form sends as any interface"


def _aliases(s: Table) -> tuple[str, ...]:
    """What the capture form offers, each once: the alias rule (ALIAS_RULE,
    as for [[interface]] alias), and not "", which the form sends as "any
    interface". One out of it is left out with a warning: every request the
    form sent with it would be refused."""
    kept = []
    for index, alias in enumerate(s.str_list("aliases", checked=False)):
        problem = alias_problem(alias) if alias else _EMPTY
        if problem is None:
            kept.append(alias)
        else:
            s.warn(f"aliases[{index}]", f"{quoted(alias)} {problem}; ignored")
    return tuple(dict.fromkeys(kept))

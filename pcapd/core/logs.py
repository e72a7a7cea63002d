"""One line per event, `key=value` or JSON, to stderr and (optionally) syslog.

Call sites log `event(log, "capture_done", id=..., packets=...)`; the
formatter renders the fields in the configured style.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pcapd.core.config import Config, GeneralConfig, SyslogConfig

_FIELDS = "pcapd_fields"


def event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """The one way pcapd logs (tests/test_source.py holds every module to it).

    `exc_info=True`, inside an `except`, adds the traceback as `exception`.
    """
    # stacklevel 2: the record names the caller's line, not this one.
    logger.log(level, name, exc_info=exc_info, stacklevel=2, extra={_FIELDS: fields})


def _is_event(record: logging.LogRecord) -> bool:
    return hasattr(record, _FIELDS)


# Made once: json.dumps with options builds an encoder per call, and a
# capture's two lines hold ~20 values (it was half of their cost).
_COMPACT = json.JSONEncoder(default=str, separators=(",", ":"))
_JSON = json.JSONEncoder(default=str)


def _kv_value(value: Any) -> str:
    """One token: a bare word, compact JSON for numbers, flags and containers
    (`bad={"truncated":1}`), else a JSON string (`error="no route"`)."""
    if value is None or isinstance(value, bool | int | float | list | tuple | dict):
        text = _COMPACT.encode(value)
        if " " not in text and "\n" not in text:
            return text
    else:
        text = str(value)  # an address, a path: its text, not a JSON string of it
        if text and not (" " in text or '"' in text or "=" in text or "\n" in text):
            return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, None) or {}
        parts = []
        if self.with_time:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={stamp}.{int(record.msecs):03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        message = record.getMessage()
        # A library's own line (botocore, asyncio) is no event: shown as it is.
        parts.append(f"event={message}" if _is_event(record) else message)
        parts.extend(f"{key}={_kv_value(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exception={_kv_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, None) or {}
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event" if _is_event(record) else "msg": record.getMessage(),
            "logger": record.name,
        }
        data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(data)


def setup_logging(general: GeneralConfig, syslog: SyslogConfig) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(general.log_level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(_formatter(general))
    root.addHandler(stderr)
    if syslog.enabled:
        if syslog.address.startswith("/") and not os.path.exists(syslog.address):
            event(
                logging.getLogger("pcapd"), "syslog_unavailable", logging.WARNING,
                address=syslog.address, note="logging to stderr only",
            )  # fmt: skip
            return
        # pcapdaemon's priority is facility | severity; the severity of each
        # line comes from its level, so only the facility is taken from it.
        handler = logging.handlers.SysLogHandler(
            address=syslog.address, facility=syslog.priority >> 3
        )
        handler.ident = f"{syslog.tag}[{os.getpid()}]: "
        handler.setFormatter(
            JsonFormatter() if general.log_format == "json" else KeyValueFormatter(False)
        )
        root.addHandler(handler)


def _formatter(general: GeneralConfig, with_time: bool = True) -> logging.Formatter:
    return JsonFormatter() if general.log_format == "json" else KeyValueFormatter(with_time)


@contextlib.contextmanager
def warnings_to_stderr(general: GeneralConfig) -> Iterator[None]:
    """While a command runs (`pcapd spool`), its warnings and errors on
    stderr with their fields, in [general] log_format; without it Python
    shows the event's name alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_formatter(general, with_time=False))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def setup_agent_logging(config: Config | None, level: str) -> None:
    """An agent logs as the daemon does: [general] log_format and [syslog] of
    its config file, at the level its command line asks for."""
    general = config.general if config is not None else GeneralConfig(node="")
    syslog = config.syslog if config is not None else SyslogConfig()
    setup_logging(replace(general, log_level=level.lower()), syslog)

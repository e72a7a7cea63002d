"""`pcapd web`: the Flask app under waitress, a production WSGI server.

waitress is pure Python (no compiler, no C extension), runs threads rather
than forks (the Redis pool is shared), and is what Flask's deployment guide
shows first. Each open live-results page holds one thread for at most
max_duration + result_wait seconds, so `threads` bounds them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import waitress

from pcapd.core.config import Config, ConfigError, load_config
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK
from pcapd.core.logs import event, setup_logging
from pcapd.correlator.service import redis_client
from pcapd.correlator.web import create_app

log = logging.getLogger("pcapd.correlator")

# HTTP connections served beside one per server thread (waitress's default
# limit, 100 in all, made live pages past the 100th, and every request after
# them, wait unanswered for one to end).
CONNECTIONS_BESIDE_THREADS = 100


def s3_client(config: Config) -> Any | None:
    """A boto3 client for pre-signed links, when [s3] is configured. Not the
    uploader's client: links must be SigV4 (every region takes it; botocore
    would otherwise pick SigV2 for some) and signing one makes no request."""
    s3 = config.s3
    if not (s3.upload or s3.bucket):
        return None
    import boto3
    import botocore.config

    from uploaders.s3 import endpoint_url

    session = boto3.session.Session(
        aws_access_key_id=s3.accessid,
        aws_secret_access_key=s3.accesskey.reveal() if s3.accesskey else None,
        region_name=s3.region,
    )
    return session.client("s3", endpoint_url=endpoint_url(s3.endpoint),
                          config=botocore.config.Config(signature_version="s3v4"))  # fmt: skip


def serve(path: str) -> int:
    config = load_config(path)
    setup_logging(config.general, config.syslog)
    c = config.correlator
    if config.security.require_signed and not c.kid:
        raise ConfigError(
            ["correlator.kid: this site requires signed requests (security.require_signed); "
             "name the correlator's key"], path,
        )  # fmt: skip
    app = create_app(config, redis_client(config), s3_client(config))
    event(log, "correlator_listening", host=c.host, port=c.port, read_only=c.read_only,
          changes=c.token is not None and not c.read_only)  # fmt: skip
    try:
        waitress.serve(app, host=c.host, port=c.port, threads=c.threads, ident="pcapd",
                       channel_timeout=c.max_duration + 60,
                       connection_limit=c.threads + CONNECTIONS_BESIDE_THREADS)  # fmt: skip
    except OSError as exc:
        print(f"pcapd web: cannot listen on {c.host}:{c.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK

"""The remote sinks a config enables (S3, CloudShark), each attempt bounded
by a deadline (uploaders/deadline.py): for the deliverer and the spool's
drainer alike."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pcapd.core.config import Config
from uploaders.base import Uploader
from uploaders.deadline import Deadlined

if TYPE_CHECKING:
    from uploaders.s3 import ClientFactory


def build_remote_uploaders(
    config: Config,
    s3_client_factory: ClientFactory | None = None,
    abandon: threading.Event | None = None,
) -> list[Uploader]:
    """The remote sinks `config` enables, in the order their sections appear in
    the config file, each attempt bounded by `delivery.attempt_timeout` (and
    given up when `abandon` is set). Imports stay lazy: boto3 costs ~0.3 s to
    import and a CloudShark-only site need not pay it."""
    found: list[Uploader] = []
    for sink in config.remote_order:
        if sink == "s3" and config.s3.upload:
            from uploaders.s3 import S3Uploader

            found.append(S3Uploader(config.s3, s3_client_factory, naming=config.general.naming))
        elif sink == "cloudshark" and config.cloudshark.upload:
            from uploaders.cloudshark import CloudsharkUploader

            found.append(CloudsharkUploader(config.cloudshark))
    stop = abandon if abandon is not None else threading.Event()
    return [Deadlined(u, config.delivery.attempt_timeout, stop) for u in found]

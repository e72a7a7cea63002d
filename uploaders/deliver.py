"""One capture to every configured sink, in order, with retries and the spool.

`Deliverer.deliver(artifact, event)` runs each uploader in the configured
order under the retry policy. If a remote sink still fails, the capture and
its `spooled` result go to the spool for the drainer; only if that is not
possible either (spool full, disk error) is the result `failed`. A capture
that was taken is never dropped silently: the outcome always says where it
is, or why it is nowhere.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pcapd.core.config import Config
from pcapd.core.events import ResultEvent
from uploaders.base import Artifact, Uploader
from uploaders.retry import RetryPolicy
from uploaders.spool import Spool, SpoolError

if TYPE_CHECKING:
    from uploaders.s3 import ClientFactory

log = logging.getLogger("pcapd.uploaders.deliver")

OUTCOMES = ("ok", "spooled", "failed")


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    status: str  # "ok" | "spooled" | "failed"
    locations: Mapping[str, str] = field(default_factory=dict)  # kind -> path/URI/URL
    error: str | None = None  # every sink's failure, `sink: reason; ...`
    spool_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in OUTCOMES:
            raise ValueError(f"status {self.status!r} not one of {OUTCOMES}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def durable(self) -> bool:
        """Stored somewhere that survives a restart: the request may be acked."""
        return bool(self.locations) or self.spool_id is not None

    def apply(self, event: ResultEvent) -> ResultEvent:
        """`event` with this outcome's locations, and status/error unless all went well."""
        if self.ok:
            return dataclasses.replace(event, locations=dict(self.locations))
        return dataclasses.replace(
            event, status=self.status, error=self.error, locations=dict(self.locations)
        )


class Deliverer:
    """Thread-safe as long as its uploaders are (the provided ones are): the
    controller calls `deliver` from its bounded pool of upload workers."""

    def __init__(
        self, uploaders: Sequence[Uploader], retry: RetryPolicy, spool: Spool | None
    ) -> None:
        names = [u.name for u in uploaders]
        if len(set(names)) != len(names):
            raise ValueError(f"uploaders: duplicate names in {names}")
        self.uploaders = tuple(uploaders)
        self.retry = retry
        self.spool = spool

    @property
    def has_remote(self) -> bool:
        return any(u.remote for u in self.uploaders)

    def deliver(self, artifact: Artifact, event: ResultEvent | None = None) -> DeliveryOutcome:
        """Upload to every sink; spool for remote sinks that still fail.

        `event` is the result the controller is about to publish; it is stored
        with a spooled capture so the drainer can publish it as `delivered`.
        """
        locations: dict[str, str] = {}
        errors: list[str] = []
        failed_remote: list[str] = []
        failed_local = False
        for uploader in self.uploaders:
            try:
                location = self.retry.run(
                    functools.partial(uploader.upload, artifact),
                    f"{uploader.name}:{artifact.filename}",
                )
            except Exception as exc:  # any failure: spool it, never lose the capture
                errors.append(f"{uploader.name}: {exc}")
                log.warning(
                    "upload_failed sink=%s file=%s error=%s", uploader.name, artifact.filename, exc
                )
                if uploader.remote:
                    failed_remote.append(uploader.name)
                else:
                    failed_local = True
                continue
            locations[location.kind] = location.url
        if not errors:
            return DeliveryOutcome("ok", locations)

        error = "; ".join(errors)
        spool_id = None
        if failed_remote:
            if self.spool is None:
                errors.append("spool: not configured")
            else:
                try:
                    spool_id = self._spool(artifact, failed_remote, locations, error, event)
                except SpoolError as exc:
                    errors.append(f"spool: {exc}")
                    log.error("spool_failed file=%s error=%s", artifact.filename, exc)
        status = "spooled" if spool_id is not None and not failed_local else "failed"
        return DeliveryOutcome(status, locations, "; ".join(errors), spool_id)

    def _spool(
        self,
        artifact: Artifact,
        pending: list[str],
        locations: dict[str, str],
        error: str,
        event: ResultEvent | None,
    ) -> str:
        assert self.spool is not None
        stored = None
        if event is not None:
            stored = dataclasses.replace(
                event, status="spooled", error=error, locations=dict(locations)
            ).as_dict()
        entry = self.spool.put(artifact, pending, locations=locations, event=stored, error=error)
        return entry.id


def build_remote_uploaders(
    config: Config, s3_client_factory: ClientFactory | None = None
) -> list[Uploader]:
    """The remote sinks `config` enables, in the order their sections appear in
    the config file. Imports stay lazy: boto3 costs ~0.3 s to import and a
    CloudShark-only site need not pay it."""
    found: list[Uploader] = []
    for sink in config.remote_order:
        if sink == "s3" and config.s3.upload:
            from uploaders.s3 import S3Uploader

            found.append(S3Uploader(config.s3, s3_client_factory, naming=config.general.naming))
        elif sink == "cloudshark" and config.cloudshark.upload:
            from uploaders.cloudshark import CloudsharkUploader

            found.append(CloudsharkUploader(config.cloudshark))
    return found

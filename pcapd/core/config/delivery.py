"""Where captures go and how they get there: [cloudshark], [s3] and
[delivery] (retries, upload workers, the write-ahead spool)."""

from __future__ import annotations

from pcapd.core.config.sections import *
from pcapd.core.configread import MAX_PORT, Table


def _cloudshark(s: Table) -> CloudsharkConfig:
    # pcapdaemon's `timeout` (seconds for the whole upload) is read_timeout's
    # default here: the connect timeout stays separate and never exceeds it.
    timeout = s.get_float(
        "timeout", DEFAULT_CS_READ_TIMEOUT, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
    )
    if "timeout" in s.table and "read_timeout" in s.table:
        s.errors.append("cloudshark.timeout, cloudshark.read_timeout: set one, not both")
    config = CloudsharkConfig(
        upload=s.get_bool("upload", False),
        host=s.get_str("host", DEFAULT_CS_HOST),
        scheme=s.get_str("scheme", DEFAULT_CS_SCHEME, choices=CS_SCHEMES),
        port=s.optional_int("port", maximum=MAX_PORT),
        token=s.secret("token"),
        ca_bundle=s.optional_str("ca_bundle"),
        connect_timeout=s.get_float(
            "connect_timeout", min(DEFAULT_CS_CONNECT_TIMEOUT, timeout),
            minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_CONNECT_TIMEOUT,
        ),
        read_timeout=s.get_float(
            "read_timeout", timeout, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
        ),
    )  # fmt: skip
    if config.upload and not config.token:
        s.errors.append("cloudshark.token: required when cloudshark.upload = true")
    return config


def _s3(s: Table) -> S3Config:
    config = S3Config(
        upload=s.get_bool("upload", False),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        endpoint=s.optional_str("endpoint"),
        bucket=s.optional_str("bucket"),
        folder=s.get_str("folder", ""),
        region=s.optional_str("region"),
        acl=s.optional_str("acl"),
        encryption=s.get_bool("encryption", False),
        sse=s.optional_str("sse", choices=SSE_MODES),
        kms_key_id=s.optional_str("kms_key_id"),
        allowed_buckets=s.str_list("allowed_buckets"),
        allowed_endpoints=s.str_list("allowed_endpoints"),
        allowed_acls=s.str_list("allowed_acls"),
        allowed_regions=s.str_list("allowed_regions"),
        multipart_threshold=s.get_int(
            "multipart_threshold",
            DEFAULT_MULTIPART_THRESHOLD,
            minimum=MIN_MULTIPART_THRESHOLD,
            maximum=MAX_MULTIPART_THRESHOLD,
        ),
    )
    if config.upload and not config.bucket:
        s.errors.append("s3.bucket: required when s3.upload = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("s3.accessid, s3.accesskey: set both, or neither for boto3's chain")
    if config.kms_key_id and config.sse != "aws:kms":
        s.errors.append('s3.kms_key_id: only used with sse = "aws:kms"')
    return config


def _delivery(s: Table) -> DeliveryConfig:
    initial = s.get_float(
        "backoff_initial", DEFAULT_BACKOFF_INITIAL, minimum=0.0, maximum=MAX_BACKOFF
    )
    config = DeliveryConfig(
        attempts=s.get_int("attempts", DEFAULT_UPLOAD_ATTEMPTS, maximum=MAX_UPLOAD_ATTEMPTS),
        backoff_initial=initial,
        backoff_max=s.get_float(
            "backoff_max", max(DEFAULT_BACKOFF_MAX, initial), minimum=0.0, maximum=MAX_BACKOFF
        ),
        upload_workers=s.get_int(
            "upload_workers", DEFAULT_UPLOAD_WORKERS, maximum=MAX_UPLOAD_WORKERS
        ),
        spool_dir=s.get_str("spool_dir", DEFAULT_SPOOL_DIR),
        spool_max_bytes=s.get_int(
            "spool_max_bytes",
            DEFAULT_SPOOL_MAX_BYTES,
            minimum=MIN_SPOOL_MAX_BYTES,
            maximum=MAX_SPOOL_MAX_BYTES,
        ),
        drain_interval=s.get_float(
            "drain_interval",
            DEFAULT_DRAIN_INTERVAL,
            minimum=MIN_DRAIN_INTERVAL,
            maximum=MAX_DRAIN_INTERVAL,
        ),
        attempt_timeout=s.get_float(
            "attempt_timeout",
            DEFAULT_ATTEMPT_TIMEOUT,
            minimum=MIN_ATTEMPT_TIMEOUT,
            maximum=MAX_ATTEMPT_TIMEOUT,
        ),
        shutdown_grace=s.get_float(
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            minimum=MIN_SHUTDOWN_GRACE,
            maximum=MAX_SHUTDOWN_GRACE,
        ),
    )
    if config.backoff_max < config.backoff_initial:
        s.errors.append(
            f"delivery.backoff_max: {config.backoff_max} is below "
            f"backoff_initial={config.backoff_initial}"
        )
    return config

"""Where a message may send its capture: the site's policy, not the sender's word.

pcapdaemon let any message name a bucket, endpoint and ACL and signed the
upload with the daemon's own credentials. pcapd applies a message's S3 fields
only where `[s3]` allows them; anything else rejects the whole request with a
message naming the field. By default only `folder` may be set by a message.
A value equal to what the config already uses is not an override and passes.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pcapd.core.config import S3Config
from pcapd.core.request import CaptureRequest, RequestError

MAX_FOLDER_LEN = 512
# Folder names become part of an object key: keep them to plain path characters.
_FOLDER_RE = re.compile(r"[A-Za-z0-9._/-]*")


def normalize_endpoint(endpoint: str) -> str:
    """`s3.amazonaws.com` -> `https://s3.amazonaws.com`, lowercased, no trailing `/`.

    pcapdaemon's configs name the endpoint without a scheme; boto3 needs one.
    """
    value = endpoint.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def check_folder(folder: str) -> None:
    """Raise RequestError unless `folder` is a safe relative key prefix."""
    if len(folder) > MAX_FOLDER_LEN:
        raise RequestError(f"folder: {len(folder)} characters; the limit is {MAX_FOLDER_LEN}")
    if not _FOLDER_RE.fullmatch(folder):
        raise RequestError(f"folder={folder!r}: only A-Z a-z 0-9 . _ / - are allowed")
    if ".." in folder:
        raise RequestError(f"folder={folder!r}: must not contain '..'")
    if folder.startswith("/"):
        raise RequestError(f"folder={folder!r}: must not start with '/'")


def check_overrides(request: CaptureRequest, s3_config: S3Config) -> None:
    """Raise RequestError naming the first S3 field this site does not allow.

    Rules: `folder` always allowed within its character rules; `bucket`,
    `endpoint`, `acl` only if listed in `allowed_buckets`, `allowed_endpoints`,
    `allowed_acls`; `region` only if listed in `allowed_regions` or an
    allowed endpoint is being used, since a region picks the AWS endpoint;
    `encryption: true` always (it only adds protection), `encryption: false`
    only where the config does not encrypt. When S3 upload is off these
    fields do nothing, so they are not checked (pcapdaemon ignored them too).
    """
    if not s3_config.upload:
        return
    rid = request.id
    try:
        if request.folder is not None:
            check_folder(request.folder)
    except RequestError as exc:
        raise RequestError(str(exc), rid) from None

    _require_listed("bucket", "bucket", request.bucket, s3_config.bucket,
                    s3_config.allowed_buckets, rid)  # fmt: skip

    endpoint_override = False
    if request.endpoint is not None:
        wanted = normalize_endpoint(request.endpoint)
        configured = normalize_endpoint(s3_config.endpoint) if s3_config.endpoint else None
        if wanted != configured:
            allowed = {normalize_endpoint(e) for e in s3_config.allowed_endpoints}
            if wanted not in allowed:
                raise RequestError(
                    f"endpoint={request.endpoint!r}: this site does not allow that endpoint "
                    f"(s3.allowed_endpoints: {_listed(s3_config.allowed_endpoints)})",
                    rid,
                )
            endpoint_override = True

    _require_listed("acl", "ACL", request.acl, s3_config.acl, s3_config.allowed_acls, rid)

    if (
        request.region is not None
        and request.region != s3_config.region
        and request.region not in s3_config.allowed_regions
        and not endpoint_override
    ):
        raise RequestError(
            f"region={request.region!r}: this site does not allow that region "
            f"(s3.allowed_regions: {_listed(s3_config.allowed_regions)}) unless the message "
            "also names an allowed endpoint",
            rid,
        )

    encrypted = s3_config.encryption or s3_config.sse is not None
    if request.encryption is False and encrypted:
        raise RequestError(
            "encryption=false: this site requires server-side encryption (s3.encryption / s3.sse)",
            rid,
        )


def _require_listed(
    field: str,
    what: str,
    wanted: str | None,
    configured: str | None,
    allowed: tuple[str, ...],
    request_id: str,
) -> None:
    """A message's value must be the configured one or listed in s3.allowed_<field>s."""
    if wanted is None or wanted == configured or wanted in allowed:
        return
    raise RequestError(
        f"{field}={wanted!r}: this site does not allow that {what} "
        f"(s3.allowed_{field}s: {_listed(allowed)})",
        request_id,
    )


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"

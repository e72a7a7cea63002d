from __future__ import annotations

from typing import Any

import pytest

from pcapd.core.config import S3Config
from pcapd.core.request import RequestError
from tests.uploaders.conftest import make_request
from uploaders.policy import check_overrides, normalize_endpoint

SITE = S3Config(
    upload=True, endpoint="s3.amazonaws.com", bucket="pcapdaemon", folder="pcaps",
    region="us-east-1", acl="private",
)  # fmt: skip


def check(config: S3Config = SITE, **fields: Any) -> None:
    check_overrides(make_request(**fields), config)


def rejected(config: S3Config = SITE, **fields: Any) -> str:
    with pytest.raises(RequestError) as info:
        check(config, **fields)
    return str(info.value)


def test_default_allows_folder_only() -> None:
    check(folder="team-a/2026.11_x")
    check(folder="")
    assert rejected(bucket="evil") == (
        "bucket='evil': this site does not allow that bucket (s3.allowed_buckets: none)"
    )
    assert rejected(endpoint="attacker.example") == (
        "endpoint='attacker.example': this site does not allow that endpoint "
        "(s3.allowed_endpoints: none)"
    )
    assert rejected(acl="public-read") == (
        "acl='public-read': this site does not allow that ACL (s3.allowed_acls: none)"
    )
    assert "region='eu-west-1'" in rejected(region="eu-west-1")


def test_the_request_id_travels_with_the_rejection() -> None:
    request = make_request(bucket="evil")
    with pytest.raises(RequestError) as info:
        check_overrides(request, SITE)
    assert info.value.request_id == request.id


def test_values_equal_to_the_config_are_not_overrides() -> None:
    # pcapdaemon's sample message carries every S3 field; the site's own values pass.
    check(
        bucket="pcapdaemon", acl="private", region="us-east-1",
        endpoint="https://S3.amazonaws.com/", encryption=False,
    )  # fmt: skip


def test_allowed_lists_open_exactly_what_they_name() -> None:
    site = S3Config(
        upload=True, bucket="pcapdaemon", region="us-east-1",
        allowed_buckets=("team-a",), allowed_endpoints=("minio.internal:9000",),
        allowed_acls=("bucket-owner-full-control",),
    )  # fmt: skip
    check(site, bucket="team-a", acl="bucket-owner-full-control")
    check(site, endpoint="https://minio.internal:9000")
    check(site, endpoint="minio.internal:9000", region="local")  # region follows the endpoint
    assert "allowed_buckets: team-a" in rejected(site, bucket="team-b")
    assert "minio.internal:9000" in rejected(site, endpoint="http://minio.internal:9000")
    assert "acl='public-read-write'" in rejected(site, acl="public-read-write")
    assert "region='local'" in rejected(site, region="local")


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("../other", "folder='../other': must not contain '..'"),
        ("a/../../b", "folder='a/../../b': must not contain '..'"),
        ("/etc", "folder='/etc': must not start with '/'"),
        ("a b", "folder='a b': only A-Z a-z 0-9 . _ / - are allowed"),
        ("caf\u00e9", "folder='caf\u00e9': only A-Z a-z 0-9 . _ / - are allowed"),
        ("x?versionId=1", "folder='x?versionId=1': only A-Z a-z 0-9 . _ / - are allowed"),
        ("a" * 513, "folder: 513 characters; the limit is 512"),
    ],
)
def test_bad_folders_are_rejected_with_the_rule(folder: str, message: str) -> None:
    assert rejected(folder=folder) == message


def test_encryption_may_be_added_never_removed() -> None:
    check(encryption=True)
    encrypted = S3Config(upload=True, bucket="b", sse="aws:kms", kms_key_id="k1")
    check(encrypted, encryption=True)
    assert rejected(encrypted, encryption=False) == (
        "encryption=false: this site requires server-side encryption (s3.encryption / s3.sse)"
    )


def test_nothing_is_checked_when_s3_is_off() -> None:
    check(S3Config(upload=False), bucket="anything", folder="../x")


def test_normalize_endpoint() -> None:
    assert normalize_endpoint("s3.amazonaws.com") == "https://s3.amazonaws.com"
    assert normalize_endpoint(" HTTP://127.0.0.1:9000/ ") == "http://127.0.0.1:9000"

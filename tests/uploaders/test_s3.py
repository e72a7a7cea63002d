from __future__ import annotations

import dataclasses
import hashlib
import io

import pytest

from pcapd.core.config import S3Config
from pcapd.core.secret import Secret
from tests.helpers import free_port
from tests.uploaders.conftest import S3_SECRET, MotoS3, make_artifact, make_request
from uploaders.base import UploadError
from uploaders.s3 import MemoryReader, S3Uploader, boto3_client_factory, endpoint_url

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def test_object_key_bytes_and_metadata(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact(10_000)
    location = S3Uploader(moto_s3.s3_config(bucket)).upload(artifact)

    key = f"pcaps/{artifact.filename}"
    assert (location.kind, location.url) == ("s3", f"s3://{bucket}/{key}")
    client = moto_s3.client()
    got = client.get_object(Bucket=bucket, Key=key)
    assert hashlib.sha256(got["Body"].read()).hexdigest() == artifact.sha256
    assert got["ContentType"] == "application/vnd.tcpdump.pcap"
    assert got["Metadata"] == {
        "request-id": artifact.request.id, "node": "node1", "interface": "lo",
        "sha256": artifact.sha256, "alertid": "655443", "tags": "web,alert",
        "customer": "acme",
    }  # fmt: skip
    assert "ServerSideEncryption" not in got


def test_encryption_true_means_aes256(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact()
    S3Uploader(moto_s3.s3_config(bucket, encryption=True)).upload(artifact)
    head = moto_s3.client().head_object(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert head["ServerSideEncryption"] == "AES256"


def test_message_encryption_true_adds_aes256(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact(request=make_request(encryption=True))
    S3Uploader(moto_s3.s3_config(bucket)).upload(artifact)
    head = moto_s3.client().head_object(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert head["ServerSideEncryption"] == "AES256"


def test_sse_kms_with_key_id(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact()
    config = moto_s3.s3_config(bucket, sse="aws:kms", kms_key_id="alias/pcapd")
    S3Uploader(config).upload(artifact)
    head = moto_s3.client().head_object(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/pcapd")


def test_acl_from_config(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact()
    S3Uploader(moto_s3.s3_config(bucket, acl="public-read")).upload(artifact)
    grants = moto_s3.client().get_object_acl(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert {(g["Grantee"].get("URI"), g["Permission"]) for g in grants["Grants"]} >= {
        (ALL_USERS, "READ")
    }


def test_private_acl_grants_nobody_else(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact()
    S3Uploader(moto_s3.s3_config(bucket, acl="private")).upload(artifact)
    grants = moto_s3.client().get_object_acl(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert [g["Permission"] for g in grants["Grants"]] == ["FULL_CONTROL"]


def test_message_overrides_are_used(moto_s3: MotoS3) -> None:
    """Policy already allowed them; the uploader honours bucket, folder and ACL."""
    site_bucket, other = moto_s3.new_bucket(), moto_s3.new_bucket()
    artifact = make_artifact(
        request=make_request(bucket=other, folder="team-a/x/", acl="public-read")
    )
    location = S3Uploader(moto_s3.s3_config(site_bucket)).upload(artifact)
    key = f"team-a/x/{artifact.filename}"
    assert location.url == f"s3://{other}/{key}"
    client = moto_s3.client()
    assert client.head_object(Bucket=other, Key=key)["ContentLength"] == artifact.size
    grants = client.get_object_acl(Bucket=other, Key=key)["Grants"]
    assert any(g["Grantee"].get("URI") == ALL_USERS for g in grants)


@pytest.mark.parametrize(
    ("naming", "folder", "filename", "key"),
    [
        ("pcapd", "pcaps", "node1_lo_20261122T001130.123Z_r.pcap",
         "pcaps/node1_lo_20261122T001130.123Z_r.pcap"),
        ("pcapd", "/a//b/", "n.pcap", "a//b/n.pcap"),
        ("pcapdaemon", "pcaps", "node1-lo-1764547890.pcap", "pcaps/node1-lo-1764547890.pcap"),
        ("pcapdaemon", "/a//b/", "node1-lo-1764547890.pcap", "a/b/node1-lo-1764547890.pcap"),
        ("pcapdaemon", "", "node1-lo-1764547890.pcap", "node1-lo-1764547890.pcap"),
    ],
)  # fmt: skip
def test_object_keys_in_both_namings(
    moto_s3: MotoS3, naming: str, folder: str, filename: str, key: str
) -> None:
    bucket = moto_s3.new_bucket()
    artifact = dataclasses.replace(make_artifact(), filename=filename)
    uploader = S3Uploader(moto_s3.s3_config(bucket, folder=folder), naming=naming)
    assert uploader.upload(artifact).url == f"s3://{bucket}/{key}"
    listed = moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [entry["Key"] for entry in listed] == [key]


def test_empty_folder_puts_the_file_at_the_top(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact()
    location = S3Uploader(moto_s3.s3_config(bucket, folder="")).upload(artifact)
    assert location.url == f"s3://{bucket}/{artifact.filename}"


def test_50mb_capture_goes_multipart_and_is_not_copied(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    artifact = make_artifact(50 * 1024 * 1024)
    config = moto_s3.s3_config(bucket, multipart_threshold=8 * 1024 * 1024)
    S3Uploader(config).upload(artifact)
    got = moto_s3.client().get_object(Bucket=bucket, Key=f"pcaps/{artifact.filename}")
    assert got["ETag"].strip('"').endswith("-7")  # 50 MiB in 8 MiB parts
    assert hashlib.sha256(got["Body"].read()).hexdigest() == artifact.sha256
    # Every view of the buffer was released: a bytearray with exports cannot resize.
    assert isinstance(artifact.data, bytearray)
    artifact.data.append(0)


def test_credentials_from_boto3_chain(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    bucket = moto_s3.new_bucket()
    config = moto_s3.s3_config(bucket, accessid=None, accesskey=None)
    S3Uploader(config).upload(make_artifact())
    client = boto3_client_factory(config)(moto_s3.endpoint, "us-east-1")
    creds = client._request_signer._credentials  # type: ignore[attr-defined]
    assert creds.access_key == "AKIAFROMENV"


def test_missing_bucket_is_a_clear_permanent_error(moto_s3: MotoS3) -> None:
    uploader = S3Uploader(moto_s3.s3_config("no-such-bucket-pcapd"))
    with pytest.raises(UploadError) as info:
        uploader.upload(make_artifact())
    assert "NoSuchBucket" in str(info.value)
    assert "s3://no-such-bucket-pcapd/pcaps/" in str(info.value)
    assert info.value.retryable is False


def test_unreachable_endpoint_is_retryable_and_hides_the_key() -> None:
    port = free_port()  # nothing listens here
    config = S3Config(
        upload=True, accessid="AKIA", accesskey=Secret(S3_SECRET),
        endpoint=f"http://127.0.0.1:{port}", bucket="b", region="us-east-1",
    )  # fmt: skip
    with pytest.raises(UploadError) as info:
        S3Uploader(config).upload(make_artifact())
    assert info.value.retryable is True
    assert f"127.0.0.1:{port}" in str(info.value)
    assert S3_SECRET not in str(info.value)
    assert S3_SECRET not in repr(S3Uploader(config))


def test_pcapdaemon_endpoint_without_scheme() -> None:
    assert endpoint_url("s3.amazonaws.com") == "https://s3.amazonaws.com"
    assert endpoint_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert endpoint_url(None) is None
    config = S3Config(upload=True, endpoint="s3.amazonaws.com", bucket="b", region="us-east-1")
    client = boto3_client_factory(config)(endpoint_url(config.endpoint), config.region)
    assert client.meta.endpoint_url == "https://s3.amazonaws.com"


def test_memory_reader_reads_the_buffer_in_place() -> None:
    data = bytearray(b"0123456789")
    reader = MemoryReader(data)
    data[0:1] = b"X"  # same size: allowed while exported, visible through the view
    assert reader.read(4) == b"X123"
    target = bytearray(3)
    assert reader.readinto(target) == 3 and target == b"456"
    assert reader.seek(-2, io.SEEK_END) == 8 and reader.read() == b"89"
    assert reader.read(5) == b""
    reader.close()
    data.append(1)  # released: resizing works again


def test_bucket_is_required() -> None:
    with pytest.raises(ValueError, match=r"s3\.bucket"):
        S3Uploader(S3Config(upload=True))

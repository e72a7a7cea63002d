"""uploaders/remote.py: the remote sinks a config enables, in its order."""

from __future__ import annotations

import pytest

from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import MotoS3, cs_config
from uploaders.remote import build_remote_uploaders


def test_build_remote_uploaders(moto_s3: MotoS3, cloudshark: CloudsharkServer) -> None:
    from pcapd.core.config import Config, GeneralConfig

    config = Config(
        general=GeneralConfig(node="n"),
        s3=moto_s3.s3_config("b"),
        cloudshark=cs_config(cloudshark),
    )
    assert [u.name for u in build_remote_uploaders(config)] == ["s3", "cloudshark"]
    assert build_remote_uploaders(Config(general=GeneralConfig(node="n"))) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[s3]\nupload = true\nbucket = "b"\n[cloudshark]\nupload = true\ntoken = "t"\n',
         ["s3", "cloudshark"]),
        ('[cloudshark]\nupload = true\ntoken = "t"\n[s3]\nupload = true\nbucket = "b"\n',
         ["cloudshark", "s3"]),
        ('[cloudshark]\nupload = true\ntoken = "t"\n', ["cloudshark"]),
    ],
)  # fmt: skip
def test_remote_sinks_run_in_the_order_of_their_sections(text: str, expected: list[str]) -> None:
    import tomllib

    from pcapd.core.config import parse_config

    config = parse_config(tomllib.loads(text), hostname="n")
    assert [u.name for u in build_remote_uploaders(config)] == expected

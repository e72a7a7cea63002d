"""pcapd/core/errors.py: one root, so "anything pcapd reports" is one except."""

from __future__ import annotations

import pytest

from agents.dnstap.errors import DnstapError
from agents.flow.agent import AgentError
from pcapd.core.config import ConfigError
from pcapd.core.errors import CaptureError, PcapdError, UploadError
from pcapd.core.request import RequestError
from pcapd.engine import open_handle
from uploaders.spool import SpoolError


@pytest.mark.parametrize(
    "family", [ConfigError, RequestError, UploadError, SpoolError, CaptureError, DnstapError,
               AgentError]
)  # fmt: skip
def test_every_family_is_a_pcapd_error(family: type[Exception]) -> None:
    assert issubclass(family, PcapdError)


def test_the_engine_raises_the_one_capture_error() -> None:
    with pytest.raises(CaptureError, match="no such device") as caught:
        open_handle("nonexistent0", 65535)
    assert isinstance(caught.value, PcapdError)

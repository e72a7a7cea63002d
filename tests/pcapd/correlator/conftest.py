from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import IS_ROOT
from tests.pcapd.correlator.site import Site, site


@pytest.fixture(scope="package")
def corr_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The site, built once for the correlator tests (BIND, agents, daemon, web)."""
    if not IS_ROOT:
        pytest.skip("needs root for network namespaces and veth")
    with site(tmp_path_factory.mktemp("correlator-site")) as built:
        yield built

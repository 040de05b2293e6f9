from collections.abc import Iterator

import pytest

from devstack.containerd import RELEASES, Release
from tests.support.stack import Stack, private_stack, release_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with private_stack(tmp_path_factory.mktemp("e2e")) as running:
        yield running


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def release_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack per containerd release: its tests run on 1.6 and on 2.1."""
    release: Release = request.param
    with private_stack(tmp_path_factory.mktemp("e2e"), release=release) as running:
        yield running

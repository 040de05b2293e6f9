from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, private_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with private_stack(tmp_path_factory.mktemp("e2e")) as running:
        yield running

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.faults import FaultProxy
from devstack.registry import LocalRegistry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def proxy(registry: LocalRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

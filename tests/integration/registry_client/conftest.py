from collections.abc import Iterator

import pytest

from devstack.faults import FaultProxy
from devstack.registry import LocalRegistry


@pytest.fixture
def proxy(registry: LocalRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as running:
        yield running

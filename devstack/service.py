"""What the demo, benchmarks and tests start and must always stop, usable as a ``with`` block."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Service(ABC):
    """Started by ``start`` or by entering a ``with`` block, which stops it however it ends."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> object:
        """Safe to call twice, and on a service that never started; what it returns (an exit
        code) is for callers that ask."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

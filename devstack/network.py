"""A private network namespace in which a registry is not on loopback.

lazy2dfs reaches loopback registries over plain HTTP without being told, so a registry on
127.0.0.1 cannot show what a user meets with a registry elsewhere on the network: HTTPS unless
told otherwise (``--plain-http``, ``registry.plain_http``, hosts.toml). In a namespace of its
own, the loopback device also carries a private address (``10.x.y.z``): a registry bound there
is an ordinary network registry to every process in the namespace, and no packet leaves the
machine. Processes join it with ``nsenter --net`` (``argv``); this process's threads with
``run``, which enters it on a thread of its own (a network namespace belongs to a thread).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from lazy2dfs.errors import UnavailableError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_NAMES = itertools.count()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise UnavailableError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


class PrivateNetwork:
    """``ip netns`` namespace ``name`` with ``address`` on its loopback device; removed on exit."""

    def __init__(self) -> None:
        number = next(_NAMES)
        self.name = f"lazy2dfs-{os.getpid()}-{number}"
        # One address per namespace of this process, so two at once never look alike.
        self.address = f"10.{200 + number % 50}.{os.getpid() // 256 % 256}.{os.getpid() % 256 or 1}"
        self.path = Path("/run/netns") / self.name

    def __enter__(self) -> PrivateNetwork:
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/32", "dev", "lo")
        except BaseException:
            self.close()
            raise
        return self

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace (mounts and everything else shared)."""
        return ["nsenter", f"--net={self.path}", *command]

    def run(self, call: Callable[[], T]) -> T:
        """``call()`` on a thread inside the namespace; its result or its exception."""
        outcome: list[T] = []
        failure: list[BaseException] = []

        def inside() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into " + str(self.path))
                finally:
                    os.close(fd)
                outcome.append(call())
            except BaseException as exc:  # handed to the caller below
                failure.append(exc)

        thread = threading.Thread(target=inside, name=f"in {self.name}")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return outcome[0]

    def close(self) -> None:
        if self.path.exists():
            _ip("netns", "delete", self.name)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

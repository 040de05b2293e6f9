"""A child process that the demo, benchmarks and tests start and must always stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lazy2dfs.errors import UnavailableError


class ChildProcess:
    """Runs ``argv`` with its output in ``log_path`` (and ``env``, if given, as its whole
    environment); ``stop`` is safe to call twice."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: the child's environment (default: this process's)."""
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls ``ready`` until it holds; fails early if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                raise UnavailableError(
                    f"{self.name} exited with {self.proc.returncode} before {what}:\n"
                    + self.log_tail()
                )
            time.sleep(0.02)
        raise UnavailableError(f"{self.name} not {what} after {timeout}s:\n" + self.log_tail())

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def lazy2dfs_argv() -> list[str]:
    """``lazy2dfs`` run by this interpreter, so children use the same virtualenv."""
    return [sys.executable, "-m", "lazy2dfs"]

"""Sampling profiles of a running daemon with py-spy (from the dev extras), for benchmarks
that are asked where a cell's time goes: ``py-spy record`` attaches to the process for the
length of a ``with`` block and writes a flame graph (SVG) or a speedscope file when it ends.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMATS = {"flamegraph": ".svg", "speedscope": ".speedscope.json", "raw": ".txt"}
STOP_TIMEOUT = 120.0  # py-spy writes its output after SIGINT; large profiles take a while
RATE = 100  # samples per second: py-spy's default, a few per cent of one core


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is missing: `make venv` installs it (dev extras)")
    return found


@contextmanager
def recorded(pid: int, out: Path, format: str = "flamegraph") -> Iterator[Path]:
    """Profiles process ``pid`` (its threads and child processes) while the block runs;
    yields the path the profile is written to: ``out`` plus the format's suffix.

    Python frames only: py-spy reads C frames only from a process it stops at every sample,
    and stopping the FUSE daemon so hung a cold run here for good (``--native``, which py-spy
    refuses with ``--nonblocking``). ``perf record -a -g`` sees the C and kernel frames."""
    path = out.with_name(out.name + FORMATS[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [_py_spy(), "record", "--pid", str(pid), "--output", str(path)]
    argv += ["--format", format, "--rate", str(RATE), "--subprocesses", "--nonblocking"]
    log = path.with_name(path.name + ".log")
    with log.open("wb") as output:
        spy = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield path
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    if not path.exists():
        raise RuntimeError(f"py-spy wrote no profile; its output is in {log}")
    log.unlink()

"""A command run with its standard error on a pseudo-terminal, as at a user's shell: what it
draws there (progress bars) is what the user sees."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import threading
from collections.abc import Sequence

# tqdm's bar: description, percentage, bar, done/total, [elapsed<remaining, rate].
BAR = re.compile(
    r"\r(?P<label>[^\r\n]+?): +\d+%\|[^|]*\| *[\d.]+[kMG]?/[\d.]+[kMG]?"
    r" \[[\d:]+<(?P<left>[\d:?]+), *(?P<rate>[^\]]*)\]"
)


def on_terminal(argv: Sequence[str], timeout: float = 300) -> tuple[int, str]:
    """Runs ``argv`` with standard error on a terminal; its exit code and what it drew."""
    primary, secondary = pty.openpty()
    shown = bytearray()
    reader = threading.Thread(target=_drain, args=(primary, shown))
    reader.start()
    try:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=secondary, timeout=timeout)
    finally:
        os.close(secondary)
        reader.join(30)
        os.close(primary)
    return done.returncode, shown.decode(errors="replace")


def _drain(fd: int, into: bytearray) -> None:
    """Reads the terminal until its other end is closed (EIO), so writes never block."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        into += data

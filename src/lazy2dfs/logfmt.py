"""Structured logs: one line per event, ``key=value`` pairs, readable by people and by Loki/grep.

Call sites name the event and its fields::

    log = get_logger(__name__)
    log.info("layer fallback", layer=digest, image=ref, reason="no TOC")

which prints ``time=... level=info logger=lazy2dfs.x event="layer fallback" layer=sha256:...``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_FIELDS = "_lazy2dfs_fields"


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """Renders a record and its fields as one logfmt line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"time={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        fields: Mapping[str, object] = getattr(record, _FIELDS, {})
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class EventLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose calls take the event's fields as keyword arguments."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        std = {k: kwargs.pop(k) for k in ("exc_info", "stack_info", "stacklevel") if k in kwargs}
        std["extra"] = {_FIELDS: dict(kwargs)}
        return msg, std


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name), {})


def configure(level: str) -> None:
    """Send lazy2dfs's logs to stderr at ``level`` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("lazy2dfs")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False

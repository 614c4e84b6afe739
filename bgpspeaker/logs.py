"""Structured logs: one line per event, `key=value` (logfmt), greppable and machine-readable.

Why logfmt rather than JSON: operators read these in `kubectl logs` first and in a log
pipeline second; logfmt serves both. Fields come from `extra={"fields": {...}}` so the
message stays a short constant ("route announced") and the variable parts are keys.
Nothing here knows about secrets: the rule is that no secret is ever put in a log call
(passwords are read only by the ExaBGP config renderer, and never logged).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Mapping


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={stamp}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        fields: Mapping[str, Any] = getattr(record, "fields", None) or {}
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client logs every retry of urllib3 at WARNING; our informer logs its own.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def fields(**values: Any) -> dict[str, Any]:
    """`log.info("route announced", extra=fields(prefix=p, peer=n))`."""
    return {"fields": values}

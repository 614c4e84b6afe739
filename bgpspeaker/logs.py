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
from typing import Mapping


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char == "\n":
        return "\\n"
    if not char.isprintable():  # control characters, ESC, NUL, U+2028...: never raw in a log line
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return char


def _logfmt_value(value: object) -> str:
    """A logfmt value: quoted when it holds a space, `=` or `"`, escaped so that hostile
    text (a Service name, an annotation) can neither forge a second log line nor send
    escape sequences to an operator's terminal. (An encoding of the log format, not
    `model.quote`, which quotes untrusted text inside a message.)"""
    text = str(value)
    if text == "" or not text.isprintable() or any(c in text for c in ' ="\\'):
        text = '"' + "".join(_escape(c) for c in text) + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [
            f"ts={stamp}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        fields: Mapping[str, object] = getattr(record, "fields", None) or {}
        parts.extend(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"error={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client logs every retry of urllib3 at WARNING; our informer logs its own.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def fields(**values: object) -> dict[str, Mapping[str, object]]:
    """`log.info("route announced", extra=fields(prefix=p, peer=n))`."""
    return {"fields": values}

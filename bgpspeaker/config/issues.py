"""What a config problem looks like: a field path, a message, and the YAML line if known.

Kept apart from the loader so code that only reports or catches config problems (the
daemon's reload loop, the CLI) does not need to know how YAML is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: `path` like `peers[0].asn` ("" for the whole file), `line` 1-based."""

    path: str
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        text = text if self.line is None else f"{text} (line {self.line})"
        # One printable line per issue, whatever a message quotes from the file: check-config
        # promises `path: message` lines, and these reach terminals and logs.
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(Exception):
    """The config is not usable; `issues` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[ConfigIssue], source: Optional[str] = None):
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        self.source = source  # the file (or "<string>") the issues are about
        super().__init__("\n".join(str(issue) for issue in self.issues))

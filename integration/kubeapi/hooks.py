"""Fault injection and the request log: what tests use to make the API misbehave on cue.

Kept apart from the store (which only knows objects) and from routing (which only
knows URLs), so a test reads one small module to know what `fail_next` and `delay` do.
Rules match the request path with shell globs (`fnmatch`), never the query string.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from dataclasses import dataclass

from .resources import REASONS, ApiError



@dataclass
class _FailRule:
    method: str
    path_glob: str
    status: int
    remaining: int
    retry_after: int | None


class Hooks:
    def __init__(self, log_limit: int = 50_000):
        self._fail: list[_FailRule] = []
        self._delays: dict[str, float] = {}
        self.requests: deque[dict] = deque(maxlen=log_limit)

    def fail_next(self, method: str, path_glob: str, status: int, n: int = 1,
                  retry_after: int | None = None) -> None:
        """The next `n` requests matching method (`*` = any) and path glob get `status`."""
        self._fail.append(_FailRule(method.upper(), path_glob, int(status), int(n), retry_after))

    def delay(self, path_glob: str, seconds: float) -> None:
        """Delay every request matching the glob by `seconds` (0 removes the rule)."""
        if seconds > 0:
            self._delays[path_glob] = float(seconds)
        else:
            self._delays.pop(path_glob, None)

    def record(self, method: str, path: str, query: dict, content_type: str, body: object,
               user: str | None = None) -> None:
        """`user`: the bearer token (the emulator accepts any): which identity made the request."""
        self.requests.append({"method": method, "path": path, "query": query,
                              "content_type": content_type, "body": body, "user": user})

    def delay_for(self, path: str) -> float:
        return max((s for g, s in self._delays.items() if fnmatch.fnmatchcase(path, g)), default=0.0)

    def failure_for(self, method: str, path: str) -> ApiError | None:
        for rule in self._fail:
            if rule.method in ("*", method) and fnmatch.fnmatchcase(path, rule.path_glob):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._fail.remove(rule)
                reason = REASONS.get(rule.status, "InternalError")
                return ApiError(rule.status, reason, f"injected failure: {rule.status} {reason}",
                                retry_after=rule.retry_after)
        return None

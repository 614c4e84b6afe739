"""labelSelector and fieldSelector parsing: query strings in, predicates on object dicts out.

Parsed once per request, so LIST and every watch event pay only for a few dict lookups.
Malformed selectors and unsupported field paths are 400 BadRequest, as the apiserver
answers, so a client bug shows up here instead of as a silently unfiltered list.
"""

from __future__ import annotations

import re
from typing import Callable

from .resources import ApiError, Resource

Predicate = Callable[[dict], bool]

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside `( )`: `a in (x,y),b` is two requirements."""
    parts, depth, current = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _label_requirement(text: str) -> Predicate:
    if m := _SET_RE.match(text):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(text):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_RE.match(text):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ApiError(400, "BadRequest", f"labelSelector: unable to parse requirement: {text!r}")


def label_selector(selector: str | None) -> Predicate | None:
    """Predicate on an object for a labelSelector; None when the selector is empty."""
    if not selector:
        return None
    requirements = [_label_requirement(part) for part in _split(selector)]

    def matches(obj: dict) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)
    return matches


def _field_value(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(selector: str | None, resource: Resource) -> Predicate | None:
    """Predicate for a fieldSelector: `=`, `==`, `!=` on metadata.name/namespace and the
    resource's own supported fields; anything else is 400 as on a real apiserver."""
    if not selector:
        return None
    requirements = []
    for part in _split(selector):
        m = _EQ_RE.match(part) or re.match(r"^\s*([\w./-]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"fieldSelector: invalid selector: {part!r}")
        path, op, value = m.groups()
        if path not in ("metadata.name", "metadata.namespace") + resource.fields:
            raise ApiError(400, "BadRequest", f'"{path}" is not a known field selector: '
                                              f'field label not supported: {path}')
        requirements.append((path, op == "!=", value))

    def matches(obj: dict) -> bool:
        return all((_field_value(obj, path) == value) != negate for path, negate, value in requirements)
    return matches

"""The generic toolkit the config loader is written with: rules, field tables, issues.

A rule reads one YAML node (config/source.py) and returns its value, or reports the
problem to an Issues list and returns INVALID; it never raises, so the loader goes on and
the operator gets every problem at once (docs/design.md, invariant 6). Composite rules
(`optional`, `list_of`, `section` over a table of `Field`s) build the schema from smaller
rules. Nothing here knows about BGP or Kubernetes: the value rules that do are in
values.py, the schema tables and the checks across fields in load.py.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from bgpspeaker.config.issues import ConfigIssue
from bgpspeaker.config.source import Node, join
from bgpspeaker.model import quote  # noqa: F401  (re-exported: the value rules and load.py use it from here)


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


# What a rule makes of a YAML node: a value of whatever type its field has (an int, an
# address, a tuple of dataclasses...), or INVALID. Genuinely any type: the schema tables
# (load.py) give each field its rule, and the typed Config is built from the results.
Parsed = Any

INVALID: Parsed = _Invalid()  # what a rule returns after it reported the problem

Rule = Callable[["Issues", str, Node], Parsed]


class Issues:
    """The problems found so far; `add` records one and returns INVALID for the rule to return."""

    def __init__(self) -> None:
        self.list: list[ConfigIssue] = []

    def add(self, path: str, message: str, node: Optional[Node] = None, line: Optional[int] = None) -> Parsed:
        self.list.append(ConfigIssue(path, message, line if line is not None else node.line if node else None))
        return INVALID


def apply_rule(rule: Rule, issues: Issues, path: str, node: Node) -> Parsed:
    """rule(node), except for a scalar YAML could not construct: source.py reported it already."""
    return INVALID if node.kind == "broken" else rule(issues, path, node)


def show(node: Node) -> str:
    """What the operator wrote, named in YAML terms: `string '90'`, `boolean true`, `a list`."""
    if node.kind == "mapping":
        return "a mapping"
    if node.kind == "sequence":
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {node.text}"
    if isinstance(value, int):
        return f"integer {node.text}"
    if isinstance(value, float):
        return f"number {node.text}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    return f"{type(value).__name__} {quote(node.text)}"


# --- scalar rules ---------------------------------------------------------------------

DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")  # fullmatch


def integer_value(issues: Issues, path: str, node: Node) -> Parsed:
    if node.kind == "scalar" and type(node.value) is int:
        if node.plain and not DECIMAL.fullmatch(node.text):
            # YAML 1.1 reads 010 as 8, 1:30 as 90, 0x10 as 16: almost never what was meant.
            return issues.add(
                path, f"write {node.text} as a plain decimal number (YAML reads it as {node.value})", node
            )
        return node.value
    return issues.add(path, f"must be an integer, got {show(node)}", node)


def integer(low: int, high: int) -> Rule:
    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        value = integer_value(issues, path, node)
        if value is not INVALID and not low <= value <= high:
            return issues.add(path, f"must be {low}..{high}, got {value}", node)
        return value

    return rule


def seconds(issues: Issues, path: str, node: Node) -> Parsed:
    value = node.value if node.kind == "scalar" else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return issues.add(path, f"must be a number of seconds, got {show(node)}", node)
    if not math.isfinite(value) or value < 0:
        return issues.add(path, f"must be a number of seconds >= 0, got {node.text}", node)
    return float(value)


def boolean(issues: Issues, path: str, node: Node) -> Parsed:
    if node.kind == "scalar" and isinstance(node.value, bool):
        return node.value
    return issues.add(path, f"must be true or false, got {show(node)}", node)


def string(issues: Issues, path: str, node: Node) -> Parsed:
    if node.kind != "scalar" or (node.plain and node.value is None):
        return issues.add(path, f"must be a string, got {show(node)}", node)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in node.text):  # no field needs them; they forge output
        return issues.add(path, f"{quote(node.text)} contains a line break or another control character", node)
    return node.text  # as written: `name: no` is the string 'no', not false


def one_of(choices: dict[str, Parsed]) -> Rule:
    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        text = string(issues, path, node)
        if text is INVALID:
            return text
        if text not in choices:
            return issues.add(path, f"must be one of {', '.join(choices)}, got {quote(text)}", node)
        return choices[text]

    return rule


def pattern(regex: str, what: str) -> Rule:
    compiled = re.compile(regex)

    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        text = string(issues, path, node)
        if text is not INVALID and not compiled.fullmatch(text):
            return issues.add(path, f"{quote(text)} is not {what}", node)
        return text

    return rule


# --- composite rules ------------------------------------------------------------------


def optional(rule: Rule) -> Rule:
    """null is allowed and means "not set" (for tier attributes that are simply not sent)."""

    def wrapped(issues: Issues, path: str, node: Node) -> Parsed:
        return None if node.kind == "scalar" and node.plain and node.value is None else rule(issues, path, node)

    return wrapped


def list_of(item: Rule, *, unique: bool = False, non_empty: bool = False) -> Rule:
    """A YAML list (null = empty). Keeps INVALID items, so indices still match the file."""

    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        if node.kind == "scalar" and node.value is None:
            items: list[Node] = []
        elif node.kind != "sequence":
            hint = f" (write [{node.text}])" if node.kind == "scalar" else ""
            return issues.add(path, f"must be a list, got {show(node)}{hint}", node)
        else:
            items = node.value
        if non_empty and not items:
            return issues.add(path, "must list at least one entry", node)
        values = []
        first_at: dict[Parsed, int] = {}
        for index, child in enumerate(items):
            value = apply_rule(item, issues, f"{path}[{index}]", child)
            if unique and value is not INVALID:
                if value in first_at:
                    value = issues.add(
                        f"{path}[{index}]", f"{quote(child.text)} is listed twice (also [{first_at[value]}])", child
                    )
                else:
                    first_at[value] = index
            values.append(value)
        return tuple(values)

    return rule


def refused(why: str) -> Rule:
    """A field we know (another tool has it) but cannot honour: an error saying why, never ignored."""

    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        return issues.add(path, why, node)

    return rule


@dataclass(frozen=True)
class Field:
    """One row of a field table: YAML key, dataclass attribute, rule, required or defaulted."""

    key: str
    attr: str
    rule: Rule
    required: bool = False


def section(fields: Iterable[Field]) -> Rule:
    """A YAML mapping read by a field table, as {attr: value} of the valid fields only.

    Absent fields are absent from the result (the dataclass default applies); null is an
    empty mapping, so a section whose lines are all commented out means "defaults".
    """
    table = {f.key: f for f in fields}

    def rule(issues: Issues, path: str, node: Node) -> Parsed:
        if node.kind == "scalar" and node.value is None:
            children: dict[str, Node] = {}
        elif node.kind != "mapping":
            return issues.add(path, f"must be a mapping, got {show(node)}", node)
        else:
            children = node.value
        values: dict[str, Parsed] = {}
        for key, child in children.items():
            if key not in table:
                issues.add(
                    join(path, key), f"unknown field ({suggest(key, table)})", line=node.key_lines.get(key, child.line)
                )
                continue
            value = apply_rule(table[key].rule, issues, join(path, key), child)
            if value is not INVALID:
                values[table[key].attr] = value
        for f in table.values():
            if f.required and f.key not in children:
                issues.add(join(path, f.key), "required field is missing", node)
        return values

    return rule


def suggest(word: str, options: Iterable[str]) -> str:
    options = list(options)
    for option in options:
        if option.lower() == word.lower():
            return f"did you mean {option}?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return f"expected one of: {', '.join(options)}"

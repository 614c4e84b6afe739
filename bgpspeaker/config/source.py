"""YAML text to a tree of nodes that remember their line, so every error can name it.

`yaml.safe_load` throws the line numbers away, so we compose the node tree ourselves
and keep, for each value, its line and — for scalars — the text as written. The text
matters: YAML 1.1 (what PyYAML implements) reads `no` as false and `64512:10` as the
base-60 number 3870730, so fields that are strings (names, communities) take the
scalar as the operator typed it instead of what YAML guessed.

Syntax errors, duplicate keys and unknown tags become ConfigIssues like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from bgpspeaker.config.issues import ConfigIssue

MERGE_TAG = "tag:yaml.org,2002:merge"


# A node's value, by its kind: a scalar of any type YAML constructs, a dict[str, Node]
# or a list[Node]; the rules (rules.py, values.py) check which before they read it.
Value = Any


@dataclass(eq=False)
class Node:
    """One YAML value. `value` is the constructed scalar, a dict of Nodes or a list of Nodes."""

    kind: str  # "scalar" | "mapping" | "sequence" | "broken" (a scalar YAML could not construct)
    line: int
    value: Value = None
    text: str = ""  # a scalar as written (after unquoting)
    plain: bool = False  # an unquoted scalar: YAML guessed its type
    key_lines: dict[str, int] = field(default_factory=dict)  # mapping: where each key is

    def get(self, key: Union[str, int]) -> Optional["Node"]:
        """The child at a mapping key or sequence index, or None (for error lines only)."""
        if self.kind == "mapping" and isinstance(key, str):
            return self.value.get(key)
        if self.kind == "sequence" and isinstance(key, int) and 0 <= key < len(self.value):
            return self.value[key]
        return None


def parse(text: str) -> tuple[Optional[Node], list[ConfigIssue]]:
    """The root node of the single YAML document in `text`, and any problems found."""
    issues: list[ConfigIssue] = []
    try:
        # The reader rejects control characters already in the constructor.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:
        return None, [ConfigIssue("", f"not valid YAML: {_one_line(error)}")]
    try:
        root = loader.get_single_node()
        if root is None:
            return None, [ConfigIssue("", "the file is empty: expected a mapping with cluster, speaker, peers, pools")]
        return _convert(loader, root, "", issues, {}), issues
    except yaml.MarkedYAMLError as error:
        return None, [_syntax_issue(error)]
    except yaml.YAMLError as error:
        return None, [ConfigIssue("", f"not valid YAML: {_one_line(error)}")]
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        return None, [ConfigIssue("", "not valid YAML: nested too deeply")]
    finally:
        loader.dispose()


def _one_line(error: Exception) -> str:
    """PyYAML's messages span lines ("...\n  in <unicode string>, position 0"): fold them."""
    return " ".join(str(error).split())


def _syntax_issue(error: yaml.MarkedYAMLError) -> ConfigIssue:
    mark = error.problem_mark or error.context_mark
    what = error.problem or "syntax error"
    if error.context:
        what = f"{what} ({error.context})"
    if "expected a single document" in str(error.context or ""):
        what = "the file holds several YAML documents: expected one"
    return ConfigIssue("", f"not valid YAML: {what}", mark.line + 1 if mark else None)


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, path: str, issues: list[ConfigIssue], memo: dict[int, Node]
) -> Node:
    # Aliases share node objects: convert each once (linear time even for "billion laughs").
    if id(node) in memo:
        return memo[id(node)]
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        result = Node("scalar", line, text=node.value, plain=node.style is None)
        try:
            result.value = loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as error:
            problem = getattr(error, "problem", None) or str(error)
            issues.append(ConfigIssue(path, f"cannot read {node.value!r}: {problem}", line))
            result.kind = "broken"  # reported here; the field rules skip it
        memo[id(node)] = result
        return result
    if isinstance(node, yaml.SequenceNode):
        result = Node("sequence", line, value=[])
        memo[id(node)] = result
        result.value.extend(_convert(loader, item, f"{path}[{i}]", issues, memo) for i, item in enumerate(node.value))
        return result
    result = Node("mapping", line, value={})
    memo[id(node)] = result
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        key_line = key_node.start_mark.line + 1
        if key_node.value in seen:
            # PyYAML keeps the last silently; a duplicate is almost always an editing mistake.
            issues.append(
                ConfigIssue(
                    join(path, key_node.value), f"duplicate key (first at line {seen[key_node.value]})", key_line
                )
            )
        seen.setdefault(key_node.value, key_line)
    try:
        loader.flatten_mapping(node)  # `<<: *anchor` merges; the mapping's own keys win
    except yaml.YAMLError as error:
        issues.append(ConfigIssue(path, f"cannot merge: {getattr(error, 'problem', error)}", line))
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
            issues.append(ConfigIssue(path, "mapping keys must be plain names", key_node.start_mark.line + 1))
            continue
        key = key_node.value
        result.value[key] = _convert(loader, value_node, join(path, key), issues, memo)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]+")


def join(path: str, key: str) -> str:
    """`path.key`; a key that is not a plain name is quoted, so no message can hold raw control text."""
    if not _PLAIN_KEY.fullmatch(key):
        key = repr(key)
    return f"{path}.{key}" if path else key

"""The three PATCH formats the official client and kubectl send, applied to plain dicts.

The `kubernetes` client 37 sends a dict body as strategic-merge-patch and a list body as
json-patch (measured, see docs/reference/kube-emulator.md); `_content_type` can force
merge-patch. Strategic merge is approximated by merge-patch with lists replaced and
`$`-directives dropped: enough for the Service/Node/EndpointSlice/Lease fields this
project writes, without the per-field merge keys of the real schema.
"""

from __future__ import annotations

import copy

from .resources import ApiError

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: object, patch: object, *, strategic: bool = False) -> object:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue    # $patch, $retainKeys, $setElementOrder/...: ordering hints we do not need
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"json patch: path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: object, parts: list[str], path: str) -> tuple[object, str]:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"json patch: path {path!r} does not exist") from None
    return node, parts[-1]


def _get(doc: object, path: str) -> object:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path)
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"json patch: path {path!r} does not exist") from None


def _remove(doc: object, path: str) -> object:
    parent, last = _parent(doc, _pointer(path), path)
    try:
        return parent.pop(int(last) if isinstance(parent, list) else last)
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"json patch: cannot remove {path!r}: it does not exist") from None


def _add(doc: object, path: str, value: object, replace: bool = False) -> None:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    elif isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f"json patch: cannot replace {path!r}: it does not exist")
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"json patch: path {path!r} has no container")


def json_patch(target: dict, ops: list) -> dict:
    """RFC 6902 on a copy of `target`."""
    doc = copy.deepcopy(target)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "BadRequest", f"json patch: operation {i} needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind == "add":
            _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "replace":
            _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            _add(doc, path, _remove(doc, op["from"]))
        elif kind == "copy":
            _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(422, "Invalid", f"json patch: test failed at {path!r}")
        else:
            raise ApiError(400, "BadRequest", f"json patch: operation {i}: unknown op {kind!r}")
    return doc


def apply_patch(target: dict, patch: object, content_type: str) -> dict:
    """Apply `patch` of the given Content-Type; 415 for types we do not serve (e.g. SSA)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            raise ApiError(400, "BadRequest", "json patch: body must be a list of operations")
        return json_patch(target, patch)
    if ctype in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", f"{ctype}: body must be a JSON object")
        return merge_patch(target, patch, strategic=ctype == STRATEGIC)
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                f"accepted media types include: {JSON_PATCH}, {MERGE}, {STRATEGIC}")

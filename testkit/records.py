"""The allocation records an API server holds, read from its ConfigMaps (test helper)."""

from __future__ import annotations

from typing import Iterable, Optional

from bgpspeaker.records import RECORD_LABEL, AddressRecord, block_from_dict, is_import_marker


def recorded(configmaps: Iterable[dict], namespace: Optional[str] = None) -> dict[str, AddressRecord]:
    """Address (as text) -> its record, from the address blocks among `configmaps` (in
    `namespace`, when given)."""
    found: dict[str, AddressRecord] = {}
    for obj in configmaps:
        meta = obj.get("metadata") or {}
        if RECORD_LABEL not in (meta.get("labels") or {}) or (namespace and meta.get("namespace") != namespace):
            continue
        if is_import_marker(obj):
            continue
        found.update({str(r.address): r for r in block_from_dict(obj).values()})
    return found

"""Raw Kubernetes JSON (dicts, as the API or `kubectl get -o yaml` gives them) → slim views.

One parser for both the informer (raw watch JSON, skipping the client's slow model
deserialisation) and the offline `plan`/`explain` (objects files), so both see exactly
the same Service. Parsing is lenient about *shape* (a missing field takes its Kubernetes
default) but never interprets untrusted values: IPs and annotations stay strings for
the allocator and planner to judge, with reasons. A view keeps only the annotations
they read (annotations.kept): the informer's cache holds views, so a tenant's huge
unrelated annotation costs nothing past its parse.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Iterable, Literal, Mapping, Optional, Union

from bgpspeaker import records as records_module
from bgpspeaker.annotations import kept
from bgpspeaker.model import (
    JSON,
    Endpoint,
    EndpointSliceView,
    JSONObject,
    NodeView,
    ServicePort,
    ServiceView,
    Snapshot,
    freeze_pairs,
)

log = logging.getLogger(__name__)

# Shape checks use `dict`, not typing.Mapping: JSON and YAML both decode to plain dicts,
# and the ABC check cost ~20% of service_from_dict at 10k Services (measured).

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _meta(obj: JSONObject) -> JSONObject:
    return obj.get("metadata") or {}


# Values that recur in every object: one string each for the whole cache, not one per
# object (the JSON decoder builds every value anew; ~50 bytes each, ~400 per Service and
# its slice at 10,000; tracemalloc, bench_cold_path --memory).
_COMMON = {
    value: value
    for value in (
        "TCP", "UDP", "SCTP", "IPv4", "IPv6", "FQDN", "SingleStack", "PreferDualStack", "RequireDualStack",
        "ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Cluster", "Local", "http", "https",
    )
}  # fmt: skip


def _common(text: str) -> str:
    return _COMMON.get(text, text)


def _shared(text: str) -> str:
    """Namespaces and node names: few, each in many objects (interned)."""
    return sys.intern(text)


def _strings(mapping: JSON) -> dict[str, str]:
    """Labels/annotations with non-string values dropped (the API never sends them; YAML files might)."""
    if not isinstance(mapping, dict):
        return {}
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, str)}


def service_from_dict(obj: JSONObject) -> ServiceView:
    meta, spec = _meta(obj), obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ports = tuple(
        ServicePort(
            name=_common(str(p.get("name") or "")),
            protocol=_common(str(p.get("protocol") or "TCP")),
            port=p["port"] if isinstance(p.get("port"), int) else -1,
        )
        for p in (spec.get("ports") or [])
        if isinstance(p, dict)
    )
    return ServiceView(
        namespace=_shared(str(meta.get("namespace") or "default")),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        type=_common(str(spec.get("type") or "ClusterIP")),
        created=str(meta.get("creationTimestamp") or ""),
        load_balancer_class=spec.get("loadBalancerClass") if isinstance(spec.get("loadBalancerClass"), str) else None,
        external_traffic_policy=_common(str(spec.get("externalTrafficPolicy") or "Cluster")),
        ip_families=tuple(_common(str(f)) for f in (spec.get("ipFamilies") or [])),
        ip_family_policy=_common(policy) if isinstance(policy := spec.get("ipFamilyPolicy"), str) else None,
        ports=ports,
        annotations=freeze_pairs(kept(_strings(meta.get("annotations")))),
        load_balancer_ip=spec.get("loadBalancerIP") if isinstance(spec.get("loadBalancerIP"), str) else None,
        ingress_ips=tuple(str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip")),
    )


def endpoint_slice_from_dict(obj: JSONObject) -> EndpointSliceView:
    meta = _meta(obj)
    endpoints = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        conditions = ep.get("conditions") or {}
        # Kubernetes: a nil `ready` means ready (EndpointSlice API docs, "conditions").
        # Anything but a real boolean true is not ready: an objects file may say "false"
        # as a string, and bool("false") is True.
        ready = conditions.get("ready")
        endpoints.append(
            Endpoint(
                addresses=tuple(str(a) for a in ep.get("addresses") or []),
                ready=ready is None or ready is True,
                node_name=_shared(node) if isinstance(node := ep.get("nodeName"), str) else None,
                serving=conditions.get("serving") if isinstance(conditions.get("serving"), bool) else None,
                terminating=bool(conditions.get("terminating") or False),
            )
        )
    return EndpointSliceView(
        namespace=_shared(str(meta.get("namespace") or "default")),
        name=str(meta.get("name") or ""),
        service_name=_strings(meta.get("labels")).get(SERVICE_NAME_LABEL, ""),
        address_type=_common(str(obj.get("addressType") or "IPv4")),
        endpoints=tuple(endpoints),
    )


def node_from_dict(obj: JSONObject) -> NodeView:
    meta, status = _meta(obj), obj.get("status") or {}
    ready = False
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    addresses = tuple(
        (str(a.get("type")), str(a.get("address"))) for a in status.get("addresses") or [] if isinstance(a, dict)
    )
    return NodeView(
        name=str(meta.get("name") or ""),
        labels=freeze_pairs(_strings(meta.get("labels"))),
        addresses=addresses,
        ready=ready,
    )


def flatten_objects(documents: Iterable[Optional[JSONObject]]) -> list[JSONObject]:
    """Documents of a YAML stream, with `kind: List` (and `*List`) expanded into their items."""
    objects: list[JSONObject] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(flatten_objects(doc["items"]))
        else:
            objects.append(doc)
    return objects


DEFAULT_RECORD_NAMESPACES: Mapping[str, str] = {records_module.LOCAL: records_module.DEFAULT_NAMESPACE}


def snapshot_from_objects(
    documents: Iterable[Optional[JSONObject]], record_namespaces: Mapping[str, str] = DEFAULT_RECORD_NAMESPACES
) -> Snapshot:
    """A Snapshot of the Services, EndpointSlices, Nodes and allocation records among `documents`.

    Records (blocks: ConfigMaps labelled bgpspeaker.io/address-block) count only in the
    namespaces a running cluster reads them from, `record_namespaces` (store -> namespace:
    the speaker's own, and the shared store's), and only with the import marker in the
    local store's namespace, as in a running cluster. A labelled ConfigMap anywhere else
    is a tenant's, evidence of nothing: a dump taken with `kubectl get cm -A` holds them
    (with the marker in its own namespace, a tenant switched the offline audit to records
    and hid every conflict). A labelled ConfigMap that is not a valid record is skipped,
    with a warning, as the informer skips it (and so is an entry of a block that is not a
    valid record). Other kinds are ignored.
    """
    services, slices, nodes = [], [], []
    records: dict[str, dict[str, records_module.AddressRecord]] = {store: {} for store in record_namespaces}
    imported = False
    for obj in flatten_objects(documents):
        if (
            obj.get("kind") == "ConfigMap"
            and ((obj.get("metadata") or {}).get("labels") or {}).get(records_module.RECORD_LABEL)
            == records_module.RECORD_LABEL_VALUE
        ):
            namespace = (obj.get("metadata") or {}).get("namespace")
            stores = [store for store, ns in record_namespaces.items() if ns == namespace]
            if records_module.is_import_marker(obj):
                imported = imported or records_module.LOCAL in stores
            elif stores:
                for store in stores:
                    try:
                        records[store].update(records_module.block_from_dict(obj, store))
                    except records_module.BadRecord as error:
                        log.warning("ignored: %s is not a valid address block: %s", record_name_key(obj), error)
                        break
            continue
        kind = obj.get("kind")
        if kind == "Service":
            services.append(service_from_dict(obj))
        elif kind == "EndpointSlice":
            slices.append(endpoint_slice_from_dict(obj))
        elif kind == "Node":
            nodes.append(node_from_dict(obj))
    snapshot = Snapshot.of(services, slices, nodes)
    if imported:
        snapshot = dataclasses.replace(snapshot, records=records)
    return snapshot


def record_name_key(obj: JSONObject) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def record_or_marker_from_dict(
    obj: JSONObject, store: str = records_module.LOCAL, previous: Optional[object] = None
) -> RecordView:
    """A records informer's view: a block of `store` (its records by key), or IMPORTED for
    the import marker. `previous`: the object's view before, whose unchanged records are kept."""
    if records_module.is_import_marker(obj):
        return IMPORTED
    return records_module.block_from_dict(obj, store, previous if isinstance(previous, dict) else None)


IMPORTED: Literal["imported"] = "imported"  # the view of the import marker in a records cache
RecordView = Union[records_module.Block, Literal["imported"]]  # a records informer's view

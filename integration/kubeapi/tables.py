"""Server-side `Table` rendering, so plain `kubectl get` prints useful columns.

kubectl asks for `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` and, given a
plain list, falls back to NAME and AGE only. People watching the lab want TYPE and
EXTERNAL-IP of Services, so the few kinds we serve get their usual columns; only kubectl
asks for tables, so this path favours brevity over speed.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .resources import Resource


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def _age(obj: dict) -> str:
    try:
        created = datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        return "<unknown>"
    seconds = int((datetime.now(timezone.utc) - created.replace(tzinfo=timezone.utc)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _service(obj: dict) -> list:
    spec = obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)
    if not external:
        external = "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), external, ports or "<none>"]


def _node(obj: dict) -> list:
    ready = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    return ["Ready" if ready and ready[0].get("status") == "True" else "NotReady"]


def _endpoint_slice(obj: dict) -> list:
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    return [obj.get("addressType", ""), ",".join(str(p.get("port")) for p in obj.get("ports") or []),
            ",".join(addresses) or "<unset>"]


_COLUMNS = {
    "Service": (["Type", "Cluster-IP", "External-IP", "Port(s)"], _service),
    "Node": (["Status"], _node),
    "EndpointSlice": (["AddressType", "Ports", "Endpoints"], _endpoint_slice),
}


def table(resource: Resource, objs: list[dict], resource_version: str | None = None) -> dict:
    names, cells = _COLUMNS.get(resource.kind, ([], lambda obj: []))
    columns = [{"name": n, "type": "string", "format": "name" if n == "Name" else "", "description": "",
                "priority": 0} for n in ["Name", *names, "Age"]]
    rows = [{"cells": [o["metadata"]["name"], *cells(o), _age(o)], "object": o} for o in objs]
    meta = {"resourceVersion": resource_version} if resource_version else {}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": columns, "rows": rows}

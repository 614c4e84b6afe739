"""The resource types the emulator serves, their discovery documents, and API errors.

One table says which group/version/plural exists, whether it is namespaced, and whether
it has a /status subresource; routing, discovery and status isolation all read it, so
adding a resource is one line. Errors are one exception type that renders as the
`Status` object every Kubernetes client knows how to parse.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBE_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "emulator",
                "gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z",
                "goVersion": "go1.22.2", "compiler": "gc", "platform": "linux/amd64"}

REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict",
           410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str              # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool = False     # has a /status subresource: spec and status are written apart
    short_names: tuple[str, ...] = ()
    # fieldSelector paths accepted beyond metadata.name/metadata.namespace (as the apiserver)
    fields: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)


_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                 "involvedObject.uid", "reason", "type", "source")
RESOURCES = (
    Resource("", "v1", "services", "Service", True, True, ("svc",), ("spec.clusterIP", "spec.type")),
    Resource("", "v1", "nodes", "Node", False, True, ("no",), ("spec.unschedulable",)),
    Resource("", "v1", "namespaces", "Namespace", False, True, ("ns",), ("status.phase",)),
    Resource("", "v1", "events", "Event", True, False, ("ev",), _EVENT_FIELDS),
    Resource("", "v1", "endpoints", "Endpoints", True, False, ("ep",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, False, ("cm",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("events.k8s.io", "v1", "events", "Event", True, False, ("ev",),
             ("regarding.kind", "regarding.namespace", "regarding.name", "reason", "type")),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
)
BY_PATH = {r.key: r for r in RESOURCES}
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def resource_for(api_version: str, kind: str) -> Resource:
    try:
        return BY_KIND[(api_version, kind)]
    except KeyError:
        raise ApiError(400, "BadRequest", f"apiVersion/kind: {api_version}/{kind} is not served") from None


class ApiError(Exception):
    """An error the API answers with: rendered as a `Status` object with this code."""

    def __init__(self, code: int, reason: str, message: str, *, name: str | None = None,
                 resource: Resource | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.name, self.resource, self.retry_after = name, resource, retry_after

    def status(self) -> dict:
        details: dict = {}
        if self.name is not None:
            details["name"] = self.name
        if self.resource is not None:
            details.update(group=self.resource.group, kind=self.resource.plural)
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": details, "code": self.code}


def not_found(resource: Resource, name: str) -> ApiError:
    what = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    return ApiError(404, "NotFound", f'{what} "{name}" not found', name=name, resource=resource)


# ---- discovery documents -------------------------------------------------------------

def api_versions() -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def group_versions() -> list[tuple[str, str]]:
    return sorted({(r.group, r.version) for r in RESOURCES if r.group})


def api_group_list() -> dict:
    groups = []
    for group, version in group_versions():
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict | None:
    entries = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        singular = r.kind.lower()
        main = {"name": r.plural, "singularName": singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": VERBS}
        if r.short_names:
            main["shortNames"] = list(r.short_names)
        entries.append(main)
        if r.status:
            entries.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                            "kind": r.kind, "verbs": ["get", "patch", "update"]})
    if not entries:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}


# ---- OpenAPI v3, just enough for kubectl ----------------------------------------------
# kubectl create/replace check the OpenAPI v3 document for a `fieldValidation` query
# parameter on the POST of the kind; finding it, they validate on the server (which here
# accepts everything) instead of downloading the full OpenAPI v2 schema, which we lack.

def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root() -> dict:
    gvs = {("", "v1")} | set(group_versions())
    return {"paths": {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash=emulator"}
                      for g, v in sorted(gvs)}}


def openapi_group_version(path: str) -> dict | None:
    paths = {}
    for r in RESOURCES:
        if _gv_path(r.group, r.version) != path:
            continue
        base = f"/{path}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"/{path}/{r.plural}"
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
        ok = {"200": {"description": "OK"}}
        paths[base] = {"post": {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": ok}}
        paths[base + "/{name}"] = {op: {"x-kubernetes-group-version-kind": gvk, "parameters": params,
                                        "responses": ok} for op in ("put", "patch")}
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}

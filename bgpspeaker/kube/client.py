"""Kubernetes client setup, raw requests, and the one-shot read behind `bgpspeaker explain --kubeconfig`.

The official client is used for transport, auth and URLs only: responses are read raw
and parsed by `bgpspeaker.views`, because the client's model deserialisation costs
several times the parse itself at 10,000 objects (measured in
integration/bench/bench_kube.py) and the core wants slim frozen views anyway.

Requests go through the ApiClient's own `param_serialize` + `call_api` (what every generated
method calls; `request_raw` below), not through the generated `CoreV1Api`: importing that
class loads 254 model modules, 0.29 s of CPU. Before the first request, that was most of
what a 1,000-Service cold start spent before its BGP session came up (bench); deferred to
the first status write, it became a CPU burst in the middle of a failover test.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from bgpspeaker import views
from bgpspeaker.model import Snapshot

# (connect, read) seconds for ordinary requests: a hung API must not hang a thread forever.
REQUEST_TIMEOUT = (5.0, 30.0)

CORE = "/api/v1"
LEASES = "/apis/coordination.k8s.io/v1"
SERVICES_PATH = f"{CORE}/services"
NODES_PATH = f"{CORE}/nodes"
ENDPOINT_SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
MERGE_PATCH = "application/merge-patch+json"


def api_client(kubeconfig: Optional[str] = None) -> kubernetes.client.ApiClient:
    """An ApiClient from `kubeconfig`, or from the pod's service account when None."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Every informer holds one long-lived watch connection, and the status writer, the
    # elector and the event recorder each need one more: the default pool of 4 would
    # make them queue behind each other.
    configuration.connection_pool_maxsize = 16
    return kubernetes.client.ApiClient(configuration)


def object_path(api: str, plural: str, namespace: Optional[str] = None, name: Optional[str] = None,
                subresource: Optional[str] = None) -> str:
    """`/api/v1/namespaces/ns/services/web/status` from its parts (`api`: "/api/v1",
    "/apis/coordination.k8s.io/v1", ...); names are quoted, whatever they hold."""
    parts = [api] + (["namespaces", quote(namespace, safe="")] if namespace else []) + [plural]
    parts += [quote(name, safe="")] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


def request_raw(client: kubernetes.client.ApiClient, method: str, path: str, body: Any = None,
                content_type: Optional[str] = None, request_timeout: Any = REQUEST_TIMEOUT, **query: Any) -> Any:
    """`method` `path` (`query` in the API's own names: `resourceVersion`, `watch`, ...) with
    a JSON `body`: the unread urllib3 response, as a generated method returns it with
    `_preload_content=False`. A non-2xx answer raises ApiException, as those methods do."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    request = client.param_serialize(
        method=method, resource_path=path, query_params=[(k, v) for k, v in query.items() if v is not None],
        header_params=headers, body=body, auth_settings=["BearerToken"])
    response = client.call_api(*request, _request_timeout=request_timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def read_json(response: Any) -> Any:
    """The JSON body of a raw (`_preload_content=False`) response, which is then released."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# A LIST page is read whole, then parsed: its size is the informer's peak memory. Pages
# aim at PAGE_BYTES of JSON: the first asks for FIRST_PAGE objects, each next one for as
# many as fit at the previous page's bytes per object (between MIN_PAGE and page_size).
# Ordinary Services (1-2 KB) reach 500 a page from the second page on; 10,000 Services
# with a 250 KB annotation each (issue 14) made a 125 MB first page at a fixed 500.
PAGE_BYTES = 4 << 20
FIRST_PAGE = 50
MIN_PAGE = 5


def next_page_size(page_bytes: int, objects: int, page_size: int) -> int:
    """Objects to ask for next, from the last page's size. Pure."""
    per_object = page_bytes / max(objects, 1)
    return max(MIN_PAGE, min(page_size, int(PAGE_BYTES / max(per_object, 1.0))))


def iter_pages(client: kubernetes.client.ApiClient, path: str, page_size: int = 500,
               label_selector: Optional[str] = None) -> Iterator[dict]:
    """One LIST as its raw `*List` pages, each fetched when the previous one is consumed.

    Paged like client-go's pager (at most 500 a page, bounded in bytes too: see
    PAGE_BYTES) and consumed page by page: at 10,000 objects, holding every raw dict at
    once costs ~80 MB of RSS that Python keeps after they are freed (measured:
    bench_kube.py), whereas one page is ~2 MB. All pages come from the first page's
    snapshot, so the last page's `metadata.resourceVersion` is where a watch resumes. An
    expired continue token raises ApiException(410).
    """
    cont = None
    limit = min(page_size, FIRST_PAGE)
    while True:
        response = request_raw(client, "GET", path, limit=limit, labelSelector=label_selector, **{"continue": cont})
        try:
            data = response.data
            page = json.loads(data)
        finally:
            response.release_conn()
        size = len(data)
        del data
        cont = (page.get("metadata") or {}).get("continue")
        limit = next_page_size(size, len(page.get("items") or ()), page_size)
        yield page
        if not cont:
            return


def list_raw(client: kubernetes.client.ApiClient, path: str, page_size: int = 500) -> dict:
    """One LIST, every page followed, as one raw `*List` dict holding the items of all pages."""
    items: list = []
    for page in iter_pages(client, path, page_size):
        items.extend(page.get("items") or [])
    page["items"] = items
    return page


def fetch_snapshot(kubeconfig: Optional[str] = None) -> Snapshot:
    """Services, EndpointSlices and Nodes, listed once and parsed into a Snapshot."""
    client = api_client(kubeconfig)
    try:
        return Snapshot.of(
            services=[views.service_from_dict(o) for o in list_raw(client, SERVICES_PATH)["items"]],
            endpoint_slices=[views.endpoint_slice_from_dict(o) for o in
                             list_raw(client, ENDPOINT_SLICES_PATH)["items"]],
            nodes=[views.node_from_dict(o) for o in list_raw(client, NODES_PATH)["items"]],
        )
    finally:
        client.close()

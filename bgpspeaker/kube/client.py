"""Kubernetes client setup and the one-shot read behind `bgpspeaker explain --kubeconfig`.

The official client is used for transport, auth and URLs only: responses are read raw
(`_preload_content=False`) and parsed by `bgpspeaker.views`, because the client's model
deserialisation costs several times the parse itself at 10,000 objects (measured in
integration/bench/bench_kube.py) and the core wants slim frozen views anyway.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Optional

import kubernetes

from bgpspeaker import views
from bgpspeaker.model import Snapshot

# (connect, read) seconds for ordinary requests: a hung API must not hang a thread forever.
REQUEST_TIMEOUT = (5.0, 30.0)


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


def read_json(response: Any) -> Any:
    """The JSON body of a raw (`_preload_content=False`) response, which is then released."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def iter_pages(list_fn: Callable[..., Any], page_size: int = 500, **query: Any) -> Iterator[dict]:
    """One LIST as its raw `*List` pages, each fetched when the previous one is consumed.

    Paged like client-go's pager (500 a page) and consumed page by page: at 10,000
    objects, holding every raw dict at once costs ~80 MB of RSS that Python keeps after
    they are freed (measured: bench_kube.py), whereas one page is ~2 MB. All pages come
    from the first page's snapshot, so the last page's `metadata.resourceVersion` is
    where a watch resumes. An expired continue token raises ApiException(410).
    """
    extra: dict = {}
    while True:
        page = read_json(list_fn(_preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                                 limit=page_size, **query, **extra))
        cont = (page.get("metadata") or {}).get("continue")
        yield page
        if not cont:
            return
        extra = {"_continue": cont}


def list_raw(list_fn: Callable[..., Any], page_size: int = 500, **query: Any) -> dict:
    """One LIST, every page followed, as one raw `*List` dict holding the items of all pages."""
    items: list = []
    for page in iter_pages(list_fn, page_size, **query):
        items.extend(page.get("items") or [])
    page["items"] = items
    return page


def fetch_snapshot(kubeconfig: Optional[str] = None) -> Snapshot:
    """Services, EndpointSlices and Nodes, listed once and parsed into a Snapshot."""
    client = api_client(kubeconfig)
    try:
        core = kubernetes.client.CoreV1Api(client)
        discovery = kubernetes.client.DiscoveryV1Api(client)
        return Snapshot.of(
            services=[views.service_from_dict(o) for o in list_raw(core.list_service_for_all_namespaces)["items"]],
            endpoint_slices=[views.endpoint_slice_from_dict(o) for o in
                             list_raw(discovery.list_endpoint_slice_for_all_namespaces)["items"]],
            nodes=[views.node_from_dict(o) for o in list_raw(core.list_node)["items"]],
        )
    finally:
        client.close()

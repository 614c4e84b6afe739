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

import codecs
import json
import re
from typing import Iterable, Iterator, Mapping, Optional, Union
from urllib.parse import quote

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from bgpspeaker import views
from bgpspeaker.model import JSON, Snapshot

# (connect, read) seconds for ordinary requests: a hung API must not hang a thread forever.
REQUEST_TIMEOUT = (5.0, 30.0)

CORE = "/api/v1"
LEASES = "/apis/coordination.k8s.io/v1"
SERVICES_PATH = f"{CORE}/services"
NODES_PATH = f"{CORE}/nodes"
DISCOVERY = "/apis/discovery.k8s.io/v1"
ENDPOINT_SLICES_PATH = f"{DISCOVERY}/endpointslices"
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


def object_path(
    api: str,
    plural: str,
    namespace: Optional[str] = None,
    name: Optional[str] = None,
    subresource: Optional[str] = None,
) -> str:
    """`/api/v1/namespaces/ns/services/web/status` from its parts (`api`: "/api/v1",
    "/apis/coordination.k8s.io/v1", ...); names are quoted, whatever they hold."""
    parts = [api] + (["namespaces", quote(namespace, safe="")] if namespace else []) + [plural]
    parts += [quote(name, safe="")] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


def request_raw(
    client: kubernetes.client.ApiClient,
    method: str,
    path: str,
    body: JSON = None,
    content_type: Optional[str] = None,
    request_timeout: Union[float, tuple[float, float]] = REQUEST_TIMEOUT,
    query: Optional[Mapping[str, Union[str, int, bool, None]]] = None,
) -> urllib3.BaseHTTPResponse:
    """`method` `path` (`query` in the API's own names: `resourceVersion`, `watch`, ...; a
    None value is left out) with a JSON `body`: the unread urllib3 response, as a generated
    method returns it with `_preload_content=False`. A non-2xx answer raises ApiException,
    as those methods do."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    request = client.param_serialize(
        method=method,
        resource_path=path,
        query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(*request, _request_timeout=request_timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def read_json(response: urllib3.BaseHTTPResponse) -> JSON:
    """The JSON body of a raw (`_preload_content=False`) response, which is then released."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# A LIST page larger than WHOLE_PAGE is parsed as it streams in, one object at a time
# (iter_list_items): the informer then holds one object's JSON and dict at once, never
# the page's. Pages were read whole and bounded in bytes by guessing the next page's
# count from the last one's size; a tenant's Services sorted among ours still made 50 MB
# pages (issue 14: 10,000 ClusterIP Services with a 250 KB annotation each peaked the
# speaker at 291 MB). The page's size no longer decides memory, so pages are client-go's
# 500 objects. A smaller page (500 ordinary Services are ~0.5 MB) is still parsed whole:
# one json.loads is ~1.5x faster than a raw_decode per object (measured: key strings are
# shared across the page), and the cold start at 50,000 Services parses 100 of them.
LIST_CHUNK = 1 << 20  # bytes read from the socket at a time (256 KB cost 1.5x the parse of 250 KB objects)
WHOLE_PAGE = 4 << 20
# No object is larger (the API refuses requests over 3 MB): past this, a value that does
# not parse is malformed text, not one cut by a chunk's end, and is not read to the end.
MAX_VALUE_CHARS = 16 << 20

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _JsonStream:
    """A JSON text read from `chunks` of bytes, a value at a time (json's own C scanner
    does each value): it holds the unparsed rest of the last chunk plus at most the value
    being read, however long the text."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text, self._pos, self._eof = "", 0, False

    def _more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end."""
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        self._eof = chunk is None
        text = self._utf8.decode(chunk or b"", final=self._eof)
        self._text, self._pos = self._text[self._pos :] + text, 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            self._pos = _WHITESPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return ""

    def take(self, allowed: str) -> str:
        """Consume the next character, one of `allowed`, or raise ValueError."""
        char = self.peek()
        if not char or char not in allowed:
            raise ValueError(f"malformed JSON list: expected one of {allowed!r}, found {char or 'the end'!r}")
        self._pos += 1
        return char

    def value(self) -> JSON:
        """Parse the next whole value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError:
                if len(self._text) - self._pos > MAX_VALUE_CHARS:
                    raise ValueError(f"malformed JSON list: no value parses in {MAX_VALUE_CHARS} characters") from None
                if self._more():
                    continue  # cut by the chunk's end: parse it again with the next chunk
                raise
            # A number (or literal) that ends the text may go on in the next chunk.
            if end == len(self._text) and self._more():
                continue
            self._pos = end
            return value


def iter_list_items(chunks: Iterable[bytes], rest: dict[str, JSON]) -> Iterator[JSON]:
    """The `items` of a `*List` JSON object read from `chunks`, one object at a time, as
    they are parsed; the object's other fields (kind, metadata, ...) go into `rest`,
    complete once the iterator is exhausted. A malformed text raises ValueError. Pure."""
    text = _JsonStream(chunks)
    text.take("{")
    if text.peek() == "}":
        return
    while True:
        key = text.value()
        text.take(":")
        if key == "items" and text.peek() == "[":
            text.take("[")
            if text.peek() == "]":
                text.take("]")
            else:
                while True:
                    yield text.value()
                    if text.take(",]") == "]":
                        break
        else:
            rest[key] = text.value()
        if text.take(",}") == "}":
            return


def page_items(chunks: Iterable[bytes], rest: dict[str, JSON], whole: int = WHOLE_PAGE) -> Iterator[JSON]:
    """iter_list_items, but a text of at most `whole` bytes is parsed in one json.loads."""
    chunks = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in chunks:
        head.append(chunk)
        size += len(chunk)
        if size > whole:

            def replay() -> Iterator[bytes]:
                while head:
                    yield head.pop(0)  # each chunk freed once parsed
                yield from chunks

            yield from iter_list_items(replay(), rest)
            return
    page = json.loads(b"".join(head))
    del head[:]
    if not isinstance(page, dict):
        raise ValueError("malformed JSON list: not an object")
    items = page.pop("items", None) or ()
    rest.update(page)
    yield from items


class Listing:
    """One LIST, every page followed, as an iterator over its objects.

    Paged like client-go's pager (at most `page_size` a page), each page fetched when the
    previous one is consumed, and a large page streamed (page_items): at 10,000 objects, holding
    every raw dict at once costs ~80 MB of RSS that Python keeps after they are freed
    (measured: bench_kube.py). All pages come from the first page's snapshot, so
    `resource_version` (the last page's, set once the iteration is done) is where a
    watch resumes. An expired continue token raises ApiException(410).
    """

    def __init__(
        self, client: kubernetes.client.ApiClient, path: str, page_size: int = 500, label_selector: Optional[str] = None
    ) -> None:
        self._client, self._path, self._page_size, self._label_selector = client, path, page_size, label_selector
        self.resource_version: Optional[str] = None

    def __iter__(self) -> Iterator[JSON]:
        cont = None
        while True:
            response = request_raw(
                self._client,
                "GET",
                self._path,
                query={"limit": self._page_size, "labelSelector": self._label_selector, "continue": cont},
            )
            rest: dict[str, JSON] = {}
            done = False
            try:
                yield from page_items(response.stream(LIST_CHUNK, decode_content=True), rest)
                done = True
            finally:
                if not done:  # abandoned or malformed: the rest of the body must not reach the pool
                    response.close()
                response.release_conn()
            meta = rest.get("metadata") or {}
            self.resource_version = meta.get("resourceVersion")
            cont = meta.get("continue")
            if not cont:
                return


def list_raw(client: kubernetes.client.ApiClient, path: str, page_size: int = 500) -> dict:
    """One LIST, every page followed, as one raw `*List` dict holding the items of all pages."""
    listing = Listing(client, path, page_size)
    items = list(listing)
    return {"items": items, "metadata": {"resourceVersion": listing.resource_version}}


def fetch_snapshot(kubeconfig: Optional[str] = None) -> Snapshot:
    """Services, EndpointSlices and Nodes, listed once and parsed into a Snapshot."""
    client = api_client(kubeconfig)
    try:
        return Snapshot.of(
            services=[views.service_from_dict(o) for o in list_raw(client, SERVICES_PATH)["items"]],
            endpoint_slices=[
                views.endpoint_slice_from_dict(o) for o in list_raw(client, ENDPOINT_SLICES_PATH)["items"]
            ],
            nodes=[views.node_from_dict(o) for o in list_raw(client, NODES_PATH)["items"]],
        )
    finally:
        client.close()

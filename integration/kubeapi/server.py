"""HTTP routes: the Kubernetes REST paths, mapped onto the store, and the watch stream.

Only URL parsing, JSON in/out and streaming live here; every rule about objects is in
store.py. Watch responses are chunked JSON lines written straight from the watcher's
buffer, up to 1000 events per write, so a 10k-object initial burst costs a few writes.
All routes except `/__emulator__/...` go through `_hooks_middleware`, which logs the
request and applies injected delays and failures before any work is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from . import resources, tables
from .resources import BY_PATH, ApiError, Resource
from .selectors import field_selector, label_selector

if TYPE_CHECKING:
    from .emulator import KubeEmulator

CONTROL_PREFIX = "/__emulator__"
_JSON = "application/json"
log = logging.getLogger(__name__)


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type=_JSON)


def error_response(err: ApiError) -> web.Response:
    resp = json_response(err.status(), err.code)
    if err.retry_after is not None:
        resp.headers["Retry-After"] = str(err.retry_after)
    return resp


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def make_app(emu: KubeEmulator) -> web.Application:
    @web.middleware
    async def _hooks_middleware(request: web.Request, handler):
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        emu.hooks.record(request.method, request.path, dict(request.query),
                         request.headers.get("Content-Type", ""), body,
                         user=request.headers.get("Authorization", "").removeprefix("Bearer ") or None)
        pause = emu.hooks.delay_for(request.path)
        if pause:
            await asyncio.sleep(pause)
        try:
            failure = emu.hooks.failure_for(request.method, request.path)
            if failure is not None:
                raise failure
            return await handler(request)
        except ApiError as err:
            return error_response(err)
        except web.HTTPException as exc:      # the router's own 404/405
            return error_response(ApiError(exc.status, resources.REASONS.get(exc.status, "BadRequest"),
                                           f"{exc.reason}: {request.method} {request.path}"))
        except ValueError as exc:             # a malformed number in the query string
            return error_response(ApiError(400, "BadRequest", f"{request.path_qs}: {exc}"))
        except Exception as exc:
            log.exception("kubeapi: %s %s failed", request.method, request.path_qs)
            return error_response(ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}"))

    app = web.Application(middlewares=[_hooks_middleware], client_max_size=1 << 30)
    routes = _Routes(emu)
    app.router.add_get("/version", routes.version)
    app.router.add_get("/version/", routes.version)
    app.router.add_get("/api", routes.api)
    app.router.add_get("/api/", routes.api)
    app.router.add_get("/apis", routes.apis)
    app.router.add_get("/apis/", routes.apis)
    app.router.add_get("/openapi/v3", routes.openapi)
    app.router.add_get("/openapi/v3/{path:.+}", routes.openapi)
    app.router.add_get("/api/{version}", routes.resource_list)
    app.router.add_get("/apis/{group}/{version}", routes.resource_list)
    app.router.add_route("*", "/api/{version}/{rest:.+}", routes.resource)
    app.router.add_route("*", "/apis/{group}/{version}/{rest:.+}", routes.resource)
    return app


class _Routes:
    def __init__(self, emu: KubeEmulator):
        self.emu = emu
        self.store = emu.store

    async def version(self, request: web.Request) -> web.Response:
        return json_response(resources.KUBE_VERSION)

    async def api(self, request: web.Request) -> web.Response:
        return json_response(resources.api_versions())

    async def apis(self, request: web.Request) -> web.Response:
        return json_response(resources.api_group_list())

    async def resource_list(self, request: web.Request) -> web.Response:
        doc = resources.api_resource_list(request.match_info.get("group", ""), request.match_info["version"])
        if doc is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        return json_response(doc)

    async def openapi(self, request: web.Request) -> web.Response:
        path = request.match_info.get("path")
        doc = resources.openapi_root() if path is None else resources.openapi_group_version(path)
        if doc is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        return json_response(doc)

    def _target(self, request: web.Request) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) from the URL, or 404."""
        parts = request.match_info["rest"].strip("/").split("/")
        namespace = None
        if parts[0] == "namespaces" and len(parts) >= 3 and parts[2] != "status":  # not namespaces/x/status
            namespace, parts = parts[1], parts[2:]
        resource = BY_PATH.get((request.match_info.get("group", ""), request.match_info["version"], parts[0]))
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else None
        if (resource is None or len(parts) > 3 or (namespace is not None and not resource.namespaced)
                or (name and resource.namespaced and namespace is None)
                or (sub is not None and (sub != "status" or not resource.status))):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        return resource, namespace, name, sub

    async def resource(self, request: web.Request) -> web.StreamResponse:
        resource, namespace, name, sub = self._target(request)
        method, q = request.method, request.query
        if method == "GET" and name is None:
            label = label_selector(q.get("labelSelector"))
            field = field_selector(q.get("fieldSelector"), resource)
            if _is_true(q.get("watch")):
                return await self.watch(request, resource, namespace, label, field)
            rv, items, cont = self.store.list(resource, namespace, label, field,
                                              int(q.get("limit") or 0), q.get("continue", ""))
            if tables.wants_table(request.headers.get("Accept", "")):
                return json_response(tables.table(resource, [json.loads(i) for i in items], str(rv)))
            meta = {"resourceVersion": str(rv), **({"continue": cont} if cont else {})}
            head = json.dumps({"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
                               "metadata": meta})[:-1].encode()
            return web.Response(body=head + b',"items":[' + b",".join(items) + b"]}", content_type=_JSON)
        if method == "GET":
            change = self.store.get(resource, namespace, name)
            if tables.wants_table(request.headers.get("Accept", "")):
                return json_response(tables.table(resource, [change.obj]))
            return web.Response(body=change.json, content_type=_JSON)
        if method == "POST" and name is None and (namespace is not None or not resource.namespaced):
            return json_response(self.store.create(resource, namespace, await self._body(request)), 201)
        if method in ("PUT", "PATCH") and name is not None:
            patch_type = request.headers.get("Content-Type", "") if method == "PATCH" else None
            return json_response(self.store.update(resource, namespace, name, await self._body(request),
                                                   sub, patch_type))
        if method == "DELETE" and name is not None and sub is None:
            # DeleteOptions may carry preconditions (resourceVersion, uid): a mismatch is a 409.
            # The body as read (cached): the request log has read it by now, and
            # can_read_body was then False: every precondition was ignored. An empty body
            # (kubectl sends none) is no options.
            options = await self._body(request) if await request.read() else None
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            return json_response(self.store.delete(resource, namespace, name,
                                                   preconditions if isinstance(preconditions, dict) else None))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {request.path}")

    @staticmethod
    async def _body(request: web.Request) -> object:
        try:
            return json.loads(await request.read())
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"body: not valid JSON: {exc}") from None

    async def watch(self, request: web.Request, resource: Resource, namespace: str | None,
                    label, field) -> web.StreamResponse:
        q = request.query
        watcher = self.store.watch(resource, namespace, label, field, q.get("resourceVersion", ""),
                                   _is_true(q.get("allowWatchBookmarks")), _is_true(q.get("sendInitialEvents")))
        loop = asyncio.get_running_loop()
        timeout = float(q.get("timeoutSeconds") or 0)
        deadline = loop.time() + timeout if timeout > 0 else None
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            while not watcher.dropped:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                if not watcher.buffer:
                    if watcher.ending:
                        break
                    watcher.wake.clear()
                    wait_for = watcher.wake.wait()
                elif not self.emu.unpaused.is_set():
                    wait_for = self.emu.unpaused.wait()
                elif (let_through := self.emu.events_let_through(resource.plural)) == 0:
                    wait_for = self.emu.hold_changed.wait()  # held (hold_events)
                else:
                    lines, changes = [], 0  # only changes count against a hold's let_through, not bookmarks
                    limit = 1000 if let_through is None else min(1000, let_through)
                    while watcher.buffer and changes < limit and len(lines) < 1000:
                        type_, obj = watcher.buffer.popleft()
                        if type_ in ("ADDED", "MODIFIED", "DELETED"):
                            changes += 1
                            if as_table:
                                obj = json.dumps(tables.table(resource, [json.loads(obj)])).encode()
                        lines.append(b'{"type":"%s","object":%s}\n' % (type_.encode(), obj))
                    self.emu.events_sent(resource.plural, changes)
                    await resp.write(b"".join(lines))
                    continue
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancellation (gh-86296)
                    async with asyncio.timeout(remaining):
                        await wait_for
                except TimeoutError:
                    break
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass    # the client went away (or an outage closed the connection)
        finally:
            self.store.unwatch(watcher)
        return resp

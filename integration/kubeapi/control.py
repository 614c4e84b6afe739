"""The test hooks over HTTP, under `/__emulator__/`, for an emulator run as its own process.

The lab runs one emulator process per cluster; tests drive them with `RemoteEmulator`,
which has the same hook names as `KubeEmulator` and speaks to these routes with urllib
(no extra dependency). Parameters come from the query string or a JSON object body.

    POST   /__emulator__/objects                  body: object, list or List -> set_object/load_objects
    GET    /__emulator__/objects/{apiVersion}/{kind}/{namespace}/{name}   ("_" = cluster-scoped)
    DELETE /__emulator__/objects/{apiVersion}/{kind}/{namespace}/{name}
    GET    /__emulator__/snapshot | /requests | /events_for?namespace=&name=
    POST   /__emulator__/compact[?rv=N] | /close_watches | /bookmark | /pause_events | /resume_events
    POST   /__emulator__/outage?seconds=N
    POST   /__emulator__/fail_next  {method, path_glob, status, n, retry_after}
    POST   /__emulator__/delay      {path_glob, seconds}
    POST   /__emulator__/hold_events {plural, let_through} | /release_events {plural}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .resources import ApiError
from .server import CONTROL_PREFIX, error_response, json_response

if TYPE_CHECKING:
    from .emulator import KubeEmulator


def add_routes(app: web.Application, emu: KubeEmulator) -> None:
    async def params(request: web.Request) -> dict:
        body = await request.read()
        data = json.loads(body) if body else {}
        return {**request.query, **data} if isinstance(data, dict) else {"items": data}

    def object_path(request: web.Request) -> tuple[str, str, str | None, str]:
        parts = request.match_info["rest"].split("/")
        if len(parts) < 4:
            raise ApiError(400, "BadRequest", "path: want objects/{apiVersion}/{kind}/{namespace}/{name}")
        namespace = None if parts[-2] == "_" else parts[-2]
        return "/".join(parts[:-3]), parts[-3], namespace, parts[-1]

    async def handle(request: web.Request) -> web.Response:
        op = request.match_info["op"]
        try:
            p = await params(request)
            if op == "objects" and request.method == "POST":
                items = p["items"] if "items" in p else None
                if items is None:
                    return json_response(emu.set_object(p))
                return json_response({"loaded": emu.load_objects(items)})
            if op == "objects":
                api_version, kind, namespace, name = object_path(request)
                if request.method == "DELETE":
                    return json_response(emu.delete_object(api_version, kind, namespace, name))
                obj = emu.get_object(api_version, kind, namespace, name)
                if obj is None:
                    raise ApiError(404, "NotFound", f"{kind} {namespace}/{name} not found")
                return json_response(obj)
            if op == "snapshot":
                return json_response(emu.snapshot())
            if op == "requests":
                return json_response(emu.requests)
            if op == "events_for":
                return json_response(emu.events_for(p["namespace"], p["name"]))
            if op == "compact":
                return json_response({"compacted": emu.compact(int(p["rv"]) if p.get("rv") else None)})
            if op in ("close_watches", "bookmark", "pause_events", "resume_events"):
                getattr(emu, op)()
            elif op == "outage":
                emu.outage(float(p["seconds"]), spare=request.transport)
            elif op == "fail_next":
                emu.fail_next(p.get("method", "*"), p["path_glob"], int(p["status"]), int(p.get("n", 1)),
                              int(p["retry_after"]) if p.get("retry_after") is not None else None)
            elif op == "delay":
                emu.delay(p["path_glob"], float(p["seconds"]))
            elif op == "hold_events":
                emu.hold_events(p["plural"], int(p.get("let_through", 0)))
            elif op == "release_events":
                emu.release_events(p["plural"])
            else:
                raise ApiError(404, "NotFound", f"no emulator hook {op!r}")
            return json_response({"ok": True})
        except ApiError as err:
            return error_response(err)
        except (KeyError, ValueError) as exc:
            return error_response(ApiError(400, "BadRequest", f"{op}: bad or missing parameter: {exc}"))

    app.router.add_route("*", CONTROL_PREFIX + "/{op}", handle)
    app.router.add_route("*", CONTROL_PREFIX + "/{op}/{rest:.+}", handle)


class RemoteEmulator:
    """The hooks of an emulator running as a separate process (`python -m integration.kubeapi`)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _call(self, method: str, op: str, body: object = None, **query: Any) -> Any:
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{CONTROL_PREFIX}/{op}" + (f"?{qs}" if qs else ""),
                                     data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def set_object(self, obj: dict) -> dict:
        return self._call("POST", "objects", obj)

    def load_objects(self, objs: list[dict]) -> int:
        return self._call("POST", "objects", objs)["loaded"]

    def _object_op(self, method: str, api_version: str, kind: str, namespace: str | None, name: str) -> Any:
        return self._call(method, f"objects/{api_version}/{kind}/{namespace or '_'}/{name}")

    def delete_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict:
        return self._object_op("DELETE", api_version, kind, namespace, name)

    def get_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._object_op("GET", api_version, kind, namespace, name)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def snapshot(self) -> dict:
        return self._call("GET", "snapshot")

    @property
    def requests(self) -> list[dict]:
        return self._call("GET", "requests")

    def events_for(self, namespace: str, name: str) -> list[dict]:
        return self._call("GET", "events_for", namespace=namespace, name=name)

    def compact(self, rv: int | None = None) -> int:
        return self._call("POST", "compact", rv=rv)["compacted"]

    def outage(self, seconds: float) -> None:
        self._call("POST", "outage", seconds=seconds)

    def fail_next(self, method: str, path_glob: str, status: int, n: int = 1,
                  retry_after: int | None = None) -> None:
        self._call("POST", "fail_next", {"method": method, "path_glob": path_glob, "status": status,
                                         "n": n, "retry_after": retry_after})

    def delay(self, path_glob: str, seconds: float) -> None:
        self._call("POST", "delay", {"path_glob": path_glob, "seconds": seconds})

    def close_watches(self) -> None:
        self._call("POST", "close_watches")

    def bookmark(self) -> None:
        self._call("POST", "bookmark")

    def pause_events(self) -> None:
        self._call("POST", "pause_events")

    def hold_events(self, plural: str, let_through: int = 0) -> None:
        self._call("POST", "hold_events", {"plural": plural, "let_through": let_through})

    def release_events(self, plural: str) -> None:
        self._call("POST", "release_events", {"plural": plural})

    def resume_events(self) -> None:
        self._call("POST", "resume_events")

"""The emulator's two faces for tests: `KubeEmulator` on the caller's event loop, and
`EmulatorThread` / `run_emulator()` that run it on a loop in a background thread.

The store is single-threaded by design (see store.py), so the thread wrapper marshals
every hook call onto the emulator's loop and waits for the answer: a hook's effects,
including the watch events it emits, are complete when it returns.

The listening socket is ours rather than aiohttp's, so `outage()` can close it (new
connections are refused, as when the apiserver is down) and reopen it on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import threading
from typing import Any, Callable, Iterator

import yaml
from aiohttp import web

from . import control
from .hooks import Hooks
from .resources import resource_for
from .server import make_app
from .store import Store


class KubeEmulator:
    """The emulator on the running event loop. Its hook methods are plain (non-async)
    calls that must run on that loop; from another thread use EmulatorThread."""

    def __init__(self, *, history_limit: int = 100_000, watch_buffer: int = 20_000,
                 bookmark_interval: float = 30.0):
        self.store = Store(history_limit, watch_buffer)
        self.hooks = Hooks()
        self.bookmark_interval = bookmark_interval
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self._held_events: dict[str, int] = {}  # resource plural -> events still let through
        self.hold_changed = asyncio.Event()  # replaced (after being set) whenever a hold changes
        self.host, self.port = "127.0.0.1", 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "KubeEmulator":
        app = make_app(self)
        control.add_routes(app, self)
        # handler_cancellation: a watch whose client hung up is cancelled and unregistered
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        self.host = host
        await self._listen(port)
        self._spawn(self._bookmark_loop())
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.store.close_watches()
        self.unpaused.set()
        self._held_events.clear()
        self._hold_changed()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def write_kubeconfig(self, path: str | os.PathLike) -> str:
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator",
                  "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                  "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
                  "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                                "namespace": "default"}}]}
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return str(path)

    async def _listen(self, port: int) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.get_running_loop().create_server(self._runner.server, sock=sock)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bookmark_loop(self) -> None:
        while True:
            await asyncio.sleep(self.bookmark_interval)
            self.store.bookmark()

    # ---- hooks (call on the emulator's loop) ------------------------------------------

    def set_object(self, obj: dict) -> dict:
        return json.loads(json.dumps(self.store.set_object(obj)))   # never hand out the stored dict

    def load_objects(self, objs: list[dict]) -> int:
        for obj in objs:
            self.store.set_object(obj)
        return len(objs)

    def delete_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict:
        return json.loads(json.dumps(self.store.delete_object(api_version, kind, namespace, name)))

    def get_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        resource = resource_for(api_version, kind)
        change = self.store.objects[resource.key].get(((namespace or "") if resource.namespaced else "", name))
        return json.loads(change.json) if change else None

    def snapshot(self) -> dict[str, list[dict]]:
        return self.store.snapshot()

    def compact(self, rv: int | None = None) -> int:
        return self.store.compact(rv)

    def close_watches(self) -> None:
        self.store.close_watches()

    def bookmark(self) -> None:
        self.store.bookmark()

    def pause_events(self) -> None:
        self.unpaused.clear()

    def resume_events(self) -> None:
        self.unpaused.set()

    def hold_events(self, plural: str, let_through: int = 0) -> None:
        """Watch events of one resource (its plural: "configmaps") wait in the streams'
        buffers, but for the next `let_through` changes (ADDED, MODIFIED or DELETED, counted
        over every stream of it; a bookmark is not a change, and goes with the change after
        it); in order. To put a client between two writes: it sees the first, not the
        second. release_events(plural) ends the hold."""
        self._held_events[plural] = int(let_through)
        self._hold_changed()

    def release_events(self, plural: str) -> None:
        self._held_events.pop(plural, None)
        self._hold_changed()

    def events_let_through(self, plural: str) -> int | None:
        """How many more events of `plural` may go now (None: not held)."""
        return self._held_events.get(plural)

    def events_sent(self, plural: str, n: int) -> None:
        if plural in self._held_events:
            self._held_events[plural] = max(0, self._held_events[plural] - n)

    def _hold_changed(self) -> None:
        self.hold_changed.set()  # wakes the streams waiting on it; the next ones wait on a new one
        self.hold_changed = asyncio.Event()

    def fail_next(self, method: str, path_glob: str, status: int, n: int = 1,
                  retry_after: int | None = None) -> None:
        self.hooks.fail_next(method, path_glob, status, n, retry_after)

    def delay(self, path_glob: str, seconds: float) -> None:
        self.hooks.delay(path_glob, seconds)

    @property
    def requests(self) -> list[dict]:
        return list(self.hooks.requests)

    def events_for(self, namespace: str, name: str) -> list[dict]:
        return self.store.events_for(namespace, name)

    def outage(self, seconds: float, spare: asyncio.Transport | None = None) -> None:
        """Refuse new connections for `seconds`, and cut every open one (watches included).
        `spare` is the connection of an HTTP hook call: it closes after its answer."""
        self.store.close_watches()
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._runner.server.connections:
            if spare is not None and conn.transport is spare:
                conn.close()
            else:
                conn.force_close()
        self._spawn(self._reopen_after(seconds))

    async def _reopen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._server is None and self._runner is not None:
            await self._listen(self.port)


_HOOKS = ("set_object", "delete_object", "get_object", "snapshot", "compact",
          "close_watches", "bookmark", "pause_events", "resume_events", "hold_events",
          "release_events", "fail_next", "delay",
          "events_for", "outage")


class EmulatorThread:
    """A KubeEmulator on its own event loop in a daemon thread. The hooks (names in
    `_HOOKS`, same signatures as KubeEmulator's) are forwarded to that loop: thread-safe."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, kubeconfig: str | None = None, **options: Any):
        self._host, self._port, self._options = host, port, options
        self.kubeconfig = kubeconfig
        self.emulator: KubeEmulator | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-emulator", daemon=True)
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    def start(self) -> "EmulatorThread":
        self._thread.start()
        try:
            self.emulator = self._call(lambda: KubeEmulator(**self._options))
            self._run(self.emulator.start(self._host, self._port))
        except BaseException:
            self.stop()      # e.g. the port is taken: do not leave the loop thread behind
            raise
        if self.kubeconfig is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix=f"kubeapi-{os.getpid()}-")
            self.kubeconfig = os.path.join(self._tmpdir.name, "kubeconfig")
        self.emulator.write_kubeconfig(self.kubeconfig)
        return self

    def stop(self) -> None:
        if self.emulator is not None:
            self._run(self.emulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def requests(self) -> list[dict]:
        return self._call(lambda: self.emulator.requests)

    def load_objects(self, objs: list[dict], chunk: int = 1000) -> int:
        """Bulk set_object, a chunk per loop turn so open watches drain in between."""
        for start in range(0, len(objs), chunk):
            self._call(lambda part=objs[start:start + chunk]: self.emulator.load_objects(part))
        return len(objs)

    def _run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def call():
            return fn()
        return self._run(call())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in _HOOKS:
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(lambda: getattr(self.emulator, name)(*args, **kwargs))

    def __enter__(self) -> "EmulatorThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_emulator(**kwargs: Any) -> Iterator[EmulatorThread]:
    """`with run_emulator() as emu:` an emulator in a background thread, with `emu.url`
    and `emu.kubeconfig`; keyword arguments go to EmulatorThread and KubeEmulator."""
    with EmulatorThread(**kwargs) as emu:
        yield emu

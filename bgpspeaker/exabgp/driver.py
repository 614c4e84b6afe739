"""The ExaBGP child: spawned, supervised, fed with the reconciler's batches, and resynced after any loss.

Why a supervised child with its own bookkeeping: ExaBGP holds the announcements, but it
can die, wedge or lose its helper at any time, and the router must end up with exactly
the desired set every time (docs/design.md invariant 3). So the driver keeps two sets —
what the daemon wants (`apply`) and what ExaBGP acknowledged (`announced()`) — and
after every start or relay reconnect it replays the whole desired set behind a barrier.

The lifecycle, and the measurement behind each step (docs/reference/exabgp-api.md):
- The unix server exists before ExaBGP is spawned; the relay connects back (§3).
- After each connection: `show neighbor json` barrier, stale acks discarded (§3.2,
  exp14), peer state from `fsm` (not `state`, §3.2), then the full desired set is
  replayed (idempotent: ExaBGP deduplicates against its adj-rib-out, §8), withdraws for
  anything announced or in flight that is no longer desired, and an EOR to every
  established peer (a peer that came up while the relay was away never got one).
- On a peer's `up`: replay that peer's routes, then its EOR per family. With
  `manual-eor true` the EOR is ours to send: sending it after the replay is what keeps a
  graceful-restart router from flushing the routes it kept stale (§8, docs/reference/lab-notes.md).
- A command unacknowledged past `ack_timeout`: ExaBGP is wedged; kill and restart it.
- ExaBGP exits (also when its helper died 6× in 64 s, §8): restart with backoff
  (tenacity; the attempt count resets after a healthy run); its RIB starts empty, so
  everything desired is replayed and the EOR removes the router's stale leftovers.
- A config change (`reconfigure`): ExaBGP's live `reload` where it touches only the
  peers that changed, else a restart (reload.py says which changes are which).
- Shutdown `withdraw`: SIGTERM alone does not withdraw (it closes without NOTIFICATION
  and a GR helper keeps the routes, §8), so withdraw everything, wait for the acks and a
  short settle, then SIGTERM. Shutdown `keep`: SIGTERM only; GR keeps the routes.

Commands are only ever built by `commands.py` from typed values, and only for peers
this node's config renders (ExaBGP answers `error` for an unknown neighbor). A batch
that cannot be rendered (say a 127/8 next-hop) is logged and recorded in `rejected`;
the rest of the diff proceeds.

Session state: from the JSON `up`/`down`/`connected` events, corrected by `fsm` after
every barrier. A relay reconnect alone does not reset `session_up` to 0 (docs/reference/exabgp-api.md
§6 suggests it): ExaBGP's sessions do not depend on its helper, and the barrier that
follows within milliseconds corrects any change; an ExaBGP exit does reset it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from bgpspeaker.config.schema import Config, PeerConfig
from bgpspeaker.exabgp import commands
from bgpspeaker.exabgp.channel import Channel, ChannelClosed, neighbor_fsm
from bgpspeaker.exabgp.damping import SessionDamping
from bgpspeaker.exabgp.reload import ReloadPlan, plan_reload
from bgpspeaker.exabgp.reload import loaded as reload_loaded
from bgpspeaker.exabgp.render import exabgp_environment, families, render_config, selected_peers
from bgpspeaker.logs import fields
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import IPAddress, IPNetwork, NodeView, RouteIntent
from bgpspeaker.reconciler import Batch, Key, by_identity, diff_indexed

log = logging.getLogger(__name__)

HEALTHY_RUN = 60.0  # seconds; a child that ran this long restarts without accumulated backoff
SETTLE = 1.0  # after the last withdraw ack, before SIGTERM (§8: "wait for done, plus ~1 s")
STOP_GRACE = 5.0
RELOAD_TIMEOUT = 10.0  # seconds of retrying a dropped `reload` before restarting ExaBGP instead (_send_reload)
LOG_ROTATE_BYTES = 1 << 20  # ExaBGP logs at WARNING: a few lines per start
# Commands in flight, and prefixes per command. ExaBGP runs 50 NLRI steps per reactor loop,
# sleeps between loops, and scans its whole command queue every loop (docs/reference/exabgp-api.md §7):
# a deep queue slows it down. Measured in the bench lab (integration/bench/bench_window.py,
# raw ExaBGP, 10,000 routes into FRR, medians of 3): windows 4-10 x 100 prefixes 1.38-1.42 s,
# 16 x 50 1.42 s, 32 x 100 1.71 s, 64 x 100 2.18 s, 8 x 200 2.1 s. exabgp-api.md §7's "about
# 20-50" is slower here: the daemon's cold start at 10,000 took 2.08 s with 8, 2.32 s with 32.
WINDOW = 8
BATCH_SIZE = 100


@dataclass(frozen=True)
class PeerState:
    name: str
    address: IPAddress
    up: bool
    since: float  # time.time() of the last change
    last_down_reason: Optional[str] = None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by our user only from its first byte: a new file opened
    with mode 0600 (never chmod after the fact: the secrets would be world-readable meanwhile),
    then renamed over the old one, so a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def child_environment(environ: Mapping[str, str], config: Config) -> dict[str, str]:
    """ExaBGP's environment: ours, minus every peer's passwordEnv variable (ExaBGP reads the
    secrets from its config file; its environment is readable in /proc by more than that file
    is), plus its settings (render.exabgp_environment)."""
    secrets = {peer.password_env for peer in config.peers if peer.password_env}
    return {**{k: v for k, v in environ.items() if k not in secrets}, **exabgp_environment()}


class ExabgpExited(RuntimeError):
    """The child ended (crash, kill, helper deaths) or was killed for being stuck."""


class _HealthyExit(RuntimeError):
    """The child ended after a long healthy run: restart at once, backoff reset."""


class ExabgpDriver:
    """The one object the daemon talks to about BGP: `apply(desired routes)`, `reconfigure`, `stop`.

    It exists so that nothing else has to know that ExaBGP is a separate process that can
    die, wedge or lose its helper: callers state what should be announced, and the driver
    makes ExaBGP's adj-rib-out converge to it, replaying after every restart or relay
    reconnect (see the module docstring for each step and the measurement behind it).
    Today it holds two rooms, the process supervision (spawn, backoff, ack timeout, stop)
    and the route bookkeeping (desired vs acknowledged, windowed sync, damping); splitting
    them into a reusable supervised child and a pure sync state machine is issue 15's
    remaining work.
    """

    def __init__(self, config: Config, node: NodeView, run_dir: Path, metrics: Metrics, *, window: int = WINDOW,
                 batch_size: int = BATCH_SIZE, ack_timeout: float = 30.0, exabgp_argv: Optional[list[str]] = None,
                 settle: float = SETTLE, reload_timeout: float = RELOAD_TIMEOUT):
        self.config = config
        self.node = node
        self.run_dir = Path(run_dir)
        self.metrics = metrics
        self.window = window
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.settle = settle
        self.reload_timeout = reload_timeout
        self.exabgp_argv = list(exabgp_argv) if exabgp_argv else [str(Path(sys.executable).parent / "exabgp")]
        self.socket_path = str(self.run_dir / "exabgp.sock")
        self.config_path = self.run_dir / "exabgp.conf"
        self.log_path = self.run_dir / "exabgp.log"

        self._peers: dict[str, PeerConfig] = {}
        self._by_address: dict[IPAddress, str] = {}
        self._states: dict[str, PeerState] = {}
        self._rendered = ""
        self._set_peers(config, node)

        self._desired: dict[Key, RouteIntent] = {}
        self._announced: dict[Key, RouteIntent] = {}
        self._suspect: dict[Key, RouteIntent] = {}  # commands in flight when a connection died
        # Diffing only what may differ: with 10,000 routes, building the desired dict and
        # diffing it whole took 16 ms per endpoint event (a prefix hashes in Python). Every
        # key outside `_changed | _unsynced | _suspect` is announced as desired, unless
        # `_diff_all` says the bookkeeping cannot tell (a new ExaBGP, a replaced desired
        # set, a failed sync), and the next sync diffs everything, as it always used to.
        self._intents: Optional[Sequence[RouteIntent]] = None  # apply()'s last input, for by_identity
        self._changed: set[Key] = set()  # desired entries replaced since the last sync began
        self._unsynced: set[Key] = set()  # left differing by the last sync (rejected, refused)
        self._diff_all = True
        self._held: frozenset[str] = frozenset()  # damped peers at the last sync
        self._generation = 0
        self._acked_generation = 0
        self._applied_once = False  # see _has_work
        self._resync = False
        self._peer_replays: set[str] = set()
        self._established: set[str] = set()  # peers ESTABLISHED per the last barrier

        self._channel: Optional[Channel] = None
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._restart_reason: Optional[str] = None
        self._restart_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._progress_event = asyncio.Event()
        self._counts: Counter[str] = Counter()  # announced prefixes per peer
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._started_once = False
        self._failed_runs = 0  # runs that ended on their own (crash, failed spawn, never ready)
        # The last run failed and none has become ready since: apply() does not wait for acks
        # that cannot come (the whole desired set is replayed once one is ready).
        self._failing = False
        self._spawned_at: Optional[float] = None  # when the current run was spawned, until it is ready
        self.start_timeout = 30.0  # a child not ready by then is killed and counts as a failed start
        self.rejected: dict[Key, str] = {}  # keys whose command ExaBGP answered `error`
        self._damping = SessionDamping()  # peers that reset after our UPDATEs get nothing for a while
        self._reconfiguring = asyncio.Lock()

    # --- public API -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (self._proc is not None and self._proc.returncode is None and self._channel is not None
                and self._channel.ready)

    @property
    def exabgp_pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def relay_pid(self) -> Optional[int]:
        return self._channel.relay_pid if self._channel is not None else None

    def peer_states(self) -> dict[str, PeerState]:
        return dict(self._states)

    def announced(self) -> dict[tuple[str, IPNetwork], RouteIntent]:
        return dict(self._announced)

    def held_peers(self) -> frozenset[str]:
        """Peers whose routes are held back because they kept resetting the session (damping.py)."""
        return self._damping.held_peers(time.monotonic())

    async def start(self, timeout: Optional[float] = 30.0) -> None:
        """Spawn ExaBGP under supervision; return once the relay is connected and the barrier
        passed, or at once with `timeout=None` (the daemon: the supervisor retries a failed
        start with backoff forever, and apply() returns while ExaBGP is down)."""
        if len(self.socket_path.encode()) > 100:  # sun_path is 108 bytes
            raise ValueError(f"run_dir {self.run_dir} is too long for a unix socket path; use a shorter one")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._channel = Channel(self.socket_path, window=self.window, on_event=self._on_event,
                                on_ready=self._on_ready, on_lost=self._on_lost)
        await self._channel.start()
        self._tasks = [asyncio.create_task(self._supervise(), name="exabgp-supervisor"),
                       asyncio.create_task(self._worker(), name="exabgp-worker"),
                       asyncio.create_task(self._watchdog(), name="exabgp-watchdog")]
        if timeout is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wait(lambda: self.ready)
        except TimeoutError:
            tail = self.log_tail()
            await self._shutdown_tasks()
            raise RuntimeError(f"ExaBGP not ready after {timeout:.0f}s; its log ends with:\n{tail}") from None

    async def apply(self, desired: Iterable[RouteIntent]) -> None:
        """Reconcile to exactly `desired`; return when every command of the diff is acked, or
        at once while ExaBGP is failing to start (the whole desired set is replayed when it is up)."""
        intents = desired if isinstance(desired, (tuple, list)) else tuple(desired)
        unknown = set()
        if self._intents is None:
            wanted: dict[Key, RouteIntent] = {}
            for intent in intents:
                if intent.peer not in self._peers:
                    unknown.add(intent.peer)
                    continue
                wanted[intent.key] = intent
            self._diff_all = True
        else:
            # What changed since the last apply, by identity: the unchanged routes are the same objects.
            added, removed = by_identity(self._intents, intents)
            wanted = dict(self._desired)  # a copy: a sync in progress holds the old one
            for intent in removed:
                if wanted.get(intent.key) is intent:
                    del wanted[intent.key]
                    self._changed.add(intent.key)
            for intent in added:
                if intent.peer not in self._peers:
                    unknown.add(intent.peer)
                    continue
                wanted[intent.key] = intent
                self._changed.add(intent.key)
        if unknown:
            log.warning("routes for peers this node has no session with are skipped",
                        extra=fields(peers=",".join(sorted(unknown))))
        self._intents = intents
        self._desired = wanted
        self._applied_once = True
        self._generation += 1
        generation = self._generation
        self._wake.set()
        await self._wait(lambda: self._acked_generation >= generation or self._stopping or self._failing)

    def _replace_desired(self, wanted: dict[Key, RouteIntent]) -> None:
        """A desired set not from apply(): the next apply starts afresh, the next sync diffs everything."""
        self._desired = wanted
        self._intents = None
        self._diff_all = True

    async def reconfigure(self, config: Config, node: NodeView) -> bool:
        """Apply a new config or node: nothing if the rendered config is the same, a live
        reload that touches only the added, removed or changed peers' sessions where ExaBGP
        can (reload.py says which changes those are), else a restart. The desired set is
        replayed either way. Returns whether ExaBGP was restarted.

        One at a time (a config reload and a node change may overlap): a second reload's
        file would make the first one's check fail, and the first would restart ExaBGP."""
        async with self._reconfiguring:
            return await self._reconfigure(config, node)

    async def _reconfigure(self, config: Config, node: NodeView) -> bool:
        text = render_config(config, node, self.socket_path, mask_secrets=False)
        if text == self._rendered:
            self.config, self.node = config, node
            self._set_peers(config, node)
            self._intents = None  # the peers may have been renamed: the next apply filters afresh
            return False
        plan = plan_reload(self._rendered, text)
        if plan.restart is None and self.ready and self._started_once:
            if await self._reload(config, node, plan):
                return False
            plan = ReloadPlan(restart="ExaBGP did not take the reloaded config")
        log.warning("exabgp config changed: restarting it (every session resets)",
                    extra=fields(reason=plan.restart or "ExaBGP not running"))
        self.config, self.node = config, node
        old = set(self._peers)
        self._set_peers(config, node)
        for gone in old - set(self._peers):
            self._forget_peer(gone)
        self._replace_desired({k: v for k, v in self._desired.items() if v.peer in self._peers})
        failed = self._failed_runs
        self._request_restart("config changed")
        # Until the new ExaBGP is up, or a run fails: a crash-looping ExaBGP must not hold
        # the caller (the daemon's reconcile loop) beyond one attempt.
        await self._wait(lambda: self._proc is None or self._restart_reason is None or self._failed_runs > failed)
        await self._wait(lambda: self.ready or self._stopping or self._failed_runs > failed)
        if self.ready:
            await self._resync_desired()
        return True

    async def _reload(self, config: Config, node: NodeView, plan: ReloadPlan) -> bool:
        """ExaBGP's `reload` (= SIGUSR1): only the peers in `plan` see their session touched.

        The bookkeeping moves first, so that an `up` of a new peer (it may come within
        milliseconds) finds its name. Routes of a changed peer become suspect: ExaBGP may
        have started that peer's adj-rib-out afresh (a new peer ASN or source address is a
        new neighbor to it), so the next sync announces them again (ExaBGP deduplicates
        what it still holds) and withdraws what is no longer desired. A removed peer's
        adj-rib-out is dropped by ExaBGP with its session: nothing to withdraw."""
        # let a sync in flight finish first, so its acks land in the bookkeeping we now rewrite
        generation = self._generation
        await self._wait(lambda: self._acked_generation >= generation or self._stopping or not self.ready)
        text = render_config(config, node, self.socket_path, mask_secrets=False)
        old_peers = dict(self._peers)
        self.config, self.node = config, node
        self._set_peers(config, node)
        gone = set(old_peers) - set(self._peers)
        changed = {name for name, peer in self._peers.items() if str(peer.address) in plan.changed}
        for name in gone:
            self._forget_peer(name)
        for key in [k for k in {**self._announced, **self._suspect, **self.rejected} if k[0] in gone]:
            if self._announced.pop(key, None) is not None:
                self._counts[key[0]] -= 1
            self._suspect.pop(key, None)
            self.rejected.pop(key, None)
        self._suspect.update({k: v for k, v in self._announced.items() if v.peer in changed})
        self._replace_desired({k: v for k, v in self._desired.items() if v.peer in self._peers})
        self._write_config()
        try:
            applied = await self._send_reload(text)
        except ChannelClosed:
            applied = False
        if not applied:
            log.error("exabgp did not apply the reloaded config; restarting it", extra=fields(**plan.describe()))
            return False
        log.info("exabgp reloaded: only these peers' sessions are touched", extra=fields(**plan.describe()))
        await self._resync_desired()
        return True

    async def _send_reload(self, text: str) -> bool:
        """`reload` until `show neighbor configuration` shows `text`'s neighbors.

        ExaBGP 5.0.15 *drops* a reload that arrives while UPDATEs are still queued for any
        peer (reactor/loop.py re-arms the signal, then skips the reload while
        `_pending_adjribout()`): right after our own commands that lasts a few loops; for a
        peer that is down it lasts until its next connection attempt (ExaBGP's back-off
        grows to 60 s). So: send it again every 0.2 s; a repeated reload of the same file
        changes nothing. Past `reload_timeout` the driver restarts ExaBGP instead."""
        deadline = time.monotonic() + self.reload_timeout
        while True:
            ack, _ = await self._channel.exclusive(commands.RELOAD)
            if ack == "done":
                ack, shown = await self._channel.exclusive(commands.SHOW_NEIGHBOR_CONFIGURATION)
                if ack == "done" and reload_loaded(text, shown):
                    return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)

    async def _resync_desired(self) -> None:
        """One more sync of the whole desired set (after a reload or restart); returns when acked."""
        if self._applied_once:  # else nothing to replay yet (and the worker waits for the first apply)
            self._generation += 1
            generation = self._generation
            self._wake.set()
            await self._wait(lambda: self._acked_generation >= generation or self._stopping or self._failing)

    def _write_config(self) -> None:
        """The rendered config, for ExaBGP to (re)read: mode 0600 (it holds the MD5 secrets),
        replaced atomically (a reload must never read half a file)."""
        write_private(self.config_path, self._rendered)

    async def stop(self, withdraw: bool) -> None:
        """`withdraw`: withdraw everything, wait for the acks and a settle, then SIGTERM.
        Otherwise SIGTERM only (graceful restart keeps the routes at the router)."""
        if withdraw and not self.ready and self._tasks:
            try:  # ExaBGP is (re)starting: give it a chance, SIGTERM alone would leave the routes stale
                async with asyncio.timeout(self.ack_timeout):
                    await self._wait(lambda: self.ready)
            except TimeoutError:
                log.warning("ExaBGP not ready: stopping without withdrawing")
        if withdraw and self.ready:
            try:
                self._replace_desired({})
                self._generation += 1
                generation = self._generation
                self._wake.set()
                async with asyncio.timeout(self.ack_timeout):
                    await self._wait(lambda: self._acked_generation >= generation)
                # belt and braces for anything whose fate was unknown: one more queued command
                async with asyncio.timeout(self.ack_timeout):
                    await self._channel.exclusive(commands.CLEAR_ADJ_RIB_OUT)
                await asyncio.sleep(self.settle)
            except (TimeoutError, ChannelClosed) as exc:
                log.warning("withdraw before stop incomplete", extra=fields(error=exc.__class__.__name__))
        self._stopping = True
        self._progress()
        await self._terminate(signal.SIGTERM)
        await self._shutdown_tasks()

    async def adj_rib_out(self) -> list[str]:
        """ExaBGP's `show adj-rib out` lines (diagnostics; the reader drains it whoever waits)."""
        ack, output = await self._channel.exclusive("show adj-rib out")
        return output

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # --- peers and state ------------------------------------------------------------------

    def _set_peers(self, config: Config, node: NodeView) -> None:
        self._rendered = render_config(config, node, self.socket_path, mask_secrets=False)
        self._peers = {p.name: p for _, p in selected_peers(config, node)}
        self._by_address = {p.address: p.name for p in self._peers.values()}
        now = time.time()
        for name, peer in self._peers.items():
            state = self._states.get(name)
            if state is None or state.address != peer.address:
                self._states[name] = PeerState(name, peer.address, False, now, None)
                self.metrics.session_up.labels(name).set(0)
                self.metrics.announced_prefixes.labels(name).set(0)

    def _forget_peer(self, name: str) -> None:
        self._states.pop(name, None)
        for metric in (self.metrics.session_up, self.metrics.announced_prefixes):
            try:
                metric.remove(name)
            except KeyError:
                pass

    def _set_state(self, name: str, up: bool, reason: Optional[str] = None) -> None:
        old = self._states.get(name)
        if old is None:
            return
        if old.up != up:
            self._states[name] = PeerState(name, old.address, up, time.time(),
                                           old.last_down_reason if up else (reason or old.last_down_reason))
            log.info("bgp session up" if up else "bgp session down", extra=fields(peer=name, reason=reason or ""))
        elif not up and reason:
            self._states[name] = PeerState(name, old.address, up, old.since, reason)
        self.metrics.session_up.labels(name).set(1 if up else 0)

    def _on_event(self, event: dict) -> None:
        """From the reader: bookkeeping only, never blocking."""
        if event.get("type") != "state":
            return
        neighbor = event.get("neighbor") or {}
        try:
            address = ipaddress.ip_address(neighbor["address"]["peer"])
        except (KeyError, TypeError, ValueError):
            return
        name = self._by_address.get(address)
        if name is None:
            return
        state = neighbor.get("state")
        log.debug("state event", extra=fields(peer=name, state=state))
        if state == "up":
            self._set_state(name, True)
            self._peer_replays.add(name)
            self._wake.set()
        elif state in ("down", "connected"):
            was_up = name in self._states and self._states[name].up
            self._set_state(name, False, neighbor.get("reason") if state == "down" else None)
            if state == "down":
                reason = str(neighbor.get("reason") or "")
                if was_up:
                    self._session_lost(name, reason)
                if "notification received (3," in reason:
                    # UPDATE message error: the router rejects what we send (e.g. a next-hop, §9)
                    log.error("peer rejected our UPDATE", extra=fields(peer=name, reason=reason))

    def _session_lost(self, name: str, reason: str) -> None:
        seconds = self._damping.session_lost(name, time.monotonic())
        if seconds is None:
            return
        log.error("peer keeps resetting the session after our UPDATEs: holding its routes back, then trying again",
                  extra=fields(peer=name, last_reason=reason or "no reason given", hold_seconds=round(seconds)))
        asyncio.get_running_loop().call_later(seconds, self._release_hold, name)
        self._generation += 1  # the next sync withdraws this peer's routes from ExaBGP's adj-rib-out
        self._wake.set()

    def _release_hold(self, name: str) -> None:
        if self._stopping or name not in self._peers:
            return
        log.info("sending a peer its routes again after holding them back", extra=fields(peer=name))
        self._generation += 1
        self._peer_replays.add(name)
        self._wake.set()

    def _on_ready(self, neighbors: list) -> None:
        """Barrier passed on a new relay connection: take peer state from `fsm`, then resync."""
        fsm = neighbor_fsm(neighbors)
        log.debug("barrier passed", extra=fields(fsm=fsm))
        self._failing = False
        self._spawned_at = None
        self._established = set()
        for address, name in self._by_address.items():
            up = fsm.get(str(address)) == "ESTABLISHED"
            self._set_state(name, up)
            if up:
                self._established.add(name)
        self._resync = True
        self._wake.set()
        self._progress()

    def _on_lost(self) -> None:
        self._progress()
        self._wake.set()

    # --- the worker: the only task that sends announce/withdraw -----------------------------

    def _has_work(self) -> bool:
        # Nothing before the first apply(): a session that comes up earlier would get an
        # End-of-RIB after an empty replay, and a graceful-restart router would then flush
        # the routes it kept stale for us (docs/reference/lab-notes.md, "Graceful restart trap"). Its
        # replay and EOR stay queued until the desired set is known.
        if not self._applied_once:
            return False
        return self._resync or bool(self._peer_replays) or self._acked_generation < self._generation

    async def _worker(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self.ready and self._has_work() and not self._stopping:
                try:
                    await self._sync_once()
                except ChannelClosed:
                    break  # the connection went; `_on_ready` of the next one wakes us
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not leave apply() waiting forever
                    log.exception("exabgp worker failed; retrying in 1 s")
                    await asyncio.sleep(1)

    async def _sync_once(self) -> None:
        generation = self._generation
        source = self._desired
        held = self._damping.held_peers(time.monotonic())
        desired = {k: v for k, v in source.items() if v.peer not in held} if held else source
        changed, self._changed = self._changed, set()
        everything = self._diff_all or self._resync or held != self._held
        self._diff_all, self._held = True, held  # until this sync completes: a failed one leaves no gap
        if self._resync:
            self._resync = False
            ups = set(self._established) | self._peer_replays
            self._peer_replays.clear()
            # everything desired, plus withdraws of what is (or may be) announced and no longer wanted
            leftovers = {k: v for k, v in {**self._suspect, **self._announced}.items() if k not in desired}
            batches = diff_indexed(desired, {}, self.batch_size) + diff_indexed({}, leftovers, self.batch_size)
            self._suspect.clear()
            await self._send(batches, desired)
            await self._send_eors(ups - held)
            keys: Iterable[Key] = desired.keys() | self._announced.keys()
        else:
            if everything:
                want, view = desired, dict(self._announced)
                keys = desired.keys() | self._announced.keys() | self._suspect.keys()
            else:
                keys = changed | self._unsynced | self._suspect.keys()
                want = {k: desired[k] for k in keys if k in desired}
                view = {k: self._announced[k] for k in keys if k in self._announced}
            for key, intent in self._suspect.items():
                if key in desired:
                    view.pop(key, None)  # unknown: announce again
                else:
                    view[key] = intent  # unknown: withdraw again
            await self._send(diff_indexed(want, view, self.batch_size), desired)
            ups = set(self._peer_replays)
            self._peer_replays.clear()
            for name in sorted(ups):
                mine = {k: i for k, i in desired.items() if i.peer == name}
                await self._send(diff_indexed(mine, {}, self.batch_size), desired)
            await self._send_eors(ups - held)
        self._unsynced = {key for key in keys if not self._in_sync(key, desired)}
        self._diff_all = False
        if generation > self._acked_generation and source is self._desired:
            self._acked_generation = generation
            self._progress()

    def _in_sync(self, key: Key, desired: dict[Key, RouteIntent]) -> bool:
        """ExaBGP holds what is desired for `key` (the diff's own test: equal attributes need no command)."""
        if key in self._suspect:
            return False
        want, have = desired.get(key), self._announced.get(key)
        if want is None or have is None:
            return want is have
        return want is have or want.attributes == have.attributes

    async def _send(self, batches: Iterable[Batch], desired: dict[Key, RouteIntent]) -> None:
        channel = self._channel
        futures = []
        try:
            for batch in batches:
                try:
                    addresses = [self._peers[p].address for p in batch.peers]
                    if batch.action == "announce":
                        line = commands.announce_line(addresses, batch.attributes, batch.prefixes)
                        intents = [desired[k] for k in batch.keys()]
                    else:
                        line = commands.withdraw_line(addresses, batch.prefixes)
                        intents = [self._announced.get(k) or self._suspect.get(k) for k in batch.keys()]
                except (KeyError, TypeError, ValueError) as exc:
                    # e.g. a 127/8 next-hop: refused here, before it can make a router reset the
                    # session forever (docs/reference/exabgp-api.md §9). Only this batch is affected.
                    log.error("batch not sent: its command cannot be built", extra=fields(
                        action=batch.action, prefixes=len(batch.prefixes), peers=",".join(batch.peers), error=exc))
                    for key in batch.keys():
                        self.rejected[key] = str(exc)
                    continue
                future = await channel.submit(line)
                future.add_done_callback(lambda f, b=batch, i=intents, text=line: self._acked(b, i, text, f))
                futures.append(future)
        finally:
            if futures:
                await asyncio.gather(*futures, return_exceptions=True)
        for future in futures:
            if not future.cancelled() and isinstance(future.exception(), ChannelClosed):
                raise future.exception()

    def _acked(self, batch: Batch, intents: list, line: str, future: asyncio.Future) -> None:
        keys = batch.keys()
        if future.cancelled() or future.exception() is not None:
            for key, intent in zip(keys, intents):
                if intent is not None:
                    self._suspect[key] = intent
            return
        if future.result() != "done":
            log.error("ExaBGP refused a command", extra=fields(action=batch.action, prefixes=len(batch.prefixes),
                                                                peers=",".join(batch.peers)))
            for key in keys:
                self.rejected[key] = line
            return
        for key, intent in zip(keys, intents):
            self._suspect.pop(key, None)
            self.rejected.pop(key, None)
            if key[0] not in self._peers:  # removed by a reload while this was in flight: ExaBGP dropped it
                continue
            if batch.action == "announce":
                if key not in self._announced:
                    self._counts[key[0]] += 1
                self._announced[key] = intent
            elif self._announced.pop(key, None) is not None:
                self._counts[key[0]] -= 1
        for peer in batch.peers:
            self.metrics.updates_sent.labels(peer).inc()
            self.metrics.announced_prefixes.labels(peer).set(self._counts[peer])

    async def _send_eors(self, names: Iterable[str]) -> None:
        for name in sorted(names):
            peer = self._peers.get(name)
            if peer is None:
                continue
            for family in families(self.node, peer):
                # answered at once with `error` when the peer is not established (§5): alone on the window
                ack, _ = await self._channel.exclusive(commands.eor_line(peer.address, family))
                if ack != "done":
                    log.info("EOR not sent: session not established", extra=fields(family=family, peer=name, ack=ack))

    # --- supervision ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Forever: a failed start (ExaBGP not found, exiting at once, crash-looping) is retried
        with exponential backoff up to 10 s between attempts; there is no last attempt. A run
        longer than HEALTHY_RUN, or a restart we asked for, starts again at once."""
        while not self._stopping:
            retrying = AsyncRetrying(wait=wait_exponential(multiplier=0.2, max=10),
                                     retry=retry_if_exception_type(ExabgpExited), reraise=True)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._run_once()
                return  # _run_once returns only when stopping
            except _HealthyExit:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ExaBGP supervisor failed; retrying")
                await asyncio.sleep(1)

    async def _run_once(self) -> None:
        if self._stopping:
            return
        if self._started_once:
            self.metrics.exabgp_restarts.inc()
        self._started_once = True
        self._write_config()
        self._channel.new_process()
        env = child_environment(os.environ, self.config)
        try:  # keep the previous run's log for diagnosis, but never let it grow without bound
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass
        logf = open(self.log_path, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.exabgp_argv, str(self.config_path), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # not found, not executable: retried with backoff like a crash
            self._proc = None
            self._failed_runs += 1
            self._failing = True
            self._progress()
            log.error("cannot start exabgp; retrying", extra=fields(error=exc))
            raise ExabgpExited(str(exc)) from None
        finally:
            logf.close()
        # ExaBGP's RIB starts empty: nothing is announced, nothing is in doubt
        self._announced.clear()
        self._suspect.clear()
        self._diff_all = True
        self._counts.clear()
        for name in self._peers:
            self.metrics.announced_prefixes.labels(name).set(0)
        started = self._spawned_at = time.monotonic()
        log.info("exabgp started", extra=fields(pid=self._proc.pid))
        self._restart_reason = None
        self._restart_event.clear()
        wait_exit = asyncio.ensure_future(self._proc.wait())
        wait_restart = asyncio.ensure_future(self._restart_event.wait())
        try:
            await asyncio.wait([wait_exit, wait_restart], return_when=asyncio.FIRST_COMPLETED)
        finally:
            wait_restart.cancel()
        reason = self._restart_reason
        if not wait_exit.done():
            await self._terminate(signal.SIGTERM if reason == "config changed" else signal.SIGKILL)
        rc = self._proc.returncode
        self._channel.drop()
        for name in self._peers:
            self._set_state(name, False, "stopped" if self._stopping else
                            "exabgp exited" if reason is None else f"exabgp restarted: {reason}")
        self._restart_reason = None
        self._progress()
        if self._stopping:
            return
        log.warning("exabgp exited; restarting", extra=fields(rc=rc, reason=reason or ""))
        # A restart we asked for starts again at once; a crash or a start that never got ready backs off.
        if reason in ("config changed", "ack timeout") or time.monotonic() - started > HEALTHY_RUN:
            raise _HealthyExit()
        self._failed_runs += 1
        self._failing = True
        self._progress()
        raise ExabgpExited(f"rc={rc}")

    def _request_restart(self, reason: str) -> None:
        if self._restart_reason is None:
            self._restart_reason = reason
            self._restart_event.set()

    async def _terminate(self, sig: int) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            async with asyncio.timeout(STOP_GRACE):
                await proc.wait()
        except TimeoutError:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()

    async def _watchdog(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.ack_timeout / 4))
            spawned = self._spawned_at  # None once this run was ready
            if (spawned is not None and self._proc is not None and self._proc.returncode is None
                    and time.monotonic() - spawned > self.start_timeout):
                self._spawned_at = None
                log.error("ExaBGP not ready in time after its start: restarting it",
                          extra=fields(seconds=round(self.start_timeout), log_tail=self.log_tail()))
                self._request_restart("not ready in time")
            age = self._channel.oldest_pending_age() if self._channel else None
            if age is not None and age > self.ack_timeout and self._proc is not None:
                log.error("ExaBGP has not acknowledged a command in time: restarting it",
                          extra=fields(seconds=round(age, 1)))
                self._request_restart("ack timeout")

    def _progress(self) -> None:
        """Wake every `_wait`er (each waits on the event current when it looked)."""
        self._progress_event.set()
        self._progress_event = asyncio.Event()

    async def _wait(self, predicate) -> None:
        while not predicate():
            event = self._progress_event
            # progress is signalled by acks, readiness and exits; the timeout is only a safety net.
            # asyncio.timeout, never wait_for: on 3.11 wait_for drops a cancellation that lands
            # as the event fires (gh-86296), and a lost cancel kept the daemon alive after SIGTERM.
            try:
                async with asyncio.timeout(0.5):
                    await event.wait()
            except TimeoutError:
                pass

    async def _shutdown_tasks(self) -> None:
        self._stopping = True
        self._wake.set()
        await self._terminate(signal.SIGTERM)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()

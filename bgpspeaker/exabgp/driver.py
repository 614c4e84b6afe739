"""The ExaBGP child: spawned, supervised, fed with the reconciler's batches, and resynced after any loss.

Why a supervised child with its own bookkeeping: ExaBGP holds the announcements, but it
can die, wedge or lose its helper at any time, and the router must end up with exactly
the desired set every time (docs/design.md invariant 3). So the driver keeps two sets —
what the daemon wants (`apply`) and what ExaBGP acknowledged (`announced()`) — and
after every start or relay reconnect it replays the whole desired set behind a barrier.
Three modules share the work: supervise.py runs the process (start, restart with
backoff, stop), routesync.py decides what to send (a pure state machine, tested without
a process), and this one wires them to ExaBGP's socket (channel.py) and to its config.

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
  (supervise.py; the attempt count resets after a healthy run); its RIB starts empty, so
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from tenacity import wait_exponential

from bgpspeaker.config.schema import Config, PeerConfig
from bgpspeaker.exabgp import commands
from bgpspeaker.exabgp.channel import Channel, ChannelClosed, neighbor_fsm
from bgpspeaker.exabgp.damping import SessionDamping
from bgpspeaker.exabgp.reload import ReloadPlan, plan_reload
from bgpspeaker.exabgp.reload import loaded as reload_loaded
from bgpspeaker.exabgp.render import exabgp_environment, families, render_config, selected_peers
from bgpspeaker.exabgp.routesync import BATCH_SIZE, WINDOW, EndOfRib, RouteSync, Send
from bgpspeaker.logs import fields
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import IPAddress, IPNetwork, NodeView, RouteIntent
from bgpspeaker.reconciler import Key
from bgpspeaker.supervise import Supervisor

log = logging.getLogger(__name__)

SETTLE = 1.0  # after the last withdraw ack, before SIGTERM (§8: "wait for done, plus ~1 s")
RELOAD_TIMEOUT = 10.0  # seconds of retrying a dropped `reload` before restarting ExaBGP instead (_send_reload)
LOG_ROTATE_BYTES = 1 << 20  # ExaBGP logs at WARNING: a few lines per start
# Why ExaBGP is restarted on our request, and how: a new config is taken with SIGTERM and at
# once; a wedged ExaBGP is killed, at once; one that never got ready is killed and its next
# start waits like a crash's (a failed start).
CONFIG_CHANGED, ACK_TIMEOUT, NOT_READY = "config changed", "ack timeout", "not ready in time"


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


class ExabgpDriver:
    """The one object the daemon talks to about BGP: `apply(desired routes)`, `reconfigure`, `stop`.

    It exists so that nothing else has to know that ExaBGP is a separate process that can
    die, wedge or lose its helper: callers state what should be announced, and the driver
    makes ExaBGP's adj-rib-out converge to it, replaying after every restart or relay
    reconnect (see the module docstring for each step and the measurement behind it).
    It is the shell around two rooms it does not implement: the process is a
    supervise.Supervisor, the route bookkeeping a routesync.RouteSync. What stays here is
    what needs ExaBGP itself: its config file and environment (secrets), the socket and
    its events, the watchdog (start and ack deadlines), live reloads, session state and
    damping, and the worker that carries the machine's commands and reports their answers.
    """

    # _wait's poll when no progress is signalled: a safety net only, never how a wait ends
    # (a test sets it high to prove that).
    progress_safety_net = 0.5

    def __init__(
        self,
        config: Config,
        node: NodeView,
        run_dir: Path,
        metrics: Metrics,
        *,
        window: int = WINDOW,
        batch_size: int = BATCH_SIZE,
        ack_timeout: float = 30.0,
        exabgp_argv: Optional[list[str]] = None,
        settle: float = SETTLE,
        reload_timeout: float = RELOAD_TIMEOUT,
    ):
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
        self.start_timeout = 30.0  # a child not ready by then is killed and counts as a failed start

        self._peers: dict[str, PeerConfig] = {}
        self._by_address: dict[IPAddress, str] = {}
        self._states: dict[str, PeerState] = {}
        self._rendered = ""
        self._set_peers(config, node)
        self._sync = RouteSync(self._peers, window=window, batch_size=batch_size)
        self._damping = SessionDamping()  # peers that reset after our UPDATEs get nothing for a while

        self._channel = Channel(
            self.socket_path, window=window, on_event=self._on_event, on_ready=self._on_ready, on_lost=self._on_lost
        )
        self._supervisor = Supervisor(
            "exabgp",
            self._prepare_start,
            log_path=self.log_path,
            env=self._environment,
            on_start=self._started,
            on_exit=self._exited,
            on_failure=self._failed,
            wait=wait_exponential(multiplier=0.2, max=10),
            # an orphaned ExaBGP exits on its own once its helper cannot reconnect
            # (integration/test_exabgp_driver.py); this was so before supervise.py
            die_with_parent=False,
        )
        self._restart_reason: Optional[str] = None  # of the restart we asked for, until that run exits
        self._started_once = False
        self._failed_runs = 0  # runs that ended on their own (crash, failed spawn, never ready)
        # The last run failed and none has become ready since: apply() does not wait for acks
        # that cannot come (the whole desired set is replayed once one is ready).
        self._failing = False
        self._spawned_at: Optional[float] = None  # when the current run was spawned, until it is ready
        self._wake = asyncio.Event()  # the worker: there may be work
        self._answered = asyncio.Event()  # a command's answer arrived, or the connection went
        self._progress_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._reconfiguring = asyncio.Lock()

    # --- public API -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._supervisor.running and self._channel.ready

    @property
    def exabgp_pid(self) -> Optional[int]:
        return self._supervisor.pid

    @property
    def relay_pid(self) -> Optional[int]:
        return self._channel.relay_pid

    @property
    def rejected(self) -> dict[Key, str]:
        """Keys whose command ExaBGP answered `error`, or that could not be built, and why."""
        return self._sync.rejected

    def peer_states(self) -> dict[str, PeerState]:
        return dict(self._states)

    def announced(self) -> dict[tuple[str, IPNetwork], RouteIntent]:
        return dict(self._sync.announced)

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
        await self._channel.start()
        self._supervisor.start()
        self._tasks = [
            asyncio.create_task(self._worker(), name="exabgp-worker"),
            asyncio.create_task(self._watchdog(), name="exabgp-watchdog"),
        ]
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
        generation, unknown = self._sync.desire(intents)
        if unknown:
            log.warning(
                "routes for peers this node has no session with are skipped",
                extra=fields(peers=",".join(sorted(unknown))),
            )
        self._wake.set()
        await self._wait(lambda: self._sync.synced >= generation or self._stopping or self._failing)

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
            self._sync.set_peers(self._peers)  # the peers may have been renamed: the next apply filters afresh
            return False
        plan = plan_reload(self._rendered, text)
        if plan.restart is None and self.ready and self._started_once:
            if await self._reload(config, node, plan):
                return False
            plan = ReloadPlan(restart="ExaBGP did not take the reloaded config")
        log.warning(
            "exabgp config changed: restarting it (every session resets)",
            extra=fields(reason=plan.restart or "ExaBGP not running"),
        )
        self.config, self.node = config, node
        old = set(self._peers)
        self._set_peers(config, node)
        for gone in old - set(self._peers):
            self._forget_peer(gone)
        self._sync.set_peers(self._peers)
        failed = self._failed_runs
        self._request_restart(CONFIG_CHANGED)
        # Until the new ExaBGP is up, or a run fails: a crash-looping ExaBGP must not hold
        # the caller (the daemon's reconcile loop) beyond one attempt.
        await self._wait(
            lambda: self._supervisor.proc is None or self._restart_reason is None or self._failed_runs > failed
        )
        await self._wait(lambda: self.ready or self._stopping or self._failed_runs > failed)
        if self.ready:
            await self._resync_desired()
        return True

    async def _reload(self, config: Config, node: NodeView, plan: ReloadPlan) -> bool:
        """ExaBGP's `reload` (= SIGUSR1): only the peers in `plan` see their session touched.

        The bookkeeping moves first, so that an `up` of a new peer (it may come within
        milliseconds) finds its name (RouteSync.reload says what happens to the routes)."""
        # let a sync in flight finish first, so its acks land in the bookkeeping we now rewrite
        generation = self._sync.generation
        await self._wait(lambda: self._sync.synced >= generation or self._stopping or not self.ready)
        text = render_config(config, node, self.socket_path, mask_secrets=False)
        old_peers = dict(self._peers)
        self.config, self.node = config, node
        self._set_peers(config, node)
        for name in set(old_peers) - set(self._peers):
            self._forget_peer(name)
        changed = {name for name, peer in self._peers.items() if str(peer.address) in plan.changed}
        self._sync.reload(self._peers, changed)
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
        if self._sync.applied_once:  # else nothing to replay yet (and the worker waits for the first apply)
            generation = self._sync.touch()
            self._wake.set()
            await self._wait(lambda: self._sync.synced >= generation or self._stopping or self._failing)

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
                generation = self._sync.replace_desired({})
                self._wake.set()
                async with asyncio.timeout(self.ack_timeout):
                    await self._wait(lambda: self._sync.synced >= generation)
                # belt and braces for anything whose fate was unknown: one more queued command
                async with asyncio.timeout(self.ack_timeout):
                    await self._channel.exclusive(commands.CLEAR_ADJ_RIB_OUT)
                await asyncio.sleep(self.settle)
            except (TimeoutError, ChannelClosed) as exc:
                log.warning("withdraw before stop incomplete", extra=fields(error=exc.__class__.__name__))
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
            self._states[name] = PeerState(
                name, old.address, up, time.time(), old.last_down_reason if up else (reason or old.last_down_reason)
            )
            log.info("bgp session up" if up else "bgp session down", extra=fields(peer=name, reason=reason or ""))
        elif not up and reason:
            self._states[name] = PeerState(name, old.address, up, old.since, reason)
        self.metrics.session_up.labels(name).set(1 if up else 0)

    def _on_event(self, event: dict[str, object]) -> None:
        """From the reader: bookkeeping only, never blocking."""
        if event.get("type") != "state":
            return
        neighbor = event.get("neighbor")
        if not isinstance(neighbor, dict):
            return
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
            self._sync.session_up(name)
            self._wake.set()
        elif state in ("down", "connected"):
            was_up = name in self._states and self._states[name].up
            reason = str(neighbor.get("reason") or "")
            self._set_state(name, False, reason or None if state == "down" else None)
            if state == "down":
                if was_up:
                    self._session_lost(name, reason)
                if "notification received (3," in reason:
                    # UPDATE message error: the router rejects what we send (e.g. a next-hop, §9)
                    log.error("peer rejected our UPDATE", extra=fields(peer=name, reason=reason))

    def _session_lost(self, name: str, reason: str) -> None:
        seconds = self._damping.session_lost(name, time.monotonic())
        if seconds is None:
            return
        log.error(
            "peer keeps resetting the session after our UPDATEs: holding its routes back, then trying again",
            extra=fields(peer=name, last_reason=reason or "no reason given", hold_seconds=round(seconds)),
        )
        asyncio.get_running_loop().call_later(seconds, self._release_hold, name)
        self._sync.touch()  # the next sync withdraws this peer's routes from ExaBGP's adj-rib-out
        self._wake.set()

    def _release_hold(self, name: str) -> None:
        if self._stopping or name not in self._peers:
            return
        log.info("sending a peer its routes again after holding them back", extra=fields(peer=name))
        self._sync.released(name)
        self._wake.set()

    def _on_ready(self, neighbors: list[object]) -> None:
        """Barrier passed on a new relay connection: take peer state from `fsm`, then resync."""
        fsm = neighbor_fsm(neighbors)
        log.debug("barrier passed", extra=fields(fsm=fsm))
        self._failing = False
        self._spawned_at = None
        established = []
        for address, name in self._by_address.items():
            up = fsm.get(str(address)) == "ESTABLISHED"
            self._set_state(name, up)
            if up:
                established.append(name)
        self._sync.connected(established)
        self._wake.set()
        self._progress()

    def _on_lost(self) -> None:
        self._sync.connection_lost()  # what was in flight is suspect; the next connection replays
        self._answered.set()
        self._progress()
        self._wake.set()

    # --- the worker: the only task that sends announce/withdraw -----------------------------

    async def _worker(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self.ready and self._sync.has_work and not self._stopping:
                try:
                    await self._sync_once()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not leave apply() waiting forever
                    log.exception("exabgp worker failed; retrying in 1 s")
                    await asyncio.sleep(1)

    async def _sync_once(self) -> None:
        """One sync of the route-sync machine, to its last answer or until the connection goes:
        send what it emits, tell it each answer."""
        sync = self._sync
        # Read before begin(): a sync with nothing to send is finished inside begin(), and
        # apply() waiting for it must be woken then, not by _wait's 0.5 s safety net.
        synced = sync.synced
        if not sync.begin(self.held_peers()):
            if sync.synced > synced:
                self._progress()
            return
        while True:
            self._answered.clear()
            for command in sync.next_commands():
                if isinstance(command, Send):
                    await self._send(command)
                else:
                    await self._send_eor(command)
            if not sync.in_progress:
                break
            if not sync.in_flight:
                continue  # the answers came while we sent: more may go out now
            await self._answered.wait()
        if sync.synced > synced:
            self._progress()

    async def _send(self, command: Send) -> None:
        batch = command.batch
        try:
            addresses = [self._peers[p].address for p in batch.peers]
            if batch.action == "announce":
                if batch.attributes is None:
                    raise ValueError("an announce without attributes")
                line = commands.announce_line(addresses, batch.attributes, batch.prefixes)
            else:
                line = commands.withdraw_line(addresses, batch.prefixes)
        except (KeyError, TypeError, ValueError) as exc:
            # e.g. a 127/8 next-hop: refused here, before it can make a router reset the
            # session forever (docs/reference/exabgp-api.md §9). Only this batch is affected.
            log.error(
                "batch not sent: its command cannot be built",
                extra=fields(action=batch.action, prefixes=len(batch.prefixes), peers=",".join(batch.peers), error=exc),
            )
            self._sync.refused(command.id, str(exc))
            return
        try:
            future = await self._channel.submit(line)
        except ChannelClosed:
            self._sync.lost(command.id)
            return
        future.add_done_callback(partial(self._answer, command, line))

    def _answer(self, command: Send, line: str, future: asyncio.Future[str]) -> None:
        """A command's fate, for the machine (and the metrics); from the ack's future callback."""
        self._answered.set()
        if future.cancelled() or future.exception() is not None:
            self._sync.lost(command.id)
            return
        batch = command.batch
        if future.result() != "done":
            log.error(
                "ExaBGP refused a command",
                extra=fields(action=batch.action, prefixes=len(batch.prefixes), peers=",".join(batch.peers)),
            )
            self._sync.refused(command.id, line)
            return
        if self._sync.acked(command.id) is None:
            return  # its connection was lost before this answer was read: the machine counts it unknown
        for peer in batch.peers:
            self.metrics.updates_sent.labels(peer).inc()
            self.metrics.announced_prefixes.labels(peer).set(self._sync.counts[peer])

    async def _send_eor(self, command: EndOfRib) -> None:
        peer = self._peers.get(command.peer)
        if peer is None:  # removed by a reload meanwhile
            self._sync.acked(command.id)
            return
        try:
            for family in families(self.node, peer):
                # answered at once with `error` when the peer is not established (§5): alone on the window
                ack, _ = await self._channel.exclusive(commands.eor_line(peer.address, family))
                if ack != "done":
                    log.info(
                        "EOR not sent: session not established", extra=fields(family=family, peer=peer.name, ack=ack)
                    )
        except ChannelClosed:
            self._sync.lost(command.id)
            return
        self._sync.acked(command.id)

    # --- supervision (supervise.py runs the process; these are its callbacks) --------------

    def _prepare_start(self) -> list[str]:
        """Before each spawn: the config file, a fresh barrier count, the log rotated."""
        if self._started_once:
            self.metrics.exabgp_restarts.inc()
        self._started_once = True
        self._write_config()
        self._channel.new_process()
        try:  # keep the previous run's log for diagnosis, but never let it grow without bound
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass
        return [*self.exabgp_argv, str(self.config_path)]

    def _environment(self) -> dict[str, str]:
        return child_environment(os.environ, self.config)

    def _started(self, pid: int) -> None:
        # ExaBGP's RIB starts empty: nothing is announced, nothing is in doubt
        self._sync.restarted()
        for name in self._peers:
            self.metrics.announced_prefixes.labels(name).set(0)
        self._spawned_at = time.monotonic()
        self._restart_reason = None

    def _exited(self, rc: Optional[int]) -> None:
        reason = self._restart_reason
        self._channel.drop()
        for name in self._peers:
            self._set_state(
                name,
                False,
                "stopped"
                if self._supervisor.stopping
                else "exabgp exited"
                if reason is None
                else f"exabgp restarted: {reason}",
            )
        self._restart_reason = None
        self._spawned_at = None
        self._progress()

    def _failed(self, why: str) -> None:
        self._failed_runs += 1
        self._failing = True
        self._progress()

    def _request_restart(self, reason: str) -> None:
        if self._restart_reason is None:
            self._restart_reason = reason
            self._supervisor.restart(
                signal.SIGTERM if reason == CONFIG_CHANGED else signal.SIGKILL, backoff=reason == NOT_READY
            )

    async def _watchdog(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.ack_timeout / 4))
            spawned = self._spawned_at  # None once this run was ready
            if spawned is not None and self._supervisor.running and time.monotonic() - spawned > self.start_timeout:
                self._spawned_at = None
                log.error(
                    "ExaBGP not ready in time after its start: restarting it",
                    extra=fields(seconds=round(self.start_timeout), log_tail=self.log_tail()),
                )
                self._request_restart(NOT_READY)
            age = self._channel.oldest_pending_age()
            if age is not None and age > self.ack_timeout and self._supervisor.proc is not None:
                log.error(
                    "ExaBGP has not acknowledged a command in time: restarting it", extra=fields(seconds=round(age, 1))
                )
                self._request_restart(ACK_TIMEOUT)

    def _progress(self) -> None:
        """Wake every `_wait`er (each waits on the event current when it looked)."""
        self._progress_event.set()
        self._progress_event = asyncio.Event()

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            event = self._progress_event
            # progress is signalled by acks, readiness and exits; the timeout is only a safety net.
            # asyncio.timeout, never wait_for: on 3.11 wait_for drops a cancellation that lands
            # as the event fires (gh-86296), and a lost cancel kept the daemon alive after SIGTERM.
            try:
                async with asyncio.timeout(self.progress_safety_net):
                    await event.wait()
            except TimeoutError:
                pass

    async def _shutdown_tasks(self) -> None:
        self._stopping = True
        self._progress()
        self._wake.set()
        await self._supervisor.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        await self._channel.close()

"""bfdd for this node: rendered, supervised, polled; nothing at all without a BFD profile.

How bfdd runs (FRR 8.4.4, measured in the lab):
- Alone: no zebra, no bgpd. `-z` names a zserv socket nobody serves (bfdd only retries
  it), `-P 0` opens no TCP vty port, `--bfdctl` and `--vty_socket` put its sockets in our
  run directory (`<run-dir>/bfd/`), so several nodes' speakers never share one.
- In the foreground (no `-d`): the supervisor (supervise.py) owns the process, restarts
  it with backoff, and its process group goes with us.
- As a user FRR accepts: as root `-u frr -g frr` (FRR refuses root unless the user is in
  its vty group, `frrvty`); as any other user, that user (it must be a member of
  `frrvty`, and the bfdd binary needs the permitted capabilities cap_net_bind_service,
  cap_net_raw, cap_sys_admin: FRR's privilege code asks for them at start).
- State is read over the vty socket (vty.py) every POLL_SECONDS: two small JSON
  queries, ~0.2 ms each. The router, not the daemon, acts on BFD: polling only feeds
  /status, metrics and logs, so a flap shorter than a poll still counts (bfdd's own
  event counters) even when no poll saw it.
- A config change is entered into the running bfdd over its vty (sessions kept: a new
  interval is renegotiated); only switching echo or passive mode on a profile in use
  restarts bfdd, which takes its sessions down for a BFD handshake (~1 s), and a router
  with `neighbor X bfd` resets the BGP session meanwhile.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import shutil
import time
from pathlib import Path
from typing import Optional

from bgpspeaker.bfd.render import BfdPeer, bfd_peers, render_bfdd_config
from bgpspeaker.bfd.state import Damping, FlapState, Session, Tracker, parse_sessions
from bgpspeaker.bfd.vty import Vty, VtyError
from bgpspeaker.config.schema import Config
from bgpspeaker.exabgp.render import RenderError
from bgpspeaker.logs import fields
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import JSON, NodeView
from bgpspeaker.supervise import Supervisor

log = logging.getLogger(__name__)

BFDD = "/usr/lib/frr/bfdd"
POLL_SECONDS = 0.2
START_TIMEOUT = 10.0
LOG_ROTATE_BYTES = 1 << 20


def bfdd_user() -> tuple[str, str]:
    """(user, group) for bfdd's `-u`/`-g`: FRR's own user when we are root, else ourselves."""
    if os.geteuid() == 0:
        return "frr", "frr"
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


class BfdService:
    """The node's BFD: `update(config, node)` after every start, reload or node change;
    `stop()` last, after the routes are withdrawn (daemon.py keeps that order)."""

    def __init__(
        self, run_dir: Path, metrics: Metrics, *, bfdd: Optional[str] = None, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.dir = Path(run_dir) / "bfd"
        self.metrics = metrics
        self.bfdd = bfdd or os.environ.get("BGPSPEAKER_BFDD") or BFDD
        self.poll_seconds = poll_seconds
        self.config_path = self.dir / "bfdd.conf"
        self.log_path = self.dir / "bfdd.log"
        self.vty_path = self.dir / "bfdd.vty"
        self.pid_path = self.dir / "bfdd.pid"
        self._text = ""
        self._peers: dict[str, BfdPeer] = {}  # by BGP peer name
        self._tracker = Tracker(())
        self._supervisor: Optional[Supervisor] = None
        self._vty = Vty(str(self.vty_path))
        self._poller: Optional[asyncio.Task] = None
        self._complaint: Optional[tuple[str, str]] = None
        self.damping = Damping()
        self._flaps: dict[str, FlapState] = {}  # by BGP peer name
        self._held_in_bfdd: set[str] = set()  # peers this bfdd was told to shut down

    # --- what the daemon calls -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._supervisor is not None and self._supervisor.running

    @property
    def pid(self) -> Optional[int]:
        return self._supervisor.pid if self._supervisor is not None else None

    async def update(self, config: Config, node: NodeView, *, routes_withdrawn: bool = False) -> None:
        """Run bfdd for the node's BFD peers (none: stop it). `routes_withdrawn` (a drained
        node): stop it, after the withdraw, so the router never cuts a draining session."""
        if routes_withdrawn:
            if self._supervisor is not None:
                log.info("routes withdrawn: stopping bfdd")
                await self.stop()
            return
        try:
            peers = bfd_peers(config, node)
        except RenderError as exc:
            self._complain("BFD config cannot run on this node; keeping the running one", str(exc))
            return
        if peers and not os.access(self.bfdd, os.X_OK):
            self._complain("BFD is configured but bfdd is not installed; running without BFD", self.bfdd)
            return
        self._complaint = None
        text = render_bfdd_config(peers)
        before = dict(self._peers)
        self._set_peers(peers)
        if not peers:
            if self._supervisor is not None:
                log.info("no BFD peer left: stopping bfdd")
                await self.stop()
            self._text = text
            return
        if text == self._text and self._supervisor is not None:
            return
        self._text = text
        self._write_config()
        if self._supervisor is None:
            await self._start()
        elif await self._apply_live(before, peers, text):
            log.info("BFD config changed: applied to the running bfdd", extra=fields(peers=len(peers)))
        else:
            log.info("BFD config changed: restarting bfdd", extra=fields(peers=len(peers)))
            self._supervisor.restart()

    async def _apply_live(self, before: dict[str, BfdPeer], peers: tuple[BfdPeer, ...], text: str) -> bool:
        """The new config through bfdd's vty, sessions kept: a restart would take every BFD
        session down and the router would reset every BGP session with it. Sessions whose
        address, local address or hop count changed are removed first; the rendered text
        (profiles, then peers) is then entered as it stands, which bfdd applies to running
        sessions (a changed interval is renegotiated with a Poll sequence, RFC 5880 6.8.3).
        False (restart instead) if bfdd does not answer or refuses a line."""
        if not (self.running and self.vty_path.exists()):
            return False
        modes = {p.profile.name: (p.profile.echo_mode, p.profile.passive_mode) for p in before.values()}
        if any(
            modes.get(p.profile.name, (p.profile.echo_mode, p.profile.passive_mode))
            != (p.profile.echo_mode, p.profile.passive_mode)
            for p in peers
        ):
            return False  # the rendering has no `no echo-mode` / `no passive-mode`: switching them off needs a restart
        keys = {(p.address, p.local, p.multihop) for p in peers}
        gone = [p for p in before.values() if (p.address, p.local, p.multihop) not in keys]
        lines = [
            "bfd",
            *(
                f"no peer {p.address.compressed}{' multihop' if p.multihop else ''} local-address {p.local.compressed}"
                for p in gone
            ),
        ]
        lines += text.splitlines()[2:-1]  # between the comment + `bfd` and the closing `exit`
        try:
            await self._vty.configure(lines)
        except VtyError as exc:
            log.warning("bfdd refused the new config; restarting it instead", extra=fields(error=str(exc)))
            return False
        self._held_in_bfdd -= {p.name for p in gone}
        return True

    def _complain(self, message: str, detail: str) -> None:
        """Log once per distinct problem: update() runs at every reconcile."""
        if self._complaint != (message, detail):
            self._complaint = (message, detail)
            log.error(message, extra=fields(error=detail))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
            self._poller = None
        await self._vty.close()
        if self._supervisor is not None:
            await self._supervisor.stop()
            self._supervisor = None
        self._observe(None)
        self._text = ""

    def peer_states(self) -> dict[str, dict[str, JSON]]:
        """By BGP peer name, for /status: status, up, whyDown, since, transitions, profile."""
        out = {}
        for name, peer in self._peers.items():
            state = self._tracker.states.get(peer.address.compressed)
            if state is not None:
                flaps = self._flaps.get(name, FlapState())
                out[name] = {
                    **state.as_dict(),
                    "profile": peer.profile.name,
                    "multihop": peer.multihop,
                    "heldDown": flaps.held,
                    "heldDownUntil": self._wall(flaps.held_until(self.damping)),
                }
                if flaps.held:
                    out[name]["whyDown"] = "held down: the session kept flapping (damping)"
        return out

    # --- inside ----------------------------------------------------------------------------

    def _set_peers(self, peers: tuple[BfdPeer, ...]) -> None:
        new = {p.name: p for p in peers}
        for name in set(self._peers) - set(new):
            for metric in (self.metrics.bfd_session_up, self.metrics.bfd_transitions):
                try:
                    metric.remove(name)
                except KeyError:
                    pass
        self._tracker.retarget(p.address.compressed for p in peers)
        self._peers = new
        for name in new:
            self.metrics.bfd_session_up.labels(name)  # the series exist (0) before the first poll
            self.metrics.bfd_transitions.labels(name)

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self._text)
        os.replace(tmp, self.config_path)
        if os.geteuid() == 0:  # bfdd drops to frr: it writes its pid file and sockets here
            for path in (self.dir, self.config_path):
                shutil.chown(path, *bfdd_user())
        os.chmod(self.dir, 0o755)

    def _argv(self) -> list[str]:
        user, group = bfdd_user()
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass
        d = self.dir
        return [
            self.bfdd,
            "-f",
            str(self.config_path),
            "--vty_socket",
            str(d),
            "-i",
            str(self.pid_path),
            "--bfdctl",
            str(d / "bfdd.sock"),
            "-z",
            str(d / "zserv.api"),
            "-P",
            "0",
            "-u",
            user,
            "-g",
            group,
            "--log",
            "stdout",
            "--log-level",
            "notifications",
        ]

    async def _start(self) -> None:
        for stale in (self.vty_path,):
            stale.unlink(missing_ok=True)
        self._supervisor = Supervisor(
            "bfdd",
            self._argv,
            log_path=self.log_path,
            ready=self.vty_path.exists,
            on_exit=self._exited,
            stale_pid=self.pid_path,
            stale_marker=str(self.config_path).encode(),
        )
        self._supervisor.start()
        # not awaited: update() runs inside the reconcile loop, which must never wait on bfdd
        self._poller = asyncio.create_task(self._poll_loop(self._supervisor), name="bfd-poll")

    def _exited(self, rc: Optional[int]) -> None:
        self.vty_path.unlink(missing_ok=True)  # the next bfdd's readiness is its new socket
        self._held_in_bfdd.clear()  # a new bfdd starts from its config: holds are applied again
        self._observe(None)  # down, and its counters start again at 0: seen even if no poll fell in the gap
        if self._supervisor is not None and not self._supervisor.stopping:
            log.error("bfdd exited", extra=fields(rc=rc, log_tail=self._log_tail()))

    async def _poll_loop(self, supervisor: Supervisor) -> None:
        if await supervisor.wait_ready(START_TIMEOUT):
            log.info("bfdd started", extra=fields(pid=supervisor.pid, peers=len(self._peers)))
        else:
            log.error("bfdd not answering yet; its supervisor keeps trying", extra=fields(log_tail=self._log_tail()))
        while True:
            sessions = None
            if self.running and self.vty_path.exists():
                try:
                    peers_json = await self._vty.show_json("show bfd peers")
                    counters_json = await self._vty.show_json("show bfd peers counters")
                    sessions = parse_sessions(peers_json, counters_json)
                except (VtyError, ValueError) as exc:
                    log.debug("bfdd query failed", extra=fields(error=str(exc)))
            self._observe(sessions)
            if sessions is not None:
                await self._apply_holds(sessions)
            await asyncio.sleep(self.poll_seconds)

    async def _apply_holds(self, sessions: dict[str, Session]) -> None:
        """Hold a flapping session administratively down, and let it up when its penalty decayed.

        Taken at once, while the router's side is still down from the flap itself, the
        hold costs no extra BGP reset (FRR takes a peer's AdminDown as down, measured).
        """
        now = time.monotonic()
        for name, peer in self._peers.items():
            flaps = self._flaps.get(name)
            if flaps is None:
                continue
            flaps = self._flaps[name] = flaps.tick(self.damping, now)
            session = sessions.get(peer.address.compressed)
            shut = session is not None and session.status in ("shutdown", "admin-down")
            held_until = flaps.held_until(self.damping)  # None: not held
            if held_until is not None and not shut:
                action = "shutdown"
                log.warning(
                    "bfd session flapping: holding it down",
                    extra=fields(peer=name, penalty=round(flaps.penalty), seconds=round(held_until - now, 1)),
                )
            elif not flaps.held and (shut or name in self._held_in_bfdd):
                action = "no shutdown"
                log.info("bfd session released after damping", extra=fields(peer=name))
            else:
                continue
            hop = " multihop" if peer.multihop else ""
            try:
                await self._vty.configure(
                    ["bfd", f"peer {peer.address.compressed}{hop} local-address {peer.local.compressed}", action]
                )
            except VtyError as exc:
                log.warning("bfdd refused a damping command", extra=fields(peer=name, error=str(exc)))
                continue
            (self._held_in_bfdd.add if action == "shutdown" else self._held_in_bfdd.discard)(name)

    def _observe(self, sessions: Optional[dict[str, Session]]) -> None:
        before = {a: s.status for a, s in self._tracker.states.items()}
        grown = self._tracker.observe(sessions, time.time())
        by_address = {p.address.compressed: name for name, p in self._peers.items()}
        for address, downs in self._tracker.new_downs.items():
            name = by_address.get(address)
            if name is not None:
                self._flaps[name] = self._flaps.get(name, FlapState()).flapped(self.damping, time.monotonic(), downs)
        for address, state in self._tracker.states.items():
            name = by_address.get(address)
            if name is None:
                continue
            self.metrics.bfd_session_up.labels(name).set(1 if state.up else 0)
            if address in grown:
                self.metrics.bfd_transitions.labels(name).inc(grown[address])
            if before.get(address) != state.status:
                log.info("bfd session changed", extra=fields(peer=name, status=state.status, why=state.why_down))

    @staticmethod
    def _wall(monotonic: Optional[float]) -> Optional[float]:
        return None if monotonic is None else time.time() + monotonic - time.monotonic()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).strip()
        except OSError:
            return ""

"""A supervised child process: started, restarted with backoff when it dies, never left behind.

Why a module of its own: the daemon runs two helpers beside it, ExaBGP
(exabgp/driver.py) and bfdd (bfd/runner.py), and each needs the same four things:
- start it, and know when it is up (`ready`: a predicate the owner supplies, polled);
- restart it when it exits, with tenacity's wait strategies (exponential with jitter by
  default) so a child that cannot start does not spin, and at once after a healthy run;
  a child that cannot even be spawned (not found, not executable) is retried the same
  way, and so is one its owner restarts with `backoff=True` (ExaBGP not ready in time);
- never leave it behind: the child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with us,
  and its own process group, so stop() reaches whatever it forked. The kernel clears the
  death signal when the child changes its credentials or executes a file with
  capabilities (prctl(2)), which FRR daemons do (`-u frr`, or file capabilities when run
  unprivileged): for those, `stale_pid` names a pid file whose process is killed before
  each start, so a helper orphaned by a SIGKILLed daemon is reaped by the next one;
- stop in order: SIGTERM to its group, SIGKILL after a grace period, then reap.

The argv is asked for at every start (`argv()`), and so is the environment when it is
a callable, so a changed config is picked up by the next (re)start without the
supervisor knowing what a config is. `argv()` is also where an owner prepares a start
(writes the config, rotates the log): it runs just before each spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Optional, Sequence, Union

from tenacity import AsyncRetrying, retry_if_exception_type
from tenacity.wait import wait_base, wait_exponential_jitter

from bgpspeaker.logs import fields

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
HEALTHY_RUN = 60.0  # seconds: a child that ran this long is restarted at once, backoff reset
STOP_GRACE = 5.0


class ChildExited(RuntimeError):
    """The child ended on its own (crash, kill); the supervisor restarts it after a wait."""


class _HealthyExit(RuntimeError):
    """The child ended after a long healthy run (or was restarted on request): restart now."""


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: after fork only the call runs


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL when the parent (thread) dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_stale(pid_file: Path, must_contain: bytes) -> Optional[int]:
    """SIGKILL the process named in `pid_file` if it is alive and its command line contains
    `must_contain` (a path unique to this run directory: never someone else's process)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid() or must_contain not in cmdline:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # not our child: nothing to wait() for; gone when /proc says so
    return pid


Env = Union[Mapping[str, str], Callable[[], Mapping[str, str]], None]


class Supervisor:
    """Runs one child until stop(); restarts it whenever it exits.

    `argv()` gives the command line for each start; `env` the environment (a mapping, or a
    callable asked at each start; None: ours). `on_start(pid)` / `on_exit(returncode)` let
    the owner keep its bookkeeping (metrics, state reset); `on_failure(why)` is told of
    every run that counts as failed (cannot spawn, exited before `healthy_run`, restarted
    with backoff): the next start waits. `ready()` says the child serves (checked by
    `wait_ready`). `stale_pid` and `stale_marker`: see kill_stale. `die_with_parent=False`
    keeps the child alive after our death (its own process group either way).
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[], Sequence[str]],
        *,
        log_path: Optional[Path] = None,
        env: Env = None,
        ready: Callable[[], bool] = lambda: True,
        on_start: Callable[[int], object] = lambda pid: None,
        on_exit: Callable[[Optional[int]], object] = lambda rc: None,
        on_failure: Callable[[str], object] = lambda why: None,
        wait: Optional[wait_base] = None,
        healthy_run: float = HEALTHY_RUN,
        stop_grace: float = STOP_GRACE,
        stale_pid: Optional[Path] = None,
        stale_marker: Optional[bytes] = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self._argv = argv
        self.log_path = log_path
        self.env = env
        self._ready = ready
        self._on_start, self._on_exit, self._on_failure = on_start, on_exit, on_failure
        self.die_with_parent = die_with_parent
        self.wait = wait or wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)
        self.healthy_run = healthy_run
        self.stop_grace = stop_grace
        self.stale_pid, self.stale_marker = stale_pid, stale_marker
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.starts = 0
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False
        self._restart = asyncio.Event()
        self._restart_signal: int = signal.SIGTERM
        self._restart_backoff = False

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        """True once the child runs and `ready()` holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running and self._ready():
                return True
            await asyncio.sleep(0.02)
        return False

    def restart(self, sig: int = signal.SIGTERM, *, backoff: bool = False) -> None:
        """Stop the child and start it again: SIGTERM (its config changed) or SIGKILL (it is
        wedged: ExaBGP's driver kills one that stopped acknowledging). At once, or with
        `backoff` after the wait a crash gets (a child that never got ready is a failed start)."""
        self._restart_signal = sig
        self._restart_backoff = backoff
        self._restart.set()

    async def stop(self) -> Optional[int]:
        """SIGTERM to the child's process group, SIGKILL after the grace; the exit code."""
        self._stopping = True
        self._restart.set()
        rc = await self._terminate()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        return rc

    async def _supervise(self) -> None:
        while not self._stopping:
            retrying = AsyncRetrying(wait=self.wait, retry=retry_if_exception_type(ChildExited), reraise=True)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._run_once()
                return
            except _HealthyExit:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor failed; retrying", extra=fields(child=self.name))
                await asyncio.sleep(1.0)

    async def _run_once(self) -> None:
        if self._stopping:
            return
        if self.stale_pid is not None and self.stale_marker is not None:
            stale = kill_stale(self.stale_pid, self.stale_marker)
            if stale is not None:
                log.warning("killed a stale child left by an earlier run", extra=fields(child=self.name, pid=stale))
        argv = list(self._argv())
        env = self.env() if callable(self.env) else self.env
        log_file: Optional[BinaryIO] = open(self.log_path, "ab") if self.log_path is not None else None
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                env=None if env is None else dict(env),
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                process_group=0,
            )
        except OSError as exc:  # not found, not executable: retried with backoff like a crash
            self.proc = None
            log.error("cannot start child; retrying", extra=fields(child=self.name, error=exc))
            self._on_failure(f"cannot start: {exc}")
            raise ChildExited(f"{self.name}: {exc}") from None
        finally:
            if log_file is not None:
                log_file.close()
        self.starts += 1
        started = time.monotonic()
        log.info("child started", extra=fields(child=self.name, pid=self.proc.pid, start=self.starts))
        self._on_start(self.proc.pid)
        self._restart.clear()
        exited = asyncio.ensure_future(self.proc.wait())
        asked = asyncio.ensure_future(self._restart.wait())
        try:
            await asyncio.wait([exited, asked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
        requested = not exited.done()
        backoff = requested and self._restart_backoff
        rc = await self._terminate(self._restart_signal) if requested else self.proc.returncode
        self._restart_signal, self._restart_backoff = signal.SIGTERM, False
        self._on_exit(rc)
        if self._stopping:
            return
        if requested and not backoff:
            log.info("child restarted on request", extra=fields(child=self.name))
            raise _HealthyExit()
        log.warning("child exited; restarting", extra=fields(child=self.name, rc=rc))
        if not backoff and time.monotonic() - started > self.healthy_run:
            raise _HealthyExit()
        self._on_failure(f"rc={rc}")
        raise ChildExited(f"{self.name} rc={rc}")

    async def _terminate(self, sig: int = signal.SIGTERM) -> Optional[int]:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            _signal_group(proc.pid, sig)
            try:
                async with asyncio.timeout(self.stop_grace):
                    await proc.wait()
            except TimeoutError:
                log.warning("child ignored SIGTERM; killing it", extra=fields(child=self.name, pid=proc.pid))
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        # whatever it forked and left in its group goes with it
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

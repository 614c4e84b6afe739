"""The ordered command/ack/event stream between the daemon and ExaBGP, through the relay's socket.

Why it looks like this (docs/reference/exabgp-api.md):
- ExaBGP writes to its helper with *blocking* writes; a reader that stalls longer than
  the hold time stops ExaBGP's keepalives and the peer drops the session (§7, [ran]).
  So the reader task does nothing but `readline()` and synchronous bookkeeping: it
  resolves ack futures, appends show-output, and hands events to a synchronous
  callback. It never awaits anything else, whoever consumes the results.
- ExaBGP queues whatever arrives without limit and gets 5-8× slower when flooded (§7):
  at most `window` commands are outstanding; a sender waits for a slot.
- Acks carry no id: `done`/`error` are matched FIFO. That only holds for commands ExaBGP
  queues (announce/withdraw/show); commands answered at once (EOR's error path, clear,
  teardown, unknown text) overtake the queue (§5, [ran]: [valid, garbage, valid] →
  [error, done, done]). Those go through `exclusive()`, alone on an empty window.
- After the relay reconnects, acks of the dead relay's commands keep arriving (exp14:
  16,300 stale `done`s) (§3.2). Every new connection therefore starts with a queued
  barrier, `show neighbor json`, and every ack up to its `[...]` answer is discarded.
  A barrier sent on an earlier connection and never answered will still be answered
  (on the new connection, ahead of ours): the channel counts those and skips as many
  `[...]` lines, so a stale barrier answer is never taken for the new one. Should a
  stale answer have been lost with the dead relay's buffers (~24 lines were, in
  exp14), the barrier simply never completes and the driver's ack deadline restarts
  ExaBGP: slower, never wrong.
- One connection at a time: ExaBGP runs one helper; a newer connection replaces an older one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from bgpspeaker.exabgp.commands import SHOW_NEIGHBOR_JSON
from bgpspeaker.logs import fields
from bgpspeaker.model import JSON

log = logging.getLogger(__name__)

ACKS = ("done", "error")
READ_LIMIT = 1 << 24  # `show neighbor json` is one line; 16 MiB is far above any real answer


class ChannelClosed(ConnectionError):
    """The relay connection ended before the command was acknowledged (its effect is unknown)."""


@dataclass
class _Pending:
    command: str
    future: asyncio.Future
    sent_at: float
    output: list[str] = field(default_factory=list)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stale_barriers: int):
        self.reader = reader
        self.writer = writer
        self.pending: deque[_Pending] = deque()
        self.discarding = True  # until our barrier's answer: every ack is stale
        self.skip_barriers = stale_barriers
        self.exclusive = False
        self.closed = False
        self.ready = False  # barrier passed
        self.peer_pid: Optional[int] = None
        self.barrier: Optional[_Pending] = None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:  # who connected: the relay's pid, so tests and cleanup can act on it by PID
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.peer_pid = struct.unpack("3i", creds)[0]
            except OSError:
                pass


class Channel:
    """Unix server for the relay, plus the windowed command stream over its current connection.

    Callbacks (all synchronous, called from the reader: they must not block):
    - on_event(dict): a JSON event from ExaBGP (state, notification, ...).
    - on_ready(list): the barrier passed on a new connection; the argument is the parsed
      `show neighbor json` answer.
    - on_lost(): the connection ended (pending commands failed with ChannelClosed).
    """

    def __init__(
        self,
        path: str,
        *,
        window: int = 32,
        on_event: Callable[[dict], None] = lambda e: None,
        on_ready: Callable[[list], None] = lambda n: None,
        on_lost: Callable[[], None] = lambda: None,
    ):
        if window < 1:
            raise ValueError("window must be ≥ 1")
        self.path = path
        self.window = window
        self.on_event, self.on_ready, self.on_lost = on_event, on_ready, on_lost
        self._server: Optional[asyncio.AbstractServer] = None
        self._conn: Optional[_Connection] = None
        self._changed = asyncio.Event()
        self._unanswered_barriers = 0  # sent on any connection, `[...]` not yet seen
        self.stale_acks_discarded = 0
        self.unexpected_lines = 0
        self.connections = 0

    # --- server -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (before ExaBGP is spawned, so the relay's first connect succeeds)."""
        if os.path.exists(self.path):
            os.unlink(self.path)  # a leftover of a previous run; we own run_dir
        self._server = await asyncio.start_unix_server(self._on_client, path=self.path, limit=READ_LIMIT)
        os.chmod(self.path, 0o600)  # the relay runs as our user (exabgp_daemon_user)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def new_process(self) -> None:
        """A new ExaBGP is about to start: answers owed by the old one can never arrive.

        Without this reset, one miscounted barrier (its answer lost with a dead relay) would
        make every later connection skip its own answer: never ready, restart, forever."""
        self._unanswered_barriers = 0

    def drop(self) -> None:
        """Close the current connection (its pending commands fail with ChannelClosed)."""
        conn = self._conn
        if conn is not None:
            self._lose(conn)
            conn.writer.close()

    @property
    def ready(self) -> bool:
        return self._conn is not None and self._conn.ready and not self._conn.closed

    @property
    def relay_pid(self) -> Optional[int]:
        return self._conn.peer_pid if self._conn is not None else None

    def outstanding(self) -> int:
        return len(self._conn.pending) if self._conn is not None else 0

    def oldest_pending_age(self) -> Optional[float]:
        conn = self._conn
        if conn is None or not conn.pending:
            return None
        return time.monotonic() - conn.pending[0].sent_at

    # --- sending ------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _send_now(self, conn: _Connection, command: str) -> _Pending:
        # appending the future and writing the line happen without an await in between:
        # the FIFO of futures is exactly the order of the lines on the wire.
        entry = _Pending(command, asyncio.get_running_loop().create_future(), time.monotonic())
        conn.pending.append(entry)
        conn.writer.write(command.encode() + b"\n")
        return entry

    async def submit(self, command: str) -> asyncio.Future:
        """Send a *queued* command (announce/withdraw) once a window slot is free; return its ack
        future ('done'/'error', or ChannelClosed). Waiting for a slot on a dead connection
        raises ChannelClosed."""
        if "\n" in command or "\r" in command:
            raise ValueError("a command is one line")
        conn = self._conn
        await self._wait_for(
            lambda: (
                conn is None
                or conn.closed
                or self._conn is not conn
                or (conn.ready and not conn.exclusive and len(conn.pending) < self.window)
            )
        )
        if conn is None or conn.closed or self._conn is not conn:
            raise ChannelClosed("relay not connected")
        entry = self._send_now(conn, command)
        await self._drain(conn)
        return entry.future

    async def command(self, command: str) -> str:
        """submit() and wait for the ack."""
        return await (await self.submit(command))

    async def exclusive(self, command: str) -> tuple[str, list[str]]:
        """Send a command alone on an empty window (for commands ExaBGP may answer out of
        order) and return (ack, output lines)."""
        conn = self._conn
        await self._wait_for(
            lambda: (
                conn is None
                or conn.closed
                or self._conn is not conn
                or (conn.ready and not conn.exclusive and not conn.pending)
            )
        )
        if conn is None or conn.closed or self._conn is not conn:
            raise ChannelClosed("relay not connected")
        conn.exclusive = True
        try:
            if command == SHOW_NEIGHBOR_JSON:
                self._unanswered_barriers += 1
            entry = self._send_now(conn, command)
            await self._drain(conn)
            ack = await entry.future
            return ack, entry.output
        finally:
            conn.exclusive = False
            self._notify()

    async def neighbors(self) -> list:
        """`show neighbor json`, parsed."""
        ack, output = await self.exclusive(SHOW_NEIGHBOR_JSON)
        return _parse_neighbors(output)

    async def _drain(self, conn: _Connection) -> None:
        try:
            await conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._lose(conn)
            raise ChannelClosed(str(exc)) from None

    async def wait_ready(self, timeout: Optional[float] = None) -> None:
        async with asyncio.timeout(timeout):  # not wait_for: see ExabgpDriver._wait
            await self._wait_for(lambda: self.ready)

    # --- receiving ----------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._conn is not None and not self._conn.closed:
            # the old relay died and its EOF is not read yet (a busy loop), or ExaBGP replaced it
            log.info("a new relay connected while one was active: replacing it")
            self.drop()
        conn = _Connection(reader, writer, self._unanswered_barriers)
        log.debug("relay connected", extra=fields(pid=conn.peer_pid, stale_barriers=conn.skip_barriers))
        self._conn = conn
        self.connections += 1
        # the barrier goes first, before anything else can be sent on this connection
        self._unanswered_barriers += 1
        conn.barrier = self._send_now(conn, SHOW_NEIGHBOR_JSON)
        self._notify()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):  # EOF in the middle of a line
                    break
                self._on_line(conn, line.decode("utf-8", "replace").rstrip("\r\n"))
        except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError) as exc:
            log.info("relay connection ended", extra=fields(error=exc))
        except asyncio.CancelledError:
            raise
        finally:
            self._lose(conn)
            writer.close()

    def _barrier_passed(self, conn: _Connection, entry: _Pending) -> None:
        # Called from the reader, synchronously, at the barrier's `done`: a future callback would
        # run only after the lines that follow in the same read (an `up` event, say), and then
        # the older `show neighbor json` answer would overwrite the newer event. Seen in the lab:
        # FRR established, the driver still "down".
        conn.ready = True
        self._notify()
        try:
            self.on_ready(_parse_neighbors(entry.output))
        except Exception:  # a callback bug must not kill the reader
            log.exception("on_ready callback failed")

    def _lose(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        while conn.pending:
            entry = conn.pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(ChannelClosed("relay connection lost"))
                entry.future.exception()  # mark retrieved: nobody may be awaiting it any more
        if self._conn is conn:
            self._conn = None
        self._notify()
        try:
            self.on_lost()
        except Exception:
            log.exception("on_lost callback failed")

    def _on_line(self, conn: _Connection, line: str) -> None:
        if not line:
            return
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                self.unexpected_lines += 1
                log.warning("unparsable JSON from ExaBGP", extra=fields(bytes=len(line)))
                return
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event callback failed")
            return
        if conn.discarding:
            if line.startswith("["):
                self._unanswered_barriers = max(0, self._unanswered_barriers - 1)
                if conn.skip_barriers > 0:
                    conn.skip_barriers -= 1  # answer to a barrier of a dead connection
                    self.stale_acks_discarded += 1
                    return
                conn.discarding = False
                conn.pending[0].output.append(line)
            else:
                self.stale_acks_discarded += 1
            return
        if line in ACKS:
            if not conn.pending:
                # nothing outstanding: an ack we cannot attribute. Never guess.
                self.unexpected_lines += 1
                log.warning("ExaBGP acked with no command outstanding", extra=fields(line=line))
                return
            entry = conn.pending.popleft()
            if not entry.future.done():
                entry.future.set_result(line)
            if entry is conn.barrier:
                self._barrier_passed(conn, entry)
            self._notify()
            return
        if line == "shutdown":  # ExaBGP is exiting; the connection will close
            return
        if line.startswith("["):
            self._unanswered_barriers = max(0, self._unanswered_barriers - 1)
        if conn.pending:
            conn.pending[0].output.append(line)
        else:
            self.unexpected_lines += 1


def _parse_neighbors(output: list[str]) -> list:
    for line in output:
        if line.startswith("["):
            try:
                value = json.loads(line)
            except ValueError:
                return []
            return value if isinstance(value, list) else []
    return []


def neighbor_fsm(neighbors: list) -> dict[str, str]:
    """peer address → fsm state (`ESTABLISHED`, `IDLE`, ...) from `show neighbor json`.

    `fsm`, not `state`: `state` says "down" during a session's first second (derived from
    `duration`, docs/reference/exabgp-api.md §3.2)."""
    result: dict[str, str] = {}
    for n in neighbors:
        if not isinstance(n, dict):
            continue
        peer: JSON = n.get("peer") or {}
        address = peer.get("address") if isinstance(peer, dict) else None
        if isinstance(address, str):
            result[address] = str(n.get("fsm", "")).upper()
    return result

"""The supervised child, with real processes (sh, sleep): restarts with backoff, restarts
on request, stops its whole process group, dies with its parent, reaps a stale orphan."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tenacity import wait_fixed

from bgpspeaker.supervise import Supervisor, kill_stale


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_child_that_exits_is_restarted_with_the_wait_between(tmp_path):
    starts: list[float] = []
    exits: list = []

    async def main():
        sup = Supervisor("quitter", lambda: ["sh", "-c", "exit 3"], wait=wait_fixed(0.2),
                         on_start=lambda pid: starts.append(time.monotonic()), on_exit=exits.append)
        sup.start()
        await until(lambda: len(starts) >= 3)
        await sup.stop()

    asyncio.run(main())
    assert exits[:2] == [3, 3]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 0.19 for gap in gaps), gaps


def test_restart_on_request_and_stop_reach_the_whole_group(tmp_path):
    marker = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {marker}; wait"

    async def main():
        sup = Supervisor("parent", lambda: ["sh", "-c", script], stop_grace=1.0)
        sup.start()
        await until(lambda: sup.running and marker.exists() and marker.read_text().strip())
        first, grandchild = sup.pid, int(marker.read_text())
        marker.unlink()
        sup.restart()
        await until(lambda: sup.pid not in (None, first) and marker.exists() and marker.read_text().strip())
        assert not alive(first) and not alive(grandchild)  # the old group is gone, sleep included
        second, grandchild = sup.pid, int(marker.read_text())
        rc = await sup.stop()
        return second, grandchild, rc, sup

    second, grandchild, rc, sup = asyncio.run(main())
    assert rc == -signal.SIGTERM
    assert not alive(second) and not alive(grandchild) and sup.starts == 2


def test_restart_with_sigkill_for_a_wedged_child():
    exits: list = []

    async def main():
        # ignores SIGTERM: only the SIGKILL restart can replace it in time
        sup = Supervisor("wedged", lambda: ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                         on_exit=exits.append, stop_grace=30.0)
        sup.start()
        await until(lambda: sup.running)
        first = sup.pid
        sup.restart(signal.SIGKILL)
        await until(lambda: sup.pid not in (None, first), timeout=5.0)
        sup.stop_grace = 0.5
        await sup.stop()

    asyncio.run(main())
    assert exits[0] == -signal.SIGKILL


@contextlib.contextmanager
def supervising_parent(tmp_path: Path, options: str = ""):
    """A Python process whose Supervisor runs `sleep 300` (Supervisor(..., **options)); yields
    (that process, the child's pid) once the child runs. The parent is killed afterwards."""
    pid_file = tmp_path / "child.pid"
    program = textwrap.dedent(f"""
        import asyncio, pathlib
        from bgpspeaker.supervise import Supervisor
        async def main():
            sup = Supervisor("sleeper", lambda: ["sleep", "300"]{options})
            sup.start()
            while not sup.running:
                await asyncio.sleep(0.01)
            pathlib.Path({str(pid_file)!r}).write_text(str(sup.pid))
            await asyncio.sleep(300)
        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.02)
        yield parent, int(pid_file.read_text())
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_the_child_dies_with_its_parent(tmp_path):
    """SIGKILL of the supervising process: the kernel kills the child (PR_SET_PDEATHSIG)."""
    with supervising_parent(tmp_path) as (parent, child):
        assert alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.01)


def test_kill_stale_kills_only_a_process_whose_command_line_matches(tmp_path):
    marker = str(tmp_path / "unique.conf")
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker])
    other = subprocess.Popen(["sleep", "301"])
    try:
        pid_file = tmp_path / "x.pid"
        pid_file.write_text(f"{other.pid}\n")
        assert kill_stale(pid_file, marker.encode()) is None and other.poll() is None
        pid_file.write_text(f"{mine.pid}\n")
        assert kill_stale(pid_file, marker.encode()) == mine.pid
        assert mine.wait(5) == -signal.SIGKILL
        (tmp_path / "garbage.pid").write_text("not a pid")
        assert kill_stale(tmp_path / "garbage.pid", b"x") is None
        assert kill_stale(tmp_path / "missing.pid", b"x") is None
        pid_file.write_text(str(os.getpid()))
        assert kill_stale(pid_file, b"python") is None  # never ourselves
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_child_that_cannot_be_spawned_is_retried_with_the_wait_and_reported(tmp_path):
    """Not found / not executable: a failed run like a crash (the wait between tries, the
    owner told), never the 1 s retry of an unexpected error; it runs once it can."""
    program = tmp_path / "child"
    starts: list[float] = []
    failures: list[str] = []

    async def main():
        def argv() -> list[str]:
            starts.append(time.monotonic())
            if len(starts) == 3:
                program.write_text("#!/bin/sh\nexec sleep 300\n")
                program.chmod(0o755)
            return [str(program)]
        sup = Supervisor("missing", argv, wait=wait_fixed(0.2), on_failure=failures.append)
        sup.start()
        await until(lambda: sup.running)
        await sup.stop()
        return sup

    sup = asyncio.run(main())
    assert len(starts) == 3 and sup.starts == 1
    assert len(failures) == 2 and all(f.startswith("cannot start") for f in failures), failures
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:])), starts


def test_a_restart_with_backoff_is_a_failed_run_and_waits(tmp_path):
    starts: list[float] = []
    failures: list[str] = []

    async def main():
        sup = Supervisor("slow", lambda: ["sleep", "300"], wait=wait_fixed(0.3), on_failure=failures.append,
                         on_start=lambda pid: starts.append(time.monotonic()))
        sup.start()
        await until(lambda: sup.running)
        sup.restart(signal.SIGKILL, backoff=True)
        await until(lambda: len(starts) == 2)
        sup.restart()  # without backoff: at once, not a failure
        await until(lambda: len(starts) == 3)
        await sup.stop()

    asyncio.run(main())
    assert failures == [f"rc={-signal.SIGKILL}"]
    assert starts[1] - starts[0] >= 0.29 and starts[2] - starts[1] < 0.29


def test_a_callable_environment_is_asked_at_every_start(tmp_path):
    out = tmp_path / "seen"
    calls: list[int] = []

    def env() -> dict[str, str]:
        calls.append(1)
        return {"PATH": os.environ["PATH"], "START": str(len(calls))}

    async def main():
        sup = Supervisor("env", lambda: ["sh", "-c", f"echo $START >> {out}; exit 1"], env=env, wait=wait_fixed(0.05))
        sup.start()
        await until(lambda: out.exists() and len(out.read_text().split()) >= 2)
        await sup.stop()

    asyncio.run(main())
    assert out.read_text().split()[:2] == ["1", "2"]


def test_a_child_kept_after_its_parent_with_die_with_parent_false(tmp_path):
    """ExaBGP's driver keeps this choice of before supervise.py: an orphaned ExaBGP exits on
    its own once its helper cannot reconnect (integration/test_exabgp_driver.py)."""
    child = None
    try:
        with supervising_parent(tmp_path, ", die_with_parent=False") as (parent, child):
            parent.kill()
            parent.wait()
            time.sleep(0.3)  # the death signal, had it been set, is delivered at once (the test above: ms)
            assert alive(child)
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

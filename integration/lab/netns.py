"""Network namespaces, veth links, addresses, routes and the processes started in them.

Why this exists: every lab test needs a few isolated network stacks and the daemons
inside them, and must leave nothing behind, also when it fails or when other
developers' test runs share the machine. So:

- Namespace names are `<prefix>-<pid>-<counter>-<role>`: unique per process and per
  call, and the pid lets `reap_stale()` recognise leftovers of a dead run.
- veth pairs are created *inside* the namespaces (`ip -n A link add ... peer name Y
  netns B`), so interface names only need to be unique within one namespace and never
  collide in the root namespace.
- Every process started here is registered and stopped by PID (SIGTERM, then SIGKILL),
  never by a name pattern. Deleting a namespace also kills, by PID, whatever is still
  running inside it (`ip netns pids`): it was started in our namespace, so it is ours.
- `Lab` is a context manager that owns namespaces and processes; an atexit hook is
  the safety net for everything still registered when the interpreter exits.

Traps measured on this machine (iproute2 6.1):
- `ip link add a type veth` fails with '"type" is invalid lladdr': a bare `a` parses
  as the `address` keyword, and `ip link set b up` as `broadcast`. Always spell
  `name X` / `dev X`, which this module does.
- The kernel has no `dummy` link type: VIPs go on `lo` (`add_lo_addr`).
- IPv6 addresses are added with `nodad` so they are usable at once (no ~1 s DAD).
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Iterable, Sequence

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
DEFAULT_PREFIX = "bgpl"

_counter = itertools.count(1)
_lock = threading.RLock()
_namespaces: dict[str, None] = {}          # created by this process, insertion order
_processes: dict[int, subprocess.Popen] = {}  # pid -> Popen, started by this process


class LabError(RuntimeError):
    """A lab command failed; the message names the command and its stderr."""


# --------------------------------------------------------------------------- commands

def _check(argv: Sequence[str], timeout: float = 10.0, input: str | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: rc={proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside namespace `ns` (None = root namespace).

    `ip netns exec` does setns() and then exec(): the pid of the Popen is the pid of the
    program itself, which is what lets us stop it by PID.
    """
    argv = [str(a) for a in argv]
    return argv if ns is None else [IP, "netns", "exec", ns, *argv]


def run(ns: str | None, argv: Sequence[str], check: bool = True, timeout: float = 10.0,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion inside `ns`; raise LabError on failure when `check`."""
    full = ns_argv(ns, argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"[{ns}] {' '.join(map(str, argv))}: rc={proc.returncode}: "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip(ns: str | None, *args: object, timeout: float = 10.0) -> str:
    """`ip -n ns ARGS...` (no fork of a shell, no netns exec)."""
    argv = [IP] + (["-n", ns] if ns else []) + [str(a) for a in args]
    return _check(argv, timeout=timeout)


def ip_batch(ns: str | None, lines: Iterable[str]) -> None:
    """Many `ip` commands in one process (`ip -batch -`): ~1 ms each instead of ~3 ms."""
    argv = [IP] + (["-n", ns] if ns else []) + ["-batch", "-"]
    _check(argv, input="\n".join(lines) + "\n")


def popen(ns: str | None, argv: Sequence[str], *, stdout=None, stderr=None, stdin=subprocess.DEVNULL,
          env: dict | None = None, cwd: str | None = None, text: bool = False,
          new_session: bool = True) -> subprocess.Popen:
    """Start `argv` inside `ns` and register it, so `stop()` / `stop_all()` / atexit end it by PID.

    `new_session=True` puts it in its own process group (pgid == pid), so stopping also
    reaches children it spawned (ExaBGP's api processes, for example) without ever
    matching processes by name.
    """
    proc = subprocess.Popen(ns_argv(ns, argv), stdout=stdout, stderr=stderr, stdin=stdin,
                            env=env, cwd=cwd, text=text, start_new_session=new_session)
    proc.lab_ns = ns  # type: ignore[attr-defined]
    proc.lab_group = new_session  # type: ignore[attr-defined]
    with _lock:
        _processes[proc.pid] = proc
    return proc


def _signal(proc: subprocess.Popen, sig: int, group: bool = True) -> None:
    try:
        if group and getattr(proc, "lab_group", False):
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, timeout: float = 3.0, group: bool = True) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code. Idempotent.

    `group=True` sends the SIGTERM to the whole process group; `group=False` only to the
    process itself (let ExaBGP stop its own helpers), the group being killed after it exits."""
    try:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM, group)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)
        # the group may outlive its leader (a child that ignored SIGTERM): kill what is left
        if getattr(proc, "lab_group", False):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return proc.returncode
    finally:
        with _lock:
            _processes.pop(proc.pid, None)


def stop_all(timeout: float = 3.0) -> None:
    """Stop every process registered by this Python process (newest first)."""
    with _lock:
        procs = list(_processes.values())[::-1]
    # SIGTERM all first, then wait: n daemons stop in parallel, not in sequence
    for p in procs:
        if p.poll() is None:
            _signal(p, signal.SIGTERM)
    for p in procs:
        stop(p, timeout)


def running_processes() -> list[subprocess.Popen]:
    """Registered processes that have not been stopped (for tests asserting cleanup)."""
    with _lock:
        return [p for p in _processes.values() if p.poll() is None]


# --------------------------------------------------------------------------- namespaces

def _name(prefix: str, role: str) -> str:
    role = re.sub(r"[^A-Za-z0-9_.-]", "_", role)
    return f"{prefix}-{os.getpid()}-{next(_counter)}" + (f"-{role}" if role else "")


def create_netns(role: str = "", prefix: str = DEFAULT_PREFIX, loopback_up: bool = True) -> str:
    """Create a namespace with a unique name and return the name; `lo` is brought up."""
    name = _name(prefix, role)
    _check([IP, "netns", "add", name])
    with _lock:
        _namespaces[name] = None
    if loopback_up:
        ip(name, "link", "set", "dev", "lo", "up")
    return name


def netns_pids(ns: str) -> list[int]:
    """PIDs of processes whose network namespace is `ns`."""
    out = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def delete_netns(ns: str, timeout: float = 3.0) -> None:
    """Stop our processes in `ns`, kill (by PID) anything else still inside, delete it."""
    with _lock:
        procs = [p for p in _processes.values() if getattr(p, "lab_ns", None) == ns]
    for p in procs:
        if p.poll() is None:
            _signal(p, signal.SIGTERM)
    for p in procs:
        stop(p, timeout)
    for pid in netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.path.exists(f"/run/netns/{ns}"):
        _check([IP, "netns", "del", ns])
    with _lock:
        _namespaces.pop(ns, None)


def list_netns(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Namespaces whose name starts with `prefix-` (any creator)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix + "-"))


def own_netns() -> list[str]:
    """Namespaces created by this process and not yet deleted."""
    with _lock:
        return list(_namespaces)


def reap_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces `<prefix>-<pid>-...` whose creator pid no longer exists.

    They are leftovers of a run that was SIGKILLed (atexit never ran). Processes still
    inside are killed by PID; the routers' temp directories of that pid are removed.
    Namespaces of live processes are never touched.
    """
    reaped = []
    for name in list_netns(prefix):
        m = re.match(re.escape(prefix) + r"-(\d+)-", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        for p in netns_pids(name):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run([IP, "netns", "del", name], capture_output=True)
        reaped.append(name)
    # router directories (frr.py / bird.py name them `<kind>-<namespace>-XXXX` in the temp dir)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        m = re.match(r"(?:frr|bird)-" + re.escape(prefix) + r"-(\d+)-", entry)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
    return reaped


def cleanup_all() -> None:
    """Stop every registered process and delete every namespace this process created."""
    stop_all()
    for ns in own_netns()[::-1]:
        try:
            delete_netns(ns)
        except Exception:  # best effort: keep deleting the others
            pass


atexit.register(cleanup_all)


def install_sigterm_cleanup() -> None:
    """Make SIGTERM run the atexit cleanup too (by default it kills Python without it).

    Only installed when SIGTERM still has its default handler and we are on the main
    thread, so a program that handles SIGTERM itself is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum, frame):
        cleanup_all()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


# --------------------------------------------------------------------------- links, addresses, routes

def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, up: bool = True) -> None:
    """A veth pair from `ns_a`/`name_a` to `ns_b`/`name_b`, created inside the namespaces."""
    ip(ns_a, "link", "add", "name", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    if up:
        ip(ns_a, "link", "set", "dev", name_a, "up")
        ip(ns_b, "link", "set", "dev", name_b, "up")


def _addr_args(cidr: str, dev: str) -> list[str]:
    iface = ipaddress.ip_interface(cidr)  # validates, and tells v4 from v6
    args = ["addr", "add", str(iface), "dev", dev]
    if iface.version == 6:
        args.append("nodad")  # usable at once: no duplicate address detection delay
    return args


def add_addr(ns: str, dev: str, cidr: str) -> None:
    """Add an IPv4 or IPv6 address (`10.99.1.2/24`, `fd00:99:1::2/64`) to `dev`."""
    ip(ns, *_addr_args(cidr, dev))


def add_lo_addr(ns: str, address: str) -> None:
    """Put an address (default /32 or /128) on `lo`: the place for VIPs (no dummy links here)."""
    iface = ipaddress.ip_interface(address)
    if "/" not in address:
        iface = ipaddress.ip_interface(f"{address}/{iface.max_prefixlen}")
    ip(ns, *_addr_args(str(iface), "lo"))


def del_lo_addr(ns: str, address: str) -> None:
    iface = ipaddress.ip_interface(address)
    if "/" not in address:
        iface = ipaddress.ip_interface(f"{address}/{iface.max_prefixlen}")
    ip(ns, "addr", "del", str(iface), "dev", "lo")


def add_route(ns: str, dst: str, via: str | None = None, dev: str | None = None,
              metric: int | None = None) -> None:
    """`ip route replace DST [via GW] [dev DEV] [metric M]`; DST may be `default`."""
    v6 = (via and ":" in via) or ":" in dst
    args = (["-6"] if v6 else []) + ["route", "replace", dst]
    if via:
        args += ["via", via]
    if dev:
        args += ["dev", dev]
    if metric is not None:
        args += ["metric", str(metric)]
    ip(ns, *args)


def del_route(ns: str, dst: str, family: int | None = None) -> None:
    """Delete a route; `family=6` for `default` of IPv6 (otherwise told from `dst`)."""
    v6 = family == 6 or ":" in dst
    ip(ns, *(["-6"] if v6 else []), "route", "del", dst)


def set_forwarding(ns: str, on: bool = True) -> None:
    """IPv4 and IPv6 forwarding inside `ns` (per-namespace sysctls)."""
    v = "1" if on else "0"
    run(ns, ["sysctl", "-q", "-w", f"net.ipv4.ip_forward={v}", f"net.ipv6.conf.all.forwarding={v}"])


def set_link(ns: str, dev: str, up: bool) -> None:
    """Bring a link up or down (a cable pull, for failover tests).

    Measured: `link set down` flushes the link's IPv6 addresses (they do not come back
    with `up`), so `keep_addr_on_down` is set first. Routes through the link are deleted
    and do not come back either: re-add them (topology's `Node.link` does)."""
    if not up:
        run(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.keep_addr_on_down=1"])
    ip(ns, "link", "set", "dev", dev, "up" if up else "down")


def addresses(ns: str) -> dict[str, list[str]]:
    """dev -> ['10.99.1.2/24', ...] from `ip -j addr`."""
    data = json.loads(ip(ns, "-j", "addr", "show") or "[]")
    return {d["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", [])] for d in data}


def routes(ns: str, family: int = 4) -> list[dict]:
    """Kernel routes of the main table as `ip -j route` dicts (dst, gateway, dev, protocol...)."""
    return json.loads(ip(ns, f"-{family}", "-j", "route", "show") or "[]")


# --------------------------------------------------------------------------- owner

class Lab:
    """Owns namespaces and processes of one test; `close()` removes all of them.

        with Lab("t") as lab:
            a, b = lab.netns("a"), lab.netns("b")
            lab.veth(a, "eth0", b, "eth0")
            ...
    Cleanup happens in `__exit__`, also when the body raised.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._closers: list = []  # callables run first on close (router stop(), etc.)

    def netns(self, role: str = "") -> str:
        ns = create_netns(role, prefix=self.prefix)
        self.namespaces.append(ns)
        return ns

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        veth(ns_a, name_a, ns_b, name_b)

    def popen(self, ns: str | None, argv: Sequence[str], **kw) -> subprocess.Popen:
        proc = popen(ns, argv, **kw)
        self.processes.append(proc)
        return proc

    def on_close(self, fn) -> None:
        """Register a callable to run (LIFO) before processes and namespaces go."""
        self._closers.append(fn)

    def close(self) -> None:
        errors = []
        for fn in self._closers[::-1]:
            try:
                fn()
            except Exception as exc:  # keep cleaning
                errors.append(exc)
        self._closers.clear()
        for p in self.processes[::-1]:
            if p.poll() is None:
                _signal(p, signal.SIGTERM)
        for p in self.processes[::-1]:
            stop(p)
        self.processes.clear()
        for ns in self.namespaces[::-1]:
            try:
                delete_netns(ns)
            except Exception as exc:
                errors.append(exc)
        self.namespaces.clear()
        if errors:
            raise LabError(f"lab cleanup: {errors!r}")

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

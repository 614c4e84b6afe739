"""A real BIRD 2 router inside a network namespace: the second router for tests.

Why a second router: what the speaker announces must not depend on FRR's quirks, and
BIRD converges ~20x faster than FRR (2-3 ms vs ~53 ms after a withdraw, docs/reference/lab-notes.md),
which makes it the better router for speed measurements.

Same shape as `frr.FrrRouter` (same `Neighbor`, `Originate`, `Path`, `NeighborState`
values), so a test can take either. Choices, measured here with BIRD 2.0.12:
- One process: `bird -f -c CONF -s SOCK -P PIDFILE`. The control socket appears before
  the config is fully applied: ready means `show status` says "Daemon is up".
- We speak the control socket directly instead of spawning `birdc` (~0.02-0.08 ms per
  command). Protocol: a greeting line; replies are lines `NNNN-text` or ` text`
  (continuation), ended by a line `NNNN text`; codes 8xxx/9xxx are errors.
- `connect delay time 1` and `connect retry time 1`: with BIRD's default start delay
  (5 s) a session took ~4 s to come up; with them it takes well under a second.
- `med metric yes` is BIRD's always-compare-med; iBGP to a directly connected peer
  needs `direct`.
- Without `with_kernel=True` nothing reaches the namespace's FIB (like bgpd -Z).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from . import netns
from .frr import Neighbor, NeighborState, Originate, Path, fib_routes
from .wait import wait_until

BIRD = "/usr/sbin/bird"

__all__ = ["BirdConfig", "BirdRouter", "Neighbor", "Originate", "Path", "NeighborState",
           "BirdError", "render_bird_conf", "parse_routes"]


class BirdError(RuntimeError):
    """BIRD answered a command with an error code (8xxx runtime, 9xxx syntax)."""


@dataclass(frozen=True)
class BirdConfig:
    asn: int
    router_id: str
    neighbors: tuple[Neighbor, ...] = ()
    always_compare_med: bool = False   # `med metric yes`
    graceful_restart: bool = False     # BIRD is a GR helper either way ("graceful restart aware")
    hold_time: int = 9
    originate: tuple[Originate, ...] = ()
    with_kernel: bool = False          # export the best routes to the namespace's FIB
    listen_port: int | None = None     # local TCP port; None = 179
    extra: str = ""                    # raw top-level config appended at the end


def _proto(i: int) -> str:
    return f"n{i}"


def _origin_filter(c: BirdConfig) -> list[str]:
    out = ["filter lab_export {"]
    for o in c.originate:
        stmts = []
        if o.med is not None:
            stmts.append(f"bgp_med = {o.med};")
        if o.local_pref is not None:
            stmts.append(f"bgp_local_pref = {o.local_pref};")
        for comm in o.communities:
            a, b = comm.split(":")
            stmts.append(f"bgp_community.add(({a},{b}));")
        for comm in o.large_communities:
            a, b, d = comm.split(":")
            stmts.append(f"bgp_large_community.add(({a},{b},{d}));")
        for asn in o.prepend:
            stmts.append(f"bgp_path.prepend({asn});")
        if stmts:
            out.append(f"  if net = {ipaddress.ip_network(o.prefix)} then {{ {' '.join(stmts)} }}")
    out += ["  accept;", "}"]
    return out


def render_bird_conf(c: BirdConfig, log_file: str) -> str:
    """The bird.conf for `c` (pure)."""
    keepalive = max(1, c.hold_time // 3)
    out = [f"router id {c.router_id};", f'log "{log_file}" all;', "protocol device { scan time 10; }"]
    if c.with_kernel:
        out.append("protocol kernel kernel4 { ipv4 { import none; export all; }; merge paths yes; }")
        out.append("protocol kernel kernel6 { ipv6 { import none; export all; }; merge paths yes; }")
    v4 = [o for o in c.originate if ipaddress.ip_network(o.prefix).version == 4]
    v6 = [o for o in c.originate if ipaddress.ip_network(o.prefix).version == 6]
    if v4:
        out.append("protocol static orig4 { ipv4; " + " ".join(f"route {o.prefix} unreachable;" for o in v4) + " }")
    if v6:
        out.append("protocol static orig6 { ipv6; " + " ".join(f"route {o.prefix} unreachable;" for o in v6) + " }")
    out += _origin_filter(c)
    for i, n in enumerate(c.neighbors):
        port = f" port {n.port}" if n.port else ""
        lines = [f"protocol bgp {_proto(i)} {{",
                 f"  local as {c.asn};" if c.listen_port is None else f"  local port {c.listen_port} as {c.asn};",
                 f"  neighbor {n.address}{port} as {n.remote_as};",
                 f"  hold time {c.hold_time}; keepalive time {keepalive};",
                 "  connect delay time 1; connect retry time 1; error wait time 1, 5;"]
        if n.description:
            lines.append(f'  description "{n.description}";')
        if c.always_compare_med:
            lines.append("  med metric yes;")
        if n.remote_as == c.asn:
            lines.append("  direct;")
        if n.password:
            lines.append(f'  password "{n.password}";')
        if n.passive:
            lines.append("  passive on;")
        if n.ebgp_multihop:
            lines.append(f"  multihop {n.ebgp_multihop};")
        if n.update_source:
            lines.append(f"  source address {n.update_source};")
        lines.append(f"  graceful restart {'on' if c.graceful_restart else 'aware'};")
        lines.append("  ipv4 { import all; export filter lab_export; };")
        lines.append("  ipv6 { import all; export filter lab_export; };")
        lines.append("}")
        out += lines
    out += c.extra.splitlines()
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- control socket

class BirdControl:
    """One connection to BIRD's control socket."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # "0001 BIRD 2.0.12 ready."

    def command(self, cmd: str, check: bool = True) -> list[tuple[str, str]]:
        """Send one command; return [(code, text)] with continuation lines under their code."""
        self.sock.sendall(cmd.encode() + b"\n")
        out: list[tuple[str, str]] = []
        code = ""
        while True:
            raw = self.file.readline()
            if not raw:
                raise BirdError(f"{self.path}: connection closed during {cmd!r}")
            line = raw.decode(errors="replace").rstrip("\n")
            if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
                code, text, last = line[:4], line[5:], line[4] == " "
            else:
                text, last = line[1:], False
            out.append((code, text))
            if last:
                break
        if check and code[0] in "89":
            raise BirdError(f"{self.path}: {cmd!r} -> {code} {out[-1][1]}")
        return out

    def close(self) -> None:
        # a makefile() reader keeps the socket open after close(): shutdown first (docs/reference/lab-notes.md)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.file.close()
        self.sock.close()


def _text(lines: list[tuple[str, str]]) -> str:
    return "\n".join(t for _, t in lines)


_HEADER = re.compile(r"^(?P<prefix>\S+)?\s+(?P<kind>unicast|unreachable|blackhole|prohibited)\s+"
                     r"\[(?P<proto>\S+)[^\]]*\](?P<best>\s+\*)?\s+\((?P<pref>\d+)(?:/\S+)?\)")


def parse_routes(text: str, names: dict[str, str] | None = None) -> dict[str, list[Path]]:
    """`show route all` text -> prefix -> [Path]. `names` maps protocol name -> neighbor."""
    names = names or {}
    result: dict[str, list[Path]] = {}
    cur: dict | None = None
    prefix = None

    def flush():
        if cur is not None:
            result.setdefault(cur["prefix"], []).append(Path(
                prefix=cur["prefix"], nexthop=cur.get("nexthop"), med=cur.get("med"),
                localpref=cur.get("localpref"), aspath=cur.get("aspath", []),
                communities=cur.get("communities", []), large_communities=cur.get("large", []),
                origin=cur.get("origin"), valid=True, best=cur["best"], stale=cur["stale"],
                multipath=False, peer=names.get(cur["proto"])))

    for line in text.splitlines():
        if line.startswith("Table "):
            continue
        m = _HEADER.match(line)
        if m:
            flush()
            if m.group("prefix"):
                prefix = str(ipaddress.ip_network(m.group("prefix"), strict=False))
            cur = {"prefix": prefix, "proto": m.group("proto"), "best": bool(m.group("best")),
                   "stale": "stale" in line.lower()}
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("via "):
            cur.setdefault("nexthop", s.split()[1])
        elif s.startswith("BGP.next_hop:") and "nexthop" not in cur:
            cur["nexthop"] = s.split()[1]
        elif s.startswith("BGP.med:"):
            cur["med"] = int(s.split(":", 1)[1])
        elif s.startswith("BGP.local_pref:"):
            cur["localpref"] = int(s.split(":", 1)[1])
        elif s.startswith("BGP.origin:"):
            cur["origin"] = s.split(":", 1)[1].strip()
        elif s.startswith("BGP.as_path:"):
            cur["aspath"] = [int(x) for x in re.findall(r"\d+", s.split(":", 1)[1])]
        elif s.startswith("BGP.community:"):
            cur["communities"] = [f"{a}:{b}" for a, b in re.findall(r"\((\d+),\s*(\d+)\)", s)]
        elif s.startswith("BGP.large_community:"):
            cur["large"] = [f"{a}:{b}:{c}" for a, b, c in
                            re.findall(r"\((\d+),\s*(\d+),\s*(\d+)\)", s)]
        elif "stale" in s.lower() and s.startswith("Type:"):
            cur["stale"] = True
    flush()
    return result


# --------------------------------------------------------------------------- the router

class BirdRouter:
    """BIRD in namespace `ns`, configured from a BirdConfig; same queries as FrrRouter."""

    def __init__(self, ns: str, config: BirdConfig, lab=None, keep_dir: bool = False):
        self.ns = ns
        self.config = config
        self.keep_dir = keep_dir
        self.dir = tempfile.mkdtemp(prefix=f"bird-{ns}-")
        self.sock_path = os.path.join(self.dir, "bird.ctl")
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        if lab is not None:
            lab.on_close(self.close)

    @property
    def _names(self) -> dict[str, str]:
        return {_proto(i): n.address for i, n in enumerate(self.config.neighbors)}

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write_conf(self) -> str:
        path = self._p("bird.conf")
        with open(path, "w") as f:
            f.write(render_bird_conf(self.config, self._p("bird.log")))
        return path

    def start(self, timeout: float = 10.0) -> "BirdRouter":
        t0 = time.monotonic()
        conf = self._write_conf()
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        with open(self._p("bird.out"), "ab") as out:
            self.proc = netns.popen(self.ns, [BIRD, "-f", "-c", conf, "-s", self.sock_path,
                                              "-P", self._p("bird.pid")],
                                    stdout=out, stderr=subprocess.STDOUT)

        # wait_until swallows exceptions from the condition: an exit ends the wait instead
        try:
            wait_until(lambda: self.proc.poll() is not None or "Daemon is up" in self.command("show status"),
                       timeout, f"bird in {self.ns}: Daemon is up")
        except AssertionError as exc:
            raise netns.LabError(f"{exc}; log: {self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise netns.LabError(f"bird in {self.ns} exited rc={self.proc.returncode}: {self.log_tail()}")
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill and self.proc.poll() is None:
                os.kill(self.proc.pid, 9)
            netns.stop(self.proc)
            self.proc = None

    def restart(self, kill: bool = False) -> "BirdRouter":
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        self.stop()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "BirdRouter":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("bird.out", "bird.log"):
            try:
                with open(self._p(name), errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
            except FileNotFoundError:
                pass
        return text

    # queries
    def command(self, cmd: str, check: bool = True) -> str:
        """One command through the control socket (like `birdc -s SOCK cmd`), as text."""
        c = BirdControl(self.sock_path)
        try:
            return _text(c.command(cmd, check))
        finally:
            c.close()

    def reconfigure(self, config: BirdConfig) -> None:
        """Rewrite the config and apply it (`configure`).

        Measured: a change to a BGP protocol's options (`med metric`, timers) restarts that
        session, and an FRR peer then takes seconds to re-send its routes."""
        self.config = config
        self._write_conf()
        text = self.command("configure")
        if "Reconfigured" not in text and "Reconfiguration in progress" not in text:
            raise BirdError(f"bird in {self.ns}: configure: {text}")

    def set_neighbor_shutdown(self, address: str, on: bool = True) -> None:
        name = {a: n for n, a in self._names.items()}[address]
        self.command(f"{'disable' if on else 'enable'} {name}")

    def neighbors(self) -> dict[str, NeighborState]:
        text = self.command("show protocols all")
        result: dict[str, NeighborState] = {}
        names = self._names
        cur = None
        channel = None
        for line in text.splitlines():
            head = line.split()
            if head and not line.startswith(" ") and len(head) >= 4 and head[1] == "BGP":
                cur = head[0]
                channel = None
                if cur in names:
                    result[cur] = {"state": "?", "v4": 0, "v6": 0}
                continue
            if cur not in result:
                continue
            s = line.strip()
            if s.startswith("BGP state:"):
                result[cur]["state"] = s.split(":", 1)[1].strip()
            elif s.startswith("Channel "):
                channel = s.split()[1]
            elif s.startswith("Routes:") and channel in ("ipv4", "ipv6"):
                m = re.search(r"(\d+) imported", s)
                result[cur]["v4" if channel == "ipv4" else "v6"] = int(m.group(1)) if m else 0
        out = {}
        for name, d in result.items():
            addr = names[name]
            remote_as = next(n.remote_as for n in self.config.neighbors if n.address == addr)
            out[addr] = NeighborState(address=addr, state=d["state"], remote_as=remote_as,
                                      pfx_rcd=d["v4"], pfx_rcd6=d["v6"], uptime_msec=0)
        return out

    def neighbor(self, address: str) -> NeighborState:
        n = self.neighbors().get(address)
        if n is None:
            raise KeyError(f"{address}: not a neighbor of {self.ns}")
        return n

    def established(self, *addresses: str) -> bool:
        ns = self.neighbors()
        addrs = addresses or tuple(n.address for n in self.config.neighbors)
        return all(a in ns and ns[a].established for a in addrs)

    def routes(self, afi: str = "ipv4") -> dict[str, list[Path]]:
        """prefix -> [Path], BGP routes only (not the locally originated statics)."""
        table = "master4" if afi == "ipv4" else "master6"
        text = self.command(f"show route all table {table}")
        routes = parse_routes(text, self._names)
        # keep what came from a BGP neighbor; the statics we originate are not "received"
        return {p: [x for x in paths if x.peer is not None]
                for p, paths in routes.items() if any(x.peer is not None for x in paths)}

    def prefixes(self, afi: str = "ipv4") -> list[str]:
        return list(self.routes(afi))

    def paths(self, prefix: str) -> list[Path]:
        net = ipaddress.ip_network(prefix, strict=False)
        table = "master4" if net.version == 4 else "master6"
        text = self.command(f"show route all {net} table {table}", check=False)
        return [x for x in parse_routes(text, self._names).get(str(net), []) if x.peer is not None]

    def best_path(self, prefix: str) -> Path | None:
        for p in self.paths(prefix):
            if p.best:
                return p
        return None

    def count(self, afi: str = "ipv4") -> int:
        return len(self.prefixes(afi))

    def fib_routes(self, family: int = 4, protocol: str | None = "bird") -> dict[str, list[str]]:
        """Kernel FIB (only with `with_kernel=True`): prefix -> gateways."""
        return fib_routes(self.ns, family, protocol)

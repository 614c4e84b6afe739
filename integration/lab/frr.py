"""A real FRR router (bgpd, optionally zebra) inside a network namespace, for tests.

Why: the design says "real BGP, never a mocked one": the speaker's routes are judged
by a real router's RIB and best path, and with zebra the routes reach the namespace's
kernel FIB so real packets follow them.

Choices, with the measurements behind them (FRR 8.4.4 on this machine, docs/reference/lab-notes.md):
- Each instance has its own directory (config, pid files, vty sockets, zserv.api,
  logs), owned by `frr`: as root without `-u frr -g frr` bgpd refuses to start
  ("user(root) is not part of vty group"). `-P 0`: no vty TCP port.
- Without zebra, bgpd runs with `-Z` (control plane only, nothing reaches the FIB).
- `frr defaults traditional` plus `no bgp ebgp-requires-policy` (otherwise eBGP
  accepts and sends nothing), `no bgp default ipv4-unicast` and explicit activation
  of ipv4 + ipv6 unicast per neighbor.
- Queries go through the vty unix socket (`vty.py`, ~0.1 ms) instead of vtysh (~20 ms).
- FRR 8.4 JSON quirks handled here (all measured):
  * `show bgp ipv4 unicast summary json` has no `ipv4Unicast` wrapper (but
    `show bgp summary json` has one); `ribCount` counts radix nodes: use `pfxRcd`.
  * The table view `show bgp ipv4 unicast json` has neither communities nor MED under
    a stable name (`metric`, `path` as a string, no communities); the per-prefix view
    `show bgp ipv4 unicast PREFIX json` has `med`, `aspath.{string,segments}`,
    `community.string`, `largeCommunity.string`, `bestpath.overall`, `peer.peerId`.
    MED is `metric` in both. `routes()` uses `show bgp ipv4 unicast json detail` (one
    query; `detail json` is an unknown command), whose per-prefix lists start with a
    {"prefix", "version"} header element. The parser accepts both views' spellings.
  * Communities are listed in numeric order, whatever the order they were set in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from . import netns, vty
from .wait import wait_until

ZEBRA = "/usr/lib/frr/zebra"
BGPD = "/usr/lib/frr/bgpd"
BFDD = "/usr/lib/frr/bfdd"


# --------------------------------------------------------------------------- config values

@dataclass(frozen=True)
class Neighbor:
    """A BGP neighbor of the router. `port` is the remote port (ExaBGP on a high port)."""
    address: str
    remote_as: int
    password: str | None = None
    passive: bool = False
    port: int | None = None
    ebgp_multihop: int | None = None
    update_source: str | None = None
    description: str | None = None
    bfd_profile: str | None = None   # `neighbor X bfd profile P` (bfdd runs beside bgpd; needs zebra)
    bfd_check_control_plane_failure: bool = False  # `neighbor X bfd check-control-plane-failure`


@dataclass(frozen=True)
class BfdProfile:
    """A bfdd profile on the router (milliseconds)."""
    name: str
    receive_interval: int = 300
    transmit_interval: int = 300
    detect_multiplier: int = 3


@dataclass(frozen=True)
class Originate:
    """A route the router itself announces (`network P route-map ...`), for tests that need
    a route with known attributes without ExaBGP."""
    prefix: str
    med: int | None = None
    local_pref: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    prepend: tuple[int, ...] = ()

    def __post_init__(self):
        # ("64512:100") is a str, not a tuple: FRR would get "6 4 5 1 2 : ..." and drop the line
        for name in ("communities", "large_communities", "prepend"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"Originate.{name}: a tuple, not a str")


@dataclass(frozen=True)
class FrrConfig:
    asn: int
    router_id: str
    neighbors: tuple[Neighbor, ...] = ()
    always_compare_med: bool = False
    graceful_restart: bool | str = False  # True: full GR; False: FRR default (helper only); "disable"
    hold_time: int = 9               # keepalive = hold/3; 3 s for failover tests
    multipath_relax: bool = False    # `bgp bestpath as-path multipath-relax`
    maximum_paths: int | None = None  # ECMP over eBGP paths; None = FRR default
    originate: tuple[Originate, ...] = ()
    listen_port: int | None = None   # bgpd -p; None = 179
    # update-group coalesce time; FRR's default 1000 ms delayed every route an FRR
    # *sends* by ~1.1 s after the session came up; 0 brings it to ~0.1 s (measured)
    coalesce_time_ms: int | None = 0
    extra: str = ""                  # raw lines appended inside `router bgp`
    hostname: str = "frr"
    bfd_profiles: tuple[BfdProfile, ...] = ()
    dampening: str | None = None     # `bgp dampening <args>` in each address family ("" = FRR's defaults)

    @property
    def with_bfd(self) -> bool:
        return any(n.bfd_profile for n in self.neighbors)


def render_bfdd_conf(c: FrrConfig, log_file: str) -> str:
    """The router's bfdd config: profiles only (bgpd creates the sessions through zebra)."""
    out = [f"hostname {c.hostname}", f"log file {log_file}", "bfd"]
    for p in c.bfd_profiles:
        out += [f" profile {p.name}", f"  receive-interval {p.receive_interval}",
                f"  transmit-interval {p.transmit_interval}", f"  detect-multiplier {p.detect_multiplier}", " exit"]
    return "\n".join(out + ["exit", ""])


def render_bgpd_conf(c: FrrConfig, log_file: str) -> str:
    """The bgpd config file for `c` (pure; unit-testable)."""
    keepalive = max(1, c.hold_time // 3) if c.hold_time else 0
    out = ["frr defaults traditional", f"hostname {c.hostname}", f"log file {log_file}", "!"]
    for i, o in enumerate(c.originate):
        out.append(f"route-map ORIG{i} permit 10")
        if o.med is not None:
            out.append(f" set metric {o.med}")
        if o.local_pref is not None:
            out.append(f" set local-preference {o.local_pref}")
        if o.communities:
            out.append(f" set community {' '.join(o.communities)}")
        if o.large_communities:
            out.append(f" set large-community {' '.join(o.large_communities)}")
        if o.prepend:
            out.append(f" set as-path prepend {' '.join(map(str, o.prepend))}")
        out.append("exit")
        out.append("!")
    out += [f"router bgp {c.asn}",
            f" bgp router-id {c.router_id}",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " no bgp network import-check",   # originate without an IGP route
            f" timers bgp {keepalive} {c.hold_time}"]
    out.append(" bgp always-compare-med" if c.always_compare_med else " no bgp always-compare-med")
    # FRR is a graceful-restart *helper* by default (keeps a restarting peer's routes as
    # stale); `no bgp graceful-restart` is rejected when GR was never on (measured).
    if c.graceful_restart is True or c.graceful_restart == "full":
        out.append(" bgp graceful-restart")
    elif c.graceful_restart == "disable":
        out.append(" bgp graceful-restart-disable")
    if c.multipath_relax:
        out.append(" bgp bestpath as-path multipath-relax")
    if c.coalesce_time_ms is not None:
        out.append(f" coalesce-time {c.coalesce_time_ms}")
    for n in c.neighbors:
        a = n.address
        out.append(f" neighbor {a} remote-as {n.remote_as}")
        out.append(f" neighbor {a} timers {keepalive} {c.hold_time}")
        # reconnect fast after a peer restart (default 120 s would stall tests)
        out.append(f" neighbor {a} timers connect 1")
        if n.description:
            out.append(f" neighbor {a} description {n.description}")
        if n.password:
            out.append(f" neighbor {a} password {n.password}")
        if n.passive:
            out.append(f" neighbor {a} passive")
        if n.port:
            out.append(f" neighbor {a} port {n.port}")
        if n.ebgp_multihop:
            out.append(f" neighbor {a} ebgp-multihop {n.ebgp_multihop}")
        if n.update_source:
            out.append(f" neighbor {a} update-source {n.update_source}")
        if n.bfd_profile:
            out.append(f" neighbor {a} bfd profile {n.bfd_profile}")
            if n.bfd_check_control_plane_failure:
                out.append(f" neighbor {a} bfd check-control-plane-failure")
    for afi in ("ipv4", "ipv6"):
        out.append(f" address-family {afi} unicast")
        for n in c.neighbors:
            out.append(f"  neighbor {n.address} activate")
        if c.maximum_paths is not None:
            out.append(f"  maximum-paths {c.maximum_paths}")
        if c.dampening is not None:
            out.append(f"  bgp dampening {c.dampening}".rstrip())
        for i, o in enumerate(c.originate):
            if ipaddress.ip_network(o.prefix).version == (4 if afi == "ipv4" else 6):
                out.append(f"  network {o.prefix} route-map ORIG{i}")
        out.append(" exit-address-family")
    for line in c.extra.splitlines():
        out.append(" " + line.strip())
    out += ["exit", "!"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- parsed state

@dataclass(frozen=True)
class Path:
    """One BGP path as the router sees it. `peer` is the neighbor address it came from
    (None for a locally originated route). `aspath` is a list of ASNs (sets flattened)."""
    prefix: str
    nexthop: str | None
    med: int | None
    localpref: int | None
    aspath: list[int]
    communities: list[str]
    large_communities: list[str]
    origin: str | None
    valid: bool
    best: bool
    stale: bool
    multipath: bool
    peer: str | None


@dataclass(frozen=True)
class NeighborState:
    address: str
    state: str               # Established, Active, Connect, Idle, ...
    remote_as: int | None
    pfx_rcd: int             # prefixes received (accepted), ipv4 unicast
    pfx_rcd6: int            # same, ipv6 unicast
    uptime_msec: int

    @property
    def established(self) -> bool:
        return self.state == "Established"


def _aspath(p: dict) -> list[int]:
    ap = p.get("aspath", p.get("path"))
    if isinstance(ap, dict):
        segs = ap.get("segments")
        if segs:
            return [int(x) for s in segs for x in s.get("list", [])]
        ap = ap.get("string", "")
    if not isinstance(ap, str):
        return []
    return [int(t) for t in ap.replace("{", " ").replace("}", " ").replace(",", " ").split()
            if t.isdigit()]


def _comm(p: dict, *keys: str) -> list[str]:
    for k in keys:
        v = p.get(k)
        if isinstance(v, dict):
            s = v.get("string")
            if s:
                return s.split()
            if v.get("list"):
                return [str(x) for x in v["list"]]
        elif isinstance(v, str) and v:
            return v.split()
    return []


def _nexthop(p: dict) -> str | None:
    nhs = p.get("nexthops") or []
    # global v6 next hop first ("scope": "global"), then the one marked used, then any
    for nh in nhs:
        if nh.get("scope") == "global" and nh.get("ip"):
            return nh["ip"]
    for nh in nhs:
        if nh.get("used") and nh.get("ip"):
            return nh["ip"]
    return nhs[0].get("ip") if nhs else None


def parse_path(prefix: str, p: dict) -> Path:
    """One path dict from either FRR view (table or per-prefix) into a Path."""
    best = p.get("bestpath")
    if isinstance(best, dict):
        best = bool(best.get("overall"))
    peer = p.get("peer")
    if isinstance(peer, dict):
        peer_addr = peer.get("peerId")
    else:
        peer_addr = p.get("peerId")
    if peer_addr in ("(unspec)", "0.0.0.0", "::", None):
        peer_addr = None
    med = p.get("med", p.get("metric"))
    return Path(
        prefix=prefix,
        nexthop=_nexthop(p),
        med=int(med) if med is not None else None,
        localpref=p.get("localpref", p.get("locPrf")),
        aspath=_aspath(p),
        communities=_comm(p, "community", "communities"),
        large_communities=_comm(p, "largeCommunity", "largeCommunities"),
        origin=p.get("origin"),
        valid=bool(p.get("valid")),
        best=bool(best),
        stale=bool(p.get("stale")),
        multipath=bool(p.get("multipath")),
        peer=peer_addr,
    )


def _is_path(p: dict) -> bool:
    """False for the per-prefix header element of `json detail` ({"prefix", "version"})."""
    return any(k in p for k in ("aspath", "path", "nexthops", "valid", "peer", "peerId"))


def _norm_prefix(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False))


# --------------------------------------------------------------------------- the router

class FrrRouter:
    """bgpd (and optionally zebra) in namespace `ns`, configured from an FrrConfig.

        r = FrrRouter(ns, FrrConfig(asn=64500, router_id="10.99.1.1",
                                    neighbors=(Neighbor("10.99.1.2", 64512),)),
                      with_zebra=True, lab=lab).start()
        wait_until(lambda: r.neighbor("10.99.1.2").established, 10, "session up")
        r.best_path("203.0.113.5/32").med

    With `lab=` the router is stopped and its directory removed when the lab closes.
    """

    def __init__(self, ns: str, config: FrrConfig, with_zebra: bool = False, lab=None,
                 keep_dir: bool = False, strict: bool = True):
        self.ns = ns
        self.strict = strict  # raise when bgpd rejected a config line
        self.config = config
        self.with_zebra = with_zebra
        self.keep_dir = keep_dir
        self.dir = tempfile.mkdtemp(prefix=f"frr-{ns}-")
        shutil.chown(self.dir, "frr", "frr")
        os.chmod(self.dir, 0o755)
        self.zebra: subprocess.Popen | None = None
        self.bfdd: subprocess.Popen | None = None
        self.bgpd: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # last start(), for reports
        if lab is not None:
            lab.on_close(self.close)

    # paths
    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def bgpd_vty(self) -> str:
        return self._p("bgpd.vty")

    @property
    def zebra_vty(self) -> str:
        return self._p("zebra.vty")

    # lifecycle
    def _write(self, name: str, text: str) -> str:
        path = self._p(name)
        with open(path, "w") as f:
            f.write(text)
        shutil.chown(path, "frr", "frr")
        return path

    def _spawn(self, daemon: str, argv: list[str]) -> subprocess.Popen:
        out = open(self._p(f"{daemon}.out"), "ab")
        try:
            return netns.popen(self.ns, argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()

    def start(self, timeout: float = 15.0) -> "FrrRouter":
        """Start the daemons and return once bgpd answers on its vty socket."""
        t0 = time.monotonic()
        common = ["-u", "frr", "-g", "frr", "-P", "0", "--vty_socket", self.dir,
                  "-z", self._p("zserv.api")]
        for sock in ("bgpd.vty", "zebra.vty", "bfdd.vty"):
            if os.path.exists(self._p(sock)):
                os.unlink(self._p(sock))
        if self.with_zebra:
            conf = self._write("zebra.conf", f"hostname {self.config.hostname}\nlog file {self._p('zebra.log')}\n")
            self.zebra = self._spawn("zebra", [ZEBRA, "-f", conf, "-i", self._p("zebra.pid"), *common])
            # bgpd retries its zebra connection on a timer: start it once zserv.api is there
            # both sockets: a bgpd that finds no zserv.api retries only on a slow timer
            wait_until(lambda: self.zebra.poll() is not None or (
                os.path.exists(self._p("zebra.vty")) and os.path.exists(self._p("zserv.api"))),
                timeout, f"zebra in {self.ns} to listen")
            self._alive(self.zebra, "zebra")
        if self.config.with_bfd:
            if not self.with_zebra:
                raise netns.LabError("BFD on the router needs zebra (bgpd reaches bfdd through it)")
            conf = self._write("bfdd.conf", render_bfdd_conf(self.config, self._p("bfdd.log")))
            self.bfdd = self._spawn("bfdd", [BFDD, "-f", conf, "-i", self._p("bfdd.pid"),
                                             "--bfdctl", self._p("bfdd.sock"), *common])
            wait_until(lambda: self.bfdd.poll() is not None or os.path.exists(self._p("bfdd.vty")),
                       timeout, f"bfdd in {self.ns} to listen")
            self._alive(self.bfdd, "bfdd")
        conf = self._write("bgpd.conf", render_bgpd_conf(self.config, self._p("bgpd.log")))
        argv = [BGPD, "-f", conf, "-i", self._p("bgpd.pid"), *common]
        if not self.with_zebra:
            argv.append("-Z")
        if self.config.listen_port:
            argv += ["-p", str(self.config.listen_port)]
        self.bgpd = self._spawn("bgpd", argv)
        # (wait_until swallows exceptions from the condition: an exit ends the wait instead)
        wait_until(lambda: self.bgpd.poll() is not None or self.show_json("show bgp summary") is not None,
                   timeout, f"bgpd in {self.ns} to answer on its vty")
        self._alive(self.bgpd, "bgpd")
        self.start_seconds = time.monotonic() - t0
        # bgpd reads its config before it serves the vty, and only logs bad lines
        # ("Command returned Incomplete on config line 12: ..."): fail loudly instead
        errors = [l for l in self.log_tail("bgpd", 200).splitlines() if "on config line" in l]
        if errors and self.strict:
            self.stop()
            raise netns.LabError(f"bgpd in {self.ns}: config errors: {errors}")
        return self

    def _alive(self, proc: subprocess.Popen | None, name: str) -> bool:
        if proc is None or proc.poll() is not None:
            raise netns.LabError(f"{name} in {self.ns} exited: {self.log_tail(name)}")
        return True

    def stop(self, kill: bool = False) -> None:
        """Stop bgpd then zebra (SIGTERM, or SIGKILL with `kill=True` to simulate a crash)."""
        for attr in ("bgpd", "bfdd", "zebra"):
            proc = getattr(self, attr)
            if proc is not None:
                if kill and proc.poll() is None:
                    os.kill(proc.pid, 9)
                netns.stop(proc)
                setattr(self, attr, None)

    def restart(self, kill: bool = False) -> "FrrRouter":
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        self.stop()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "FrrRouter":
        return self.start() if self.bgpd is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.bgpd is not None and self.bgpd.poll() is None

    def log_tail(self, daemon: str = "bgpd", lines: int = 20) -> str:
        text = ""
        for name in (f"{daemon}.out", f"{daemon}.log"):
            try:
                with open(self._p(name), errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
            except FileNotFoundError:
                pass
        return text

    # queries
    def command(self, cmd: str, daemon: str = "bgpd") -> str:
        return vty.command(self._p(f"{daemon}.vty"), cmd)

    def show_json(self, cmd: str, daemon: str = "bgpd"):
        """`cmd json` through the vty socket, parsed."""
        return vty.show_json(self._p(f"{daemon}.vty"), cmd)

    def configure(self, lines: Iterable[str]) -> None:
        """Apply config lines at run time, e.g. ["router bgp 64500", " neighbor X shutdown"]."""
        vty.configure(self.bgpd_vty, lines)

    def set_neighbor_shutdown(self, address: str, on: bool = True) -> None:
        prefix = "" if on else "no "
        self.configure([f"router bgp {self.config.asn}", f"{prefix}neighbor {address} shutdown"])

    def bfd_peers(self) -> dict[str, dict]:
        """peer address -> bfdd's JSON for that session (status, diagnostic, ...)."""
        from . import vty as _vty
        with _vty.VtySession(self._p("bfdd.vty")) as s:
            s.command("enable")  # bfdd's show commands are unknown in view mode
            text = s.command("show bfd peers json").strip()
        return {p["peer"]: p for p in (json.loads(text) if text else [])}

    def neighbors(self) -> dict[str, NeighborState]:
        """address -> NeighborState (state, pfxRcd per family) from the summaries."""
        result: dict[str, NeighborState] = {}
        v4 = self.show_json("show bgp ipv4 unicast summary").get("peers", {})
        v6 = self.show_json("show bgp ipv6 unicast summary").get("peers", {})
        for addr in set(v4) | set(v6):
            a, b = v4.get(addr, {}), v6.get(addr, {})
            base = a or b
            result[addr] = NeighborState(
                address=addr, state=base.get("state", "?"), remote_as=base.get("remoteAs"),
                pfx_rcd=int(a.get("pfxRcd", 0)), pfx_rcd6=int(b.get("pfxRcd", 0)),
                uptime_msec=int(base.get("peerUptimeMsec", 0)))
        return result

    def neighbor(self, address: str) -> NeighborState:
        n = self.neighbors().get(address)
        if n is None:
            raise KeyError(f"{address}: not a neighbor of {self.ns}")
        return n

    def established(self, *addresses: str) -> bool:
        """True if the given neighbors (default: all configured) are Established."""
        ns = self.neighbors()
        addrs = addresses or tuple(n.address for n in self.config.neighbors)
        return all(a in ns and ns[a].established for a in addrs)

    def prefixes(self, afi: str = "ipv4") -> list[str]:
        """Prefixes in the BGP table (fast: one table query, no per-prefix detail)."""
        data = self.show_json(f"show bgp {afi} unicast")
        return [_norm_prefix(p) for p in (data.get("routes") or {})]

    def paths(self, prefix: str) -> list[Path]:
        """All paths for one prefix, parsed from the detailed per-prefix view."""
        afi = "ipv6" if ":" in prefix else "ipv4"
        prefix = _norm_prefix(prefix)
        data = self.show_json(f"show bgp {afi} unicast {prefix}")
        if not data or data.get("prefix") is None and not data.get("paths"):
            return []
        return [parse_path(prefix, p) for p in data.get("paths", []) if _is_path(p)]

    def routes(self, afi: str = "ipv4") -> dict[str, list[Path]]:
        """prefix -> list of paths with attributes (MED, communities, ...), in one query.

        FRR 8.4 has `show bgp ipv4 unicast json detail` (not `... detail json`): every
        prefix's list starts with a header element {"prefix", "version"} before its
        paths, which `_is_path` skips (measured)."""
        data = self.show_json(f"show bgp {afi} unicast json detail")
        return {_norm_prefix(prefix): [parse_path(_norm_prefix(prefix), p) for p in items if _is_path(p)]
                for prefix, items in (data.get("routes") or {}).items()}

    def best_path(self, prefix: str) -> Path | None:
        for p in self.paths(prefix):
            if p.best:
                return p
        return None

    def count(self, afi: str = "ipv4") -> int:
        """Number of prefixes in the BGP table (one table query)."""
        return len(self.prefixes(afi))

    def fib_routes(self, family: int = 4, protocol: str | None = "bgp") -> dict[str, list[str]]:
        """Kernel FIB of the namespace: prefix -> gateways (several with ECMP).

        Only meaningful with zebra. `protocol=None` returns every route."""
        return fib_routes(self.ns, family, protocol)


def fib_routes(ns: str, family: int = 4, protocol: str | None = None) -> dict[str, list[str]]:
    """prefix -> gateways from `ip -n ns -j route` (dst normalised to CIDR form)."""
    result: dict[str, list[str]] = {}
    for r in netns.routes(ns, family):
        if protocol is not None and r.get("protocol") != protocol:
            continue
        dst = r["dst"]
        if dst != "default":
            dst = _norm_prefix(dst)
        if "nexthops" in r:
            gws = [nh.get("gateway") or nh.get("dev") for nh in r["nexthops"]]
        else:
            gws = [r.get("gateway") or r.get("dev")]
        result[dst] = gws
    return result

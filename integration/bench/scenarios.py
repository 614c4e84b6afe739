"""The six system benchmarks of issue 6, each measured beside its reference in the same run.

Every scenario takes the SystemLab (system.py) and a Mode (sizes), and returns a
Section: table rows (value, reference, ratio or delta, goal, met), the raw samples for
the plots, correctness checks (what the smoke test asserts: never a timing), and
profile summaries. What each one measures, and against what:

1. event → RIB: an EndpointSlice becomes ready at the API → the route is in FRR's RIB,
   through a real `bgpspeaker run`; reference: one `announce` written straight to a bare
   ExaBGP on the same node, to the same FRR. Withdraw (→ not ready) is measured the same way.
2. cold start: N Services with endpoints at the API, `bgpspeaker run` spawned → all N
   routes in FRR; reference: a bare ExaBGP spawned and fed ×100 prefixes per command
   with a window of 8 (the best feeding measured, bench_window.py); BIRD from static
   config: the native limit.
3. failover: the primary's endpoints become not ready at its API → FRR's best path (then
   its FIB) on the secondary cluster's node; reference: a bare ExaBGP on the primary
   node withdrawing the route by hand, with the same secondary daemon running.
4. resync: every resourceVersion compacted and the watches cut (→ 410 → relist of
   every object, unchanged) → UPDATEs received by FRR, the daemon's updates counter,
   and the daemon's CPU seconds (/proc/PID/stat).
5. footprint: the daemon's RSS and CPU at N Services in steady state, idle CPU over a
   window; ExaBGP's RSS beside it.
6. churn: endpoint flips at a fixed rate across M Services → latency of each change to
   FRR's RIB, and the final RIB equal to the desired set; reference: the same flips
   written straight to a bare ExaBGP.
"""

from __future__ import annotations

import ipaddress
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bgpspeaker.exabgp import commands
from integration.bench import system as s
from integration.lab import netns


# --------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Mode:
    name: str
    latency_background: tuple[int, ...]  # Services announced while events are measured
    events: int                  # events measured (each: ready → RIB, then not ready → gone)
    cold_sizes: tuple[int, ...]
    failover_runs: int
    failover_background: int
    steady_services: int         # resync + footprint
    idle_seconds: float
    churn_services: int
    churn_rate: float            # changes per second
    churn_seconds: float
    profile: bool                # py-spy on the daemon in the scenarios that carry load
    settle_timeout: float = 15.0 # longest wait for a fresh daemon to go quiet before measuring
    cold_repeats: int = 3        # runs per cold-start size up to 10,000 (the median is reported)


MODES = {
    "small": Mode("small", (100,), 20, (1000,), 5, 20, 500, 2.0, 200, 100, 3.0, False, 3.0, 1),
    "medium": Mode("medium", (100, 1000), 200, (1000, 10_000), 20, 100, 10_000, 10.0, 1000, 100, 20.0, True),
    "full": Mode("full", (100, 1000, 10_000), 200, (1000, 10_000, 50_000), 20, 100, 10_000, 10.0, 1000, 100, 60.0,
                 True),
}


# --------------------------------------------------------------------------- results

@dataclass
class Row:
    bench: str
    measure: str
    value: str
    reference: str = "—"
    ratio: str = "—"
    goal: str = "—"
    met: Optional[bool] = None
    note: str = ""


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)   # for plots (seconds)
    checks: dict[str, bool] = field(default_factory=dict)           # correctness (smoke test)
    numbers: dict[str, float] = field(default_factory=dict)         # machine-readable values
    profiles: dict[str, list] = field(default_factory=dict)         # name -> summarize_profile rows
    seconds: float = 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x == x else "n/a"


def sec(x: float) -> str:
    return f"{x:.2f} s" if x == x else "n/a"


def poll(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.001) -> float:
    """Poll until `condition()`; the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise netns.LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def start_speaker(lab: s.SystemLab, n_routes: int, node: str = "east-1", timeout: float = 300.0,
                  profile_to: Optional[Path] = None, spawned: Callable[[s.SpeakerProcess], None] = lambda sp: None,
                  ) -> tuple[s.SpeakerProcess, float, Optional[s.Profiler]]:
    """Spawn the daemon (`spawned(it)` right after) and wait until FRR holds `n_routes` from it;
    (speaker, time seen, profiler)."""
    sp = lab.speaker(node).start()
    spawned(sp)
    profiler = None
    if profile_to is not None:
        time.sleep(0.3)  # py-spy attaches to a Python process: let `ip netns exec` finish its exec
        profiler = s.Profiler(sp.proc.pid, profile_to)
    try:
        t = lab.wait_count(node, n_routes, timeout, "routes from the daemon", proc=sp.proc)
    except Exception as exc:
        raise netns.LabError(f"{exc}\ndaemon log:\n{sp.log_tail()}") from None
    return sp, t, profiler


SETTLE_TIMEOUT = [15.0]  # set per run from Mode.settle_timeout


def settle(sp: s.SpeakerProcess, quiet: float = 0.03, window: float = 1.0, timeout: Optional[float] = None) -> float:
    """Until the daemon used < `quiet` of a core over `window` (startup work done: Lease,
    first status pass), so a measurement does not pay for it; the last rate seen. Bounded:
    a daemon that keeps draining its Event backlog (measured: minutes at 10,000
    Services, Events are rate-limited to 5/s) never gets quieter than that."""
    deadline = time.monotonic() + (SETTLE_TIMEOUT[0] if timeout is None else timeout)
    rate = float("nan")
    while time.monotonic() < deadline:
        c0 = sp.cpu()
        time.sleep(window)
        rate = (sp.cpu() - c0) / window
        if rate < quiet:
            break
    return rate


def profile_rows(profiler: Optional[s.Profiler], section: Section, name: str) -> None:
    if profiler is None:
        return
    path = profiler.stop()
    if path is not None:
        section.profiles[name] = s.summarize_profile(path)


def load_services(emu: s.NodeEmulator, indices, nodes: list[str], ready: bool = True,
                  preference: Optional[str] = None, cluster: str = "east") -> None:
    """Services with their addresses in status and in allocation records: a steady cluster
    that has imported its allocations (README, "Multi-cluster addresses")."""
    objs = [s.import_marker_object(cluster)]
    for i in indices:
        objs.append(s.service_object(i, preference))
        objs.append(s.slice_object(i, nodes, ready, cluster))
    objs += s.record_objects(indices, cluster, lambda name: emu.get_object("v1", "ConfigMap", s.RECORDS_NAMESPACE, name))
    emu.load_many(objs)


# --------------------------------------------------------------------------- 1. event → RIB

def _events_daemon(lab: s.SystemLab, bg: int, n: int, profile_to: Optional[Path], section: Section) -> dict:
    node = lab.node("east-1")
    probes = list(range(bg, bg + n))
    rnd = random.Random(1)
    emu = lab.emulator("east-1")
    load_services(emu, range(bg), [node.name])
    load_services(emu, probes, [node.name], ready=False)
    sp, _, _ = start_speaker(lab, bg)
    settle(sp)
    profiler = s.Profiler(sp.pid, profile_to) if profile_to else None
    up, down = [], []
    cpu0 = sp.cpu()
    for i in probes:
        pfx = s.prefix(i)
        t0 = time.monotonic()
        emu.set_object(s.slice_object(i, [node.name], True))
        up.append(poll(lambda: lab.rib.has(pfx), 30, f"{pfx} announced") - t0)
        time.sleep(rnd.uniform(*GAP))
        t0 = time.monotonic()
        emu.set_object(s.slice_object(i, [node.name], False))
        down.append(poll(lambda: not lab.rib.has(pfx), 30, f"{pfx} withdrawn") - t0)
        time.sleep(rnd.uniform(*GAP))
    cpu = (sp.cpu() - cpu0) / (2 * n)
    profile_rows(profiler, section, f"event → RIB with {bg:,} Services (daemon, during the {2 * n} events)")
    section.checks[f"events with {bg} Services: all reached the RIB"] = len(up) == n and len(down) == n
    # A new Service among them (no record yet: the allocator claims one, creates it, reads it
    # back, and only then is it announced), and its deletion.
    created, deleted = [], []
    profiler = s.Profiler(sp.pid, profile_to.with_name(profile_to.stem + "-new.txt")) if profile_to else None
    for i in range(bg + n, bg + n + min(n, 50)):
        fresh = s.service_object(i)
        fresh["metadata"]["annotations"].pop("bgpspeaker.io/ip-allocated-from-pool")
        fresh.pop("status")
        up_s, down_s = _create_and_delete(lab, emu, i, fresh, s.prefix(i), rnd, "Service")
        created.append(up_s)
        deleted.append(down_s)
    profile_rows(profiler, section, f"a new Service → RIB, then deleted, among {bg:,} Services (daemon, "
                                    f"{len(created)} of each)")
    auto = _new_autoassign_services(lab, emu, bg + n, bg + n + 50, min(n, 50), rnd)
    sp.stop()
    lab.wait_empty()
    return {"up": up, "down": down, "cpu": cpu, "created": created, "deleted": deleted, "auto": auto}


def _new_autoassign_services(lab: s.SystemLab, emu: s.NodeEmulator, held: int, first_name: int, count: int,
                             rnd: random.Random) -> list[float]:
    """A new Service that asks for no address, `count` times, each deleted before the next:
    the allocator picks the pool's lowest free address, past the `held` recorded ones
    (vip(0 .. held-1); the pool's first address is reserved), claims and creates its record,
    reads it back, then announces it. Create → route in FRR's RIB, seconds."""
    from bgpspeaker.records import block_name, record_key

    address, pfx = ipaddress.ip_address(s.vip(held)), s.prefix(held)

    def released() -> bool:  # its record is gone: the next new Service gets the same address
        block = emu.get_object("v1", "ConfigMap", s.RECORDS_NAMESPACE, block_name(address))
        return block is None or record_key(address) not in (block.get("data") or {})

    created = []
    poll(released, 60, f"{address} released by the Services before")
    for i in range(first_name, first_name + count):
        fresh = s.service_object(i)
        fresh["metadata"]["annotations"] = {}  # no address, no pool: autoAssign
        fresh.pop("status")
        created.append(_create_and_delete(lab, emu, i, fresh, pfx, rnd, "autoAssign Service")[0])
        poll(released, 30, f"{address} released")
    return created


def _create_and_delete(lab: s.SystemLab, emu: s.NodeEmulator, i: int, fresh: dict, pfx: str, rnd: random.Random,
                       what: str) -> tuple[float, float]:
    """Service `fresh` (number i) created with a ready EndpointSlice, then deleted: seconds
    from its creation to `pfx` in FRR's RIB, and from its deletion to `pfx` gone."""
    emu.set_object(s.slice_object(i, [lab.node("east-1").name], True))
    t0 = time.monotonic()
    emu.set_object(fresh)
    created = poll(lambda: lab.rib.has(pfx), 30, f"{pfx} of a new {what} announced") - t0
    time.sleep(rnd.uniform(*GAP))
    t0 = time.monotonic()
    emu.delete_object("v1", "Service", fresh["metadata"]["namespace"], fresh["metadata"]["name"])
    deleted = poll(lambda: not lab.rib.has(pfx), 30, f"{pfx} of a deleted {what} withdrawn") - t0
    time.sleep(rnd.uniform(*GAP))
    return created, deleted


def _events_raw(lab: s.SystemLab, bg: int, n: int) -> dict:
    node = lab.node("east-1")
    rnd = random.Random(1)
    raw = s.RawExabgp(lab.lab, node, lab.workdir).start()
    lab.wait_count("east-1", 0, 60, "raw session up")
    raw.announce([s.prefix(i) for i in range(bg)])
    lab.wait_count("east-1", bg, 120, "raw background routes")
    up, down = [], []
    for i in range(bg, bg + n):
        pfx = s.prefix(i)
        net = [ipaddress.ip_network(pfx)]
        t0 = time.monotonic()
        raw.send(commands.announce_line([raw.peer], raw.attrs, net))
        up.append(poll(lambda: lab.rib.has(pfx), 30, f"{pfx} announced (raw)") - t0)
        time.sleep(rnd.uniform(*GAP))
        t0 = time.monotonic()
        raw.send(commands.withdraw_line([raw.peer], net))
        down.append(poll(lambda: not lab.rib.has(pfx), 30, f"{pfx} withdrawn (raw)") - t0)
        time.sleep(rnd.uniform(*GAP))
    raw.stop()
    lab.wait_empty()
    return {"up": up, "down": down}


GAP = (0.02, 0.10)  # seconds between events, random: independent events, no phase lock with ExaBGP's 10 ms loop


def event_latency(lab: s.SystemLab, mode: Mode, out: Path) -> Section:
    sec_ = Section("event")
    n = mode.events
    biggest = max(mode.latency_background)
    raw = _events_raw(lab, biggest, n)
    sec_.samples["raw ExaBGP: announce → RIB"] = raw["up"]
    r50, r99 = pct(raw["up"], .5), pct(raw["up"], .99)
    sec_.numbers.update({"raw_up_p50": r50, "raw_up_p99": r99})
    for bg in mode.latency_background:
        profile = out / f"profile-event-{bg}.txt" if mode.profile and bg == biggest else None
        d = _events_daemon(lab, bg, n, profile, sec_)
        up, down = d["up"], d["down"]
        sec_.samples[f"daemon, {bg:,} Services: ready → RIB"] = up
        d50, d99 = pct(up, .5), pct(up, .99)
        what = f"{n} events, {bg:,} Services announced"
        sec_.rows.append(Row("1 event → router", f"EndpointSlice ready → route in RIB, p50 ({what})", ms(d50),
                             f"raw ExaBGP {ms(r50)}", f"+{ms(d50 - r50)} ({d50 / r50:.1f}×)", "≤ +30 ms",
                             d50 - r50 <= 0.030))
        sec_.rows.append(Row("1 event → router", f"… p99 ({bg:,} Services)", ms(d99), f"raw ExaBGP {ms(r99)}",
                             f"+{ms(d99 - r99)} ({d99 / r99:.1f}×)", "≤ +100 ms", d99 - r99 <= 0.100,
                             f"daemon CPU per event {ms(d['cpu'])} with {bg:,} Services"))
        c50, c99 = pct(d["created"], .5), pct(d["created"], .99)
        sec_.samples[f"daemon, {bg:,} Services: new Service → RIB"] = d["created"]
        sec_.rows.append(Row("1 event → router", f"a new Service → route in RIB, p50 / p99 ({bg:,} Services; "
                                                 f"record created and read back first)",
                             f"{ms(c50)} / {ms(c99)}", f"raw ExaBGP {ms(r50)} / {ms(r99)}",
                             f"+{ms(c50 - r50)} p50", "≤ 30 / 100 ms", c50 <= 0.030 and c99 <= 0.100,
                             f"deleted → gone {ms(pct(d['deleted'], .5))} p50"))
        sec_.numbers.update({f"create_p50_{bg}": c50, f"create_p99_{bg}": c99,
                             f"delete_p50_{bg}": pct(d["deleted"], .5)})
        a50, a99 = pct(d["auto"], .5), pct(d["auto"], .99)
        sec_.samples[f"daemon, {bg:,} Services: new autoAssign Service → RIB"] = d["auto"]
        sec_.rows.append(Row("1 event → router", f"a new autoAssign Service → route in RIB, p50 / p99 ({bg:,} "
                                                 f"Services; the lowest free address, past every recorded one)",
                             f"{ms(a50)} / {ms(a99)}", f"raw ExaBGP {ms(r50)} / {ms(r99)}",
                             f"+{ms(a50 - r50)} p50", "≤ 30 / 100 ms", a50 <= 0.030 and a99 <= 0.100))
        sec_.numbers.update({f"auto_create_p50_{bg}": a50, f"auto_create_p99_{bg}": a99})
        sec_.numbers.update({f"up_p50_{bg}": d50, f"up_p99_{bg}": d99, f"cpu_per_event_{bg}": d["cpu"],
                             f"down_p50_{bg}": pct(down, .5), f"down_p99_{bg}": pct(down, .99)})
        if bg == biggest:
            sec_.samples[f"daemon, {bg:,} Services: not ready → gone"] = down
            sec_.samples["raw ExaBGP: withdraw → gone"] = raw["down"]
            sec_.rows.append(Row("1 event → router", f"EndpointSlice not ready → route gone, p50 / p99 ({bg:,})",
                                 f"{ms(pct(down, .5))} / {ms(pct(down, .99))}",
                                 f"raw ExaBGP {ms(pct(raw['down'], .5))} / {ms(pct(raw['down'], .99))}",
                                 f"+{ms(pct(down, .5) - pct(raw['down'], .5))} p50", "—", None,
                                 "FRR takes ~50 ms to process a withdraw whoever sends it"))
    return sec_


# --------------------------------------------------------------------------- 2. cold start

def _seen(lab: s.SystemLab, spawned: float, done: float) -> dict:
    """A cold start's times as FRR saw them, from spawn (wait_count just recorded them)."""
    return {"total": done - spawned, "feed": done - lab.established_seen, "session": lab.established_seen - spawned,
            "first": lab.first_route_seen - spawned, "first_to_last": done - lab.first_route_seen}


def _feed_raw(lab: s.SystemLab, n: int) -> dict:
    node = lab.node("east-1")
    raw = s.RawExabgp(lab.lab, node, lab.workdir).start()
    spawned = raw.started_at
    # fed as soon as the relay is connected, before the session is up, as the driver does:
    # ExaBGP then sends its adj-rib-out in bulk when the session comes up (the best feeding)
    feeder = threading.Thread(target=raw.announce, args=([s.prefix(i) for i in range(n)],), daemon=True)
    feeder.start()
    done = lab.wait_count("east-1", n, 600, "raw routes", interval=0.01)
    feeder.join(60)
    result = {**_seen(lab, spawned, done), "exabgp_rss": s.proc_rss_mb(raw.pid),
              "exabgp_cpu": s.proc_cpu_seconds(raw.pid)}
    raw.stop()
    lab.wait_empty()
    return result


def _feed_bird(lab: s.SystemLab, n: int) -> dict:
    node = lab.node("east-1")
    bird = s.bird_speaker(lab.lab, node, [s.prefix(i) for i in range(n)])
    spawned = time.monotonic()
    bird.start(timeout=120)
    done = lab.wait_count("east-1", n, 300, "BIRD routes", interval=0.002)
    est = lab.established_seen
    bird.stop()
    lab.wait_empty()
    return {"total": done - spawned, "feed": done - est}


def _daemon_cold(lab: s.SystemLab, n: int, profile: Optional[Path], section: Section) -> dict:
    node = lab.node("east-1")
    api_pid = lab.emulators["east-1"].proc.pid
    running: list[s.SpeakerProcess] = []
    exabgp: list[int] = []  # found once: exabgp_pid() scans /proc, and this runs 20 times a second

    def pids() -> dict[str, Optional[int]]:
        sp_ = running[0] if running else None
        if sp_ is not None and not exabgp and (found := sp_.exabgp_pid()) is not None:
            exabgp.append(found)
        return {"daemon": sp_.pid if sp_ else None, "ExaBGP": exabgp[0] if exabgp else None,
                "API server": api_pid}

    wall0 = time.time()
    with s.CpuTimeline(pids) as cpu:
        sp, done, profiler = start_speaker(lab, n, timeout=900, profile_to=profile, spawned=running.append)
    result = {**_seen(lab, sp.started_at, done), "cpu": sp.cpu(), "rss": sp.rss(),
              "exabgp_rss": s.proc_rss_mb(sp.exabgp_pid()), "exabgp_cpu": s.proc_cpu_seconds(sp.exabgp_pid())}
    profile_rows(profiler, section, f"cold start, {n:,} Services (daemon, spawn → all routes)")
    marks = _log_marks(sp.log_path, wall0)
    result["phases"] = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(marks.items(), key=lambda kv: kv[1])) or "?"
    listed = max((marks[k] for k in ("services listed", "slices listed", "records listed") if k in marks),
                 default=None)
    result["cores"] = _cores_by_phase(cpu, sp.started_at, listed, lab.first_route_seen, done)
    result["complete"] = lab.rib.received(node.address) == n
    sp.stop()
    lab.wait_empty()
    return result


def cold_start(lab: s.SystemLab, mode: Mode, out: Path) -> Section:
    sec_ = Section("cold")
    node = lab.node("east-1")
    curve: dict[str, list[float]] = {"N": [], "daemon": [], "daemon feed": [], "raw": [], "raw feed": [],
                                     "bird": [], "bird feed": []}
    for n in mode.cold_sizes:
        repeats = mode.cold_repeats if n <= 10_000 else 1
        emu = lab.emulator("east-1")
        load_services(emu, range(n), [node.name])
        emu.warm()  # each run, the first too, finds the objects encoded
        raws, birds, daemons = [], [], []
        for r in range(repeats):  # interleaved, so drift hits all three alike
            raws.append(_feed_raw(lab, n))
            birds.append(_feed_bird(lab, n))
            daemons.append(_daemon_cold(lab, n, None, sec_))
        if mode.profile and n == max(mode.cold_sizes):
            # a run of its own, not counted: py-spy sampling the daemon slows it (50,000: ~15 %)
            _daemon_cold(lab, n, out / f"profile-cold-{n}.txt", sec_)
        med = lambda runs, key: statistics.median(x[key] for x in runs)  # noqa: E731
        span = lambda runs, key: (  # noqa: E731
            f" (range {min(x[key] for x in runs):.2f}–{max(x[key] for x in runs):.2f})" if len(runs) > 1 else "")
        total, feed = med(daemons, "total"), med(daemons, "feed")
        raw_total, raw_feed = med(raws, "total"), med(raws, "feed")
        bird_total, bird_feed = med(birds, "total"), med(birds, "feed")
        d = daemons[-1]
        sec_.checks[f"cold start {n}: all routes in FRR"] = all(x["complete"] for x in daemons)
        runs = f"median of {repeats} runs" if repeats > 1 else "one run"
        ratio = total / raw_total
        sec_.rows.append(Row("2 cold start", f"{n:,} Services → all routes in FRR (spawn → last route; {runs})",
                             sec(total), f"raw ExaBGP {sec(raw_total)}; BIRD {sec(bird_total)}",
                             f"{ratio:.2f}× raw", "≤ 1.2× raw", ratio <= 1.2,
                             (f"daemon{span(daemons, 'total')}, raw{span(raws, 'total')} s; " if repeats > 1 else "")
                             + f"phases (last run): {d['phases']}; "
                             + _timeline("daemon", d) + "; " + _timeline("raw ExaBGP", raws[-1])
                             + f"; daemon run's {d['cores']}"))
        sec_.rows.append(Row("2 cold start", f"{n:,}: BGP session up → last route (feeding only)", sec(feed),
                             f"raw ExaBGP {sec(raw_feed)}; BIRD {sec(bird_feed)}",
                             f"{feed / raw_feed:.2f}× raw", "—", None,
                             f"daemon CPU {d['cpu']:.1f} s, RSS {d['rss']:.0f} MB; its ExaBGP CPU "
                             f"{d['exabgp_cpu']:.1f} s, RSS {d['exabgp_rss']:.0f} MB (raw ExaBGP CPU "
                             f"{raws[-1]['exabgp_cpu']:.1f} s of its {raws[-1]['total']:.1f} s run, RSS "
                             f"{raws[-1]['exabgp_rss']:.0f} MB)"))
        for k, v in (("N", n), ("daemon", total), ("daemon feed", feed), ("raw", raw_total),
                     ("raw feed", raw_feed), ("bird", bird_total), ("bird feed", bird_feed)):
            curve[k].append(float(v))
        sec_.numbers.update({f"daemon_{n}": total, f"raw_{n}": raw_total, f"bird_{n}": bird_total,
                             f"daemon_feed_{n}": feed, f"raw_feed_{n}": raw_feed, f"cpu_{n}": d["cpu"],
                             f"exabgp_cpu_{n}": d["exabgp_cpu"], f"raw_exabgp_cpu_{n}": raws[-1]["exabgp_cpu"]})
    sec_.samples.update(curve)
    return sec_


def _timeline(who: str, run: dict) -> str:
    """Where a cold start's time goes, as FRR saw it: what no overlap of feed and sync could
    remove (spawn → session up) and how fast routes then arrive (first → last route)."""
    return (f"{who}: session up at {run['session']:.2f} s, first route at {run['first']:.2f} s, "
            f"first → last route {run['first_to_last']:.2f} s")


def _log_marks(log_path: Path, wall0: float) -> dict[str, float]:
    """From the daemon's logfmt log: when its first Kubernetes lists finished and when ExaBGP
    started, in seconds after `wall0` (its spawn): where a cold start's time goes."""
    import re
    from datetime import datetime, timezone
    marks: dict[str, float] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        m = re.match(r"ts=(\S+)", line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
        if "listed" in line and "endpointslices" in line and "slices listed" not in marks:
            marks["slices listed"] = ts - wall0
        if "listed" in line and "services" in line and "services listed" not in marks:
            marks["services listed"] = ts - wall0
        if "listed" in line and "resource=records-" in line and "records listed" not in marks:
            marks["records listed"] = ts - wall0
        if "child started" in line and "child=exabgp" in line and "ExaBGP started" not in marks:
            marks["ExaBGP started"] = ts - wall0
    return marks


def _cores_by_phase(cpu: s.CpuTimeline, spawned: float, listed: Optional[float], first: float,
                    done: float) -> str:
    """Cores each process kept busy in the phases of a cold start: who bounds each phase."""
    names = ("daemon", "ExaBGP", "API server", "other")
    if listed is None:  # the log did not say
        phases = [("spawn → first route", spawned, first)]
    else:
        phases = [("spawn → lists read", spawned, spawned + listed),
                  ("lists read → first route", spawned + listed, first)]
    phases.append(("first → last route", first, done))
    parts = []
    for label, start, end in phases:
        cores = cpu.busy(start, end)
        parts.append(f"{label} ({end - start:.2f} s) " + " / ".join(f"{cores.get(n, 0.0):.2f}" for n in names))
    return f"cores busy ({' / '.join(names)}): " + "; ".join(parts)


# --------------------------------------------------------------------------- 3. failover

def failover(lab: s.SystemLab, mode: Mode, out: Path) -> Section:
    sec_ = Section("failover")
    east, west = lab.node("east-1"), lab.node("west-1")
    bg = mode.failover_background
    vip_i = bg  # the Service that fails over
    pfx = s.prefix(vip_i)
    emus = {}
    for node in (east, west):
        emu = lab.emulator(node.name)
        load_services(emu, range(bg + 1), [node.name], preference="east,west", cluster=node.cluster)
        emus[node.cluster] = emu
    speakers = {}
    for node in (east, west):
        speakers[node.cluster] = start_speaker(lab, bg + 1, node.name)[0]
    poll(lambda: lab.rib.best_peer(pfx) == east.address, 30, "best path on east", 0.01)
    settle(speakers["east"])

    def flip(ready: bool) -> float:
        t0 = time.monotonic()
        emus["east"].set_object(s.slice_object(vip_i, [east.name], ready, "east"))
        return t0

    rib, fib, back = [], [], []
    rnd = random.Random(3)
    for _ in range(mode.failover_runs):
        t0 = flip(False)
        rib.append(poll(lambda: lab.rib.best_peer(pfx) == west.address, 30, "best path on west") - t0)
        fib.append(poll(lambda: lab.rib.fib_gateway(pfx) == west.address, 30, "FIB via west") - t0)
        time.sleep(rnd.uniform(0.05, 0.15))
        t0 = flip(True)
        back.append(poll(lambda: lab.rib.best_peer(pfx) == east.address, 30, "best path back on east") - t0)
        poll(lambda: lab.rib.fib_gateway(pfx) == east.address, 30, "FIB back via east")
        time.sleep(rnd.uniform(0.05, 0.15))
    sec_.checks["failover: best path on east at the end"] = lab.rib.best_peer(pfx) == east.address

    # reference: a bare ExaBGP on east withdraws/announces by hand; west's daemon unchanged
    speakers["east"].stop()
    poll(lambda: lab.rib.best_peer(pfx) == west.address, 30, "west after east's daemon stopped", 0.01)
    raw = s.RawExabgp(lab.lab, east, lab.workdir).start()
    net = [ipaddress.ip_network(pfx)]
    poll(lambda: lab.rib.received(east.address) == 0, 60, "raw session", 0.01)
    raw.send(commands.announce_line([raw.peer], raw.attrs, net))
    poll(lambda: lab.rib.best_peer(pfx) == east.address, 30, "raw east best", 0.01)
    rrib, rfib = [], []
    for _ in range(mode.failover_runs):
        t0 = time.monotonic()
        raw.send(commands.withdraw_line([raw.peer], net))
        rrib.append(poll(lambda: lab.rib.best_peer(pfx) == west.address, 30, "raw: west best") - t0)
        rfib.append(poll(lambda: lab.rib.fib_gateway(pfx) == west.address, 30, "raw: FIB via west") - t0)
        time.sleep(rnd.uniform(0.05, 0.15))
        raw.send(commands.announce_line([raw.peer], raw.attrs, net))
        poll(lambda: lab.rib.best_peer(pfx) == east.address, 30, "raw: east best again")
        poll(lambda: lab.rib.fib_gateway(pfx) == east.address, 30, "raw: FIB via east again")
        time.sleep(rnd.uniform(0.05, 0.15))
    raw.stop()
    speakers["west"].stop()
    lab.wait_empty("east-1")
    lab.wait_empty("west-1")

    n = mode.failover_runs
    sec_.samples.update({"daemon: not ready → best path on secondary": rib, "daemon: → FIB on secondary": fib,
                         "raw ExaBGP: withdraw → best path on secondary": rrib,
                         "daemon: ready again → best path back": back})
    sec_.rows.append(Row("3 failover", f"primary not ready → best path on secondary, p50 ({n} runs)",
                         ms(pct(rib, .5)), f"raw ExaBGP withdraw {ms(pct(rrib, .5))}",
                         f"+{ms(pct(rib, .5) - pct(rrib, .5))}", "≤ 150 ms", pct(rib, .5) <= 0.150))
    sec_.rows.append(Row("3 failover", "… best path, max", ms(max(rib)), f"raw ExaBGP {ms(max(rrib))}",
                         f"+{ms(max(rib) - max(rrib))}", "≤ 500 ms", max(rib) <= 0.500))
    sec_.rows.append(Row("3 failover", "… FIB (kernel route via secondary), p50 / max",
                         f"{ms(pct(fib, .5))} / {ms(max(fib))}",
                         f"raw ExaBGP {ms(pct(rfib, .5))} / {ms(max(rfib))}",
                         f"+{ms(pct(fib, .5) - pct(rfib, .5))} p50", "≤ 150 / 500 ms",
                         pct(fib, .5) <= 0.150 and max(fib) <= 0.500))
    sec_.rows.append(Row("3 failover", "failback: primary ready → best path back, p50 / max",
                         f"{ms(pct(back, .5))} / {ms(max(back))}"))
    sec_.numbers.update({"rib_p50": pct(rib, .5), "rib_max": max(rib), "fib_p50": pct(fib, .5),
                         "fib_max": max(fib), "raw_rib_p50": pct(rrib, .5)})
    return sec_


# --------------------------------------------------------------------------- 4 + 5. steady state, resync

def _relisted(requests: list[dict], mark: int) -> bool:
    """Every informer listed again and then watched again after request number `mark`."""
    paths = ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes")
    for path in paths:
        listed = watched = False
        for r in requests[mark:]:
            if r.get("path") != path or r.get("method") != "GET":
                continue
            is_watch = str((r.get("query") or {}).get("watch", "")).lower() in ("true", "1")
            if not is_watch:
                listed = True
            elif listed:
                watched = True
        if not watched:
            return False
    return True


def steady_and_resync(lab: s.SystemLab, mode: Mode, out: Path) -> tuple[Section, Section]:
    foot, resync = Section("footprint"), Section("resync")
    node = lab.node("east-1")
    n = mode.steady_services
    emu = lab.emulator("east-1")
    load_services(emu, range(n), [node.name])
    sp, _, _ = start_speaker(lab, n, timeout=600)
    settle(sp)
    cpu_start, xpid = sp.cpu(), sp.exabgp_pid()
    xcpu0 = s.proc_cpu_seconds(xpid)
    profiler = s.Profiler(sp.pid, out / "profile-idle.txt") if mode.profile else None
    time.sleep(mode.idle_seconds)
    idle = (sp.cpu() - cpu_start) / mode.idle_seconds
    xidle = (s.proc_cpu_seconds(xpid) - xcpu0) / mode.idle_seconds
    profile_rows(profiler, foot, f"idle, {n:,} Services announced, nothing changing (daemon)")
    rss, xrss = sp.rss(), s.proc_rss_mb(xpid)
    foot.rows.append(Row("5 footprint", f"daemon RSS, {n:,} Services announced, steady", f"{rss:.0f} MB",
                         f"ExaBGP {xrss:.0f} MB", f"{rss / xrss:.2f}× ExaBGP", "≤ 150 MB", rss <= 150))
    foot.rows.append(Row("5 footprint", f"daemon CPU idle ({mode.idle_seconds:.0f} s window)",
                         f"{idle * 100:.2f} % of a core", f"ExaBGP {xidle * 100:.2f} % (keepalives)", "—", "~0",
                         idle < 0.01,
                         f"CPU from spawn to steady state (cold start, then the settle wait): {cpu_start:.1f} s"))
    foot.numbers.update({"rss_mb": rss, "exabgp_rss_mb": xrss, "idle_cpu": idle, "startup_cpu": cpu_start})

    hwm_start = _hwm(sp.pid)
    # resync: every RV compacted away, watches cut → each informer gets 410 → full relist
    updates_frr = lab.rib.updates_received(node.address)
    updates_metric = sp.metric("bgpspeaker_bgp_updates_sent_total")
    mark = len(emu.requests)
    profiler = s.Profiler(sp.pid, out / "profile-resync.txt") if mode.profile else None
    cpu0, t0 = sp.cpu(), time.monotonic()
    emu.compact()
    emu.close_watches()
    s.wait_for(lambda: _relisted(emu.requests, mark), 120, "every informer relisted and watching again", 0.05)
    relist_s = time.monotonic() - t0
    time.sleep(1.0)      # a reconcile, if the relist triggered one, has started by now
    settle(sp, quiet=idle + 0.02)
    cpu = sp.cpu() - cpu0 - idle * (time.monotonic() - t0)
    profile_rows(profiler, resync, f"resync of {n} unchanged Services (daemon)")
    d_frr = lab.rib.updates_received(node.address) - updates_frr
    d_metric = sp.metric("bgpspeaker_bgp_updates_sent_total") - updates_metric
    resync.checks["resync: no UPDATE reached FRR"] = d_frr == 0
    resync.checks["resync: all routes still in FRR"] = lab.rib.received(node.address) == n
    resync.rows.append(Row("4 resync", f"relist of {n:,} unchanged Services (+ slices): UPDATEs at FRR",
                           f"{d_frr}", "—", "—", "0", d_frr == 0,
                           f"bgpspeaker_bgp_updates_sent_total +{d_metric:.0f}; relist took {relist_s:.1f} s"))
    resync.rows.append(Row("4 resync", "… daemon CPU seconds for the relist", f"{cpu:.2f} s",
                           f"spawn → steady state: {cpu_start:.1f} s", f"{cpu / max(cpu_start, 1e-9):.2f}×",
                           "≤ 2 s", cpu <= 2.0))
    resync.numbers.update({"updates_frr": d_frr, "updates_metric": d_metric, "cpu": cpu, "relist_s": relist_s})
    hwm = _hwm(sp.pid)
    foot.rows.append(Row("5 footprint", "daemon peak RSS (VmHWM) after cold start / after the resync",
                         f"{hwm_start:.0f} / {hwm:.0f} MB", "—", "—", "≤ 150 MB", hwm <= 150,
                         "a relist keeps the old view of every unchanged object (informer._relist): "
                         "one copy of the cache plus the page being read"))
    foot.numbers["hwm_start_mb"] = hwm_start
    foot.numbers["hwm_mb"] = hwm
    foot.numbers["exabgp_idle_cpu"] = xidle
    sp.stop()
    lab.wait_empty()
    return foot, resync


def _hwm(pid: Optional[int]) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


# --------------------------------------------------------------------------- 6. churn

class Sampler:
    """Reads FRR's whole table every few ms; resolves pending changes when the RIB shows
    their target state (the sample's end time, so the read cost counts against us)."""

    def __init__(self, lab: s.SystemLab):
        self.lab = lab
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[float, bool]] = {}
        self.latencies: list[float] = []
        self.superseded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rib-sampler", daemon=True)

    def change(self, pfx: str, present: bool, t0: float) -> None:
        with self.lock:
            if pfx in self.pending:
                self.superseded += 1
            self.pending[pfx] = (t0, present)

    def _run(self) -> None:
        while not self._stop.is_set():
            table = self.lab.rib.prefixes()
            now = time.monotonic()
            with self.lock:
                for pfx, (t0, present) in list(self.pending.items()):
                    if (pfx in table) == present:
                        self.latencies.append(now - t0)
                        del self.pending[pfx]
            time.sleep(0.002)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _churn(lab: s.SystemLab, mode: Mode, apply: Callable[[int, bool], None]) -> dict:
    """Flip random Services at mode.churn_rate for mode.churn_seconds through `apply(i, ready)`;
    then wait for FRR to equal the desired set."""
    node = lab.node("east-1")
    m = mode.churn_services
    rnd = random.Random(6)
    ready = {i: True for i in range(m)}
    changes = int(mode.churn_rate * mode.churn_seconds)
    with Sampler(lab) as sampler:
        start = time.monotonic()
        for k in range(changes):
            due = start + k / mode.churn_rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            i = rnd.randrange(m)
            ready[i] = not ready[i]
            t0 = time.monotonic()
            apply(i, ready[i])
            sampler.change(s.prefix(i), ready[i], t0)
        sent = time.monotonic()
        desired = {s.prefix(i) for i, r in ready.items() if r}
        try:
            converged = poll(lambda: lab.rib.prefixes() == desired, 60, "FRR equal to the desired set", 0.01)
        except netns.LabError:
            converged = float("nan")
        time.sleep(0.05)
    table = lab.rib.prefixes()
    return {"latencies": sampler.latencies, "unresolved": len(sampler.pending), "superseded": sampler.superseded,
            "equal": table == desired, "missing": len(desired - table), "extra": len(table - desired),
            "rate": changes / (sent - start), "converged_after": converged - sent, "changes": changes,
            "received": lab.rib.received(node.address)}


def churn(lab: s.SystemLab, mode: Mode, out: Path) -> Section:
    sec_ = Section("churn")
    node = lab.node("east-1")
    m = mode.churn_services
    emu = lab.emulator("east-1")
    load_services(emu, range(m), [node.name])
    sp, _, _ = start_speaker(lab, m)
    settle(sp)
    profiler = s.Profiler(sp.pid, out / "profile-churn.txt", idle=True) if mode.profile else None
    cpu0, t0 = sp.cpu(), time.monotonic()
    d = _churn(lab, mode, lambda i, ready: emu.set_object(s.slice_object(i, [node.name], ready)))
    cpu = (sp.cpu() - cpu0) / (time.monotonic() - t0)
    busy = float("nan")
    if profiler is not None and profiler.stop() is not None:
        busy = s.loop_busy(profiler.out)
        sec_.profiles[f"churn, {mode.churn_rate:.0f} changes/s over {m} Services (daemon's event loop thread, "
                      f"busy {busy * 100:.0f} % of the wall time)"] = s.summarize_profile(profiler.out,
                                                                                          thread="MainThread")
    sp.stop()
    lab.wait_empty()

    raw = s.RawExabgp(lab.lab, node, lab.workdir).start()
    lab.wait_count("east-1", 0, 60, "raw session up")
    raw.announce([s.prefix(i) for i in range(m)])
    lab.wait_count("east-1", m, 120, "raw routes")

    def raw_apply(i: int, ready: bool) -> None:
        net = [ipaddress.ip_network(s.prefix(i))]
        raw.send(commands.announce_line([raw.peer], raw.attrs, net) if ready
                 else commands.withdraw_line([raw.peer], net))
    r = _churn(lab, mode, raw_apply)
    raw.stop()
    lab.wait_empty()

    sec_.checks["churn: FRR's final state equals the desired state"] = d["equal"]
    sec_.checks["churn: every change observed at FRR"] = d["unresolved"] == 0
    sec_.samples.update({"daemon under churn": d["latencies"], "raw ExaBGP under churn": r["latencies"]})
    what = f"{d['changes']} changes at {d['rate']:.0f}/s for {mode.churn_seconds:.0f} s over {m} Services"
    sec_.rows.append(Row("6 churn", f"final RIB = desired state ({what})",
                         "yes" if d["equal"] else f"NO: {d['missing']} missing, {d['extra']} extra",
                         f"raw ExaBGP: {'yes' if r['equal'] else 'NO'}", "—", "equal", d["equal"],
                         f"converged {ms(d['converged_after'])} after the last change"))
    for q, label in ((.5, "p50"), (.99, "p99")):
        dv, rv = pct(d["latencies"], q), pct(r["latencies"], q)
        sec_.rows.append(Row("6 churn", f"change → RIB under load, {label}", ms(dv), f"raw ExaBGP {ms(rv)}",
                             f"+{ms(dv - rv)} ({dv / rv:.2f}×)", "p99 reported" if label == "p99" else "—", None))
    sec_.rows.append(Row("6 churn", "… max", ms(max(d["latencies"] or [float("nan")])),
                         f"raw ExaBGP {ms(max(r['latencies'] or [float('nan')]))}",
                         note=f"daemon CPU {cpu * 100:.0f} % of a core during the churn"
                              + (f"; its event loop thread busy {busy * 100:.0f} % of the wall time "
                                 "(py-spy --idle: samples outside epoll; busy includes waiting for the GIL)"
                                 if busy == busy else "")))
    sec_.numbers["loop_busy"] = busy
    sec_.numbers.update({"p50": pct(d["latencies"], .5), "p99": pct(d["latencies"], .99),
                         "raw_p50": pct(r["latencies"], .5), "raw_p99": pct(r["latencies"], .99),
                         "cpu": cpu, "rate": d["rate"]})
    return sec_

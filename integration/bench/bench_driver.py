"""Benchmark: the ExaBGP driver vs the best raw ExaBGP feeding, side by side, against one FRR.

Prints (never asserts):
- time for N /32s to be in FRR's RIB (all prefixes received) through `ExabgpDriver.apply`
  vs a minimal raw feeder (same rendered ExaBGP config, same relay, `announce attributes
  ... nlri` ×100 per command, window 8: the best pattern measured, bench_window.py), for
  10,000 and 50,000 (1,000 and 5,000 with --small); the ratio driver/raw (goal ≤ 1.2);
- ExaBGP's RSS after each run, and this process's CPU time for each run (the driver's
  cost; the raw feeder's for comparison; both include the same RIB polling);
- the latency of one announce, `apply()` call → prefix in FRR's RIB, p50/p99 over 200
  tries (20 with --small), with the first size's table still announced; the same for one
  raw command written straight to the relay, which is the floor (FRR's own processing).

Method: same namespaces, same FRR, same run; each measurement starts from an empty
router with an established session (ExaBGP restarted between runs); each method runs
`--rounds` times per size in ABBA order (raw, driver, driver, raw) and the medians are
compared, so drift and warm-up hit both alike (the machine is shared: single runs varied
±40%). FRR runs without zebra (control plane only):
we measure BGP, not the kernel FIB. Run as root: `.venv/bin/python integration/bench/bench_driver.py [--small]`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig  # noqa: E402
from bgpspeaker.exabgp import commands  # noqa: E402
from bgpspeaker.exabgp.driver import ExabgpDriver  # noqa: E402
from bgpspeaker.exabgp.render import exabgp_environment, render_config  # noqa: E402
from bgpspeaker.metrics import Metrics  # noqa: E402
from bgpspeaker.model import Community, NodeView, RouteAttributes, RouteIntent, Tier  # noqa: E402
from integration.lab import netns  # noqa: E402
from integration.lab.frr import FrrConfig, FrrRouter, Neighbor  # noqa: E402

A = ipaddress.ip_address
EXABGP = str(Path(sys.executable).parent / "exabgp")
NODE_V4, TOR_V4 = "10.99.1.2", "10.99.1.1"
NODE = NodeView("bench-node", addresses=(("InternalIP", NODE_V4),))
CONFIG = Config(cluster=ClusterConfig("bench"), speaker=SpeakerConfig(my_asn=64512),
                peers=(PeerConfig("tor", A(TOR_V4), 64500, hold_time=30),), exabgp=ExabgpConfig(graceful_restart=0))
ATTRS = RouteAttributes(next_hop=A(NODE_V4), as_path=(64512,), med=100, communities=(Community(64512, 100),))
WINDOW, BATCH = 8, 100  # the best feeding measured here (bench_window.py), as the driver's defaults
# Pause between the steps of a latency try, the same for both methods. Measured: when the
# withdraw of the previous try follows its announce within ~2 ms, the next announce reaches
# FRR in ~2 ms; when it follows 8 ms or more later, the next one takes ~40 ms, through the
# raw channel alike. Unequal pacing made raw look 15x faster; an idle gap makes each try an
# isolated announce, as in production.
IDLE = 0.05


def prefixes(n: int, base: str = "198.18.0.0") -> list:
    start = int(A(base))
    return [ipaddress.ip_network(f"{A(start + i)}/32") for i in range(n)]


def rss_mib(pid) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


class Bench:
    def __init__(self, lab):
        self.tor, self.node = lab.netns("tor"), lab.netns("node")
        lab.veth(self.tor, "eth0", self.node, "eth0")
        netns.add_addr(self.tor, "eth0", f"{TOR_V4}/24")
        netns.add_addr(self.node, "eth0", f"{NODE_V4}/24")
        self.router = FrrRouter(self.tor, FrrConfig(asn=64500, router_id=TOR_V4, hold_time=30,
                                                    neighbors=(Neighbor(NODE_V4, 64512),)), lab=lab).start()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-exabgp-{os.getpid()}-"))
        lab.on_close(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.argv = [netns.IP, "netns", "exec", self.node, EXABGP]
        self.acked: list[float] = []  # apply() call -> returned (ExaBGP acked), latency tries

    def received(self) -> int:
        n = self.router.neighbors().get(NODE_V4)
        return n.pfx_rcd if n and n.established else -1

    async def until(self, condition, timeout=300.0, interval=0.02):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("bench: timed out")
            await asyncio.sleep(interval)

    # --- raw: the minimal best feeder ---------------------------------------------------

    async def raw(self, n: int, latency_tries: int = 0) -> tuple[float, float, float, list[float]]:
        sock = str(self.dir / "raw.sock")
        conf = self.dir / "raw.conf"
        conf.write_text(render_config(CONFIG, NODE, sock, mask_secrets=False))
        acks: asyncio.Queue = asyncio.Queue()
        conn: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_relay(reader, writer):
            conn.set_result(writer)
            while line := await reader.readline():  # drain always; count acks
                if line in (b"done\n", b"error\n"):
                    acks.put_nowait(line)
        if os.path.exists(sock):
            os.unlink(sock)
        server = await asyncio.start_unix_server(on_relay, path=sock, limit=1 << 24)
        env = dict(os.environ, **exabgp_environment())
        proc = await asyncio.create_subprocess_exec(*self.argv, str(conf), env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            writer = await asyncio.wait_for(conn, 30)
            await self.until(lambda: self.received() == 0)
            cpu0, t0 = time.process_time(), time.monotonic()
            nets = prefixes(n)
            outstanding = 0
            for i in range(0, n, BATCH):
                if outstanding >= WINDOW:
                    await acks.get()
                    outstanding -= 1
                line = commands.announce_line([A(TOR_V4)], ATTRS, nets[i:i + BATCH])
                writer.write(line.encode() + b"\n")
                outstanding += 1
                await writer.drain()
            await self.until(lambda: self.received() == n)
            elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
            rss = rss_mib(proc.pid)
            while outstanding:
                await acks.get()
                outstanding -= 1
            latencies = []
            for p in prefixes(latency_tries, "198.19.0.0"):
                t = time.monotonic()
                writer.write(commands.announce_line([A(TOR_V4)], ATTRS, [p]).encode() + b"\n")
                await self.until(lambda: self.received() == n + 1, interval=0.001)
                latencies.append(time.monotonic() - t)
                await asyncio.sleep(IDLE)
                writer.write(commands.withdraw_line([A(TOR_V4)], [p]).encode() + b"\n")
                await self.until(lambda: self.received() == n, interval=0.005)
                await asyncio.sleep(IDLE)
                await acks.get()
                await acks.get()
        finally:
            proc.kill()
            await proc.wait()
            if conn.done():
                conn.result().close()  # the reader sees EOF and ends before the loop does
            server.close()
            await asyncio.sleep(0.05)
        await self.until(lambda: self.received() <= 0)
        return elapsed, cpu, rss, latencies

    # --- the driver ------------------------------------------------------------------------

    async def driver(self, n: int, latency_tries: int = 0) -> tuple[float, float, float, list[float]]:
        d = ExabgpDriver(CONFIG, NODE, self.dir / "driver", Metrics(), window=WINDOW, batch_size=BATCH,
                         exabgp_argv=self.argv)
        await d.start()
        try:
            await self.until(lambda: self.received() == 0 and d.peer_states()["tor"].up)
            routes = [RouteIntent(p, "tor", ATTRS, Tier.PRIMARY, ("bench/svc",)) for p in prefixes(n)]
            cpu0, t0 = time.process_time(), time.monotonic()
            await d.apply(routes)
            await self.until(lambda: self.received() == n)
            elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
            rss = rss_mib(d.exabgp_pid)
            latencies = []
            for i, p in enumerate(prefixes(latency_tries, "198.19.0.0")):
                one = RouteIntent(p, "tor", ATTRS, Tier.PRIMARY, ("bench/one",))
                t = time.monotonic()
                await d.apply(routes + [one])
                self.acked.append(time.monotonic() - t)
                await self.until(lambda: self.received() == n + 1, interval=0.001)
                latencies.append(time.monotonic() - t)
                await asyncio.sleep(IDLE)
                await d.apply(routes)
                await self.until(lambda: self.received() == n, interval=0.005)
                await asyncio.sleep(IDLE)
        finally:
            await d.stop(withdraw=False)
        await self.until(lambda: self.received() <= 0)
        return elapsed, cpu, rss, latencies


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def main(small: bool, rounds: int) -> None:
    sizes = (1000, 5000) if small else (10_000, 50_000)
    tries = 20 if small else 200
    with netns.Lab(prefix="bgpb") as lab:
        bench = Bench(lab)
        print(f"bench_driver: FRR 8.4 (bgpd -Z) <- ExaBGP 5.0.15, window {WINDOW}, {BATCH} prefixes/command, "
              f"{rounds} round(s) per method in ABBA order, medians")
        for n in sizes:
            raw_runs, drv_runs = [], []
            for r in range(rounds):
                first_lat = tries if (n == sizes[0] and r == 0) else 0
                # ABBA: raw, driver, driver, raw, ... so drift and warm-up hit both alike
                order = ("raw", "driver") if r % 2 == 0 else ("driver", "raw")
                for method in order:
                    if method == "raw":
                        raw_runs.append(await bench.raw(n, first_lat))
                    else:
                        drv_runs.append(await bench.driver(n, first_lat))
            raw_t = statistics.median(x[0] for x in raw_runs)
            drv_t = statistics.median(x[0] for x in drv_runs)
            print(f"{n:>6} /32s to RIB: raw {raw_t:6.2f}s ({n / raw_t:6.0f}/s)  driver {drv_t:6.2f}s "
                  f"({n / drv_t:6.0f}/s)  ratio driver/raw {drv_t / raw_t:4.2f} (goal <= 1.2)  "
                  f"[raw {' '.join(f'{x[0]:.2f}' for x in raw_runs)} | driver {' '.join(f'{x[0]:.2f}' for x in drv_runs)}]")
            print(f"        ExaBGP RSS: raw {max(x[2] for x in raw_runs):5.0f} MiB  driver "
                  f"{max(x[2] for x in drv_runs):5.0f} MiB;  CPU of this process (median): raw feeder "
                  f"{statistics.median(x[1] for x in raw_runs):5.2f}s  driver {statistics.median(x[1] for x in drv_runs):5.2f}s")
            for what, values in (("driver apply()", [v for x in drv_runs for v in x[3]]),
                                 ("raw command", [v for x in raw_runs for v in x[3]])):
                if values:
                    ms = [x * 1000 for x in values]
                    print(f"        single announce, {what} -> FRR RIB ({len(ms)} tries, {n} routes up): "
                          f"p50 {pct(ms, 0.5):.1f} ms  p99 {pct(ms, 0.99):.1f} ms  max {max(ms):.1f} ms")
            if bench.acked:
                ms = [x * 1000 for x in bench.acked]
                print(f"        of which apply() until acked (diff of the full set + ExaBGP ack): "
                      f"p50 {pct(ms, 0.5):.1f} ms  p99 {pct(ms, 0.99):.1f} ms")
                bench.acked.clear()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke run: 1,000 and 5,000 routes, 20 latency tries")
    parser.add_argument("--rounds", type=int, default=2, help="runs per method and size (ABBA order); default 2")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_driver: needs root (network namespaces)")
    asyncio.run(main(args.small, max(1, args.rounds)))

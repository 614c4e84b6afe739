"""`python -m integration.demo` (what `make demo` runs): the multi-cluster failover, live.

Brings up the lab (a top-of-rack FRR router, clusters east (2 nodes), west and central
(1 node each), one emulated Kubernetes API per cluster, one `bgpspeaker run` per node,
a client), creates one LoadBalancer Service with `cluster-preference: east,west,central`
and walks through a failover and back, showing the router's table and real HTTP answers
from the client at each step. Everything is torn down at the end, also on failure or
Ctrl-C. Exit 0 on success; 1 with the reason (and the lab's logs) on failure.

Needs root (network namespaces) and the Debian packages frr and curl (`make setup`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from bgpspeaker.records import AddressRecord, block_name
from integration.lab.cluster_lab import MultiClusterLab
from integration.lab.wait import WaitTimeout, wait_until
from testkit.records import recorded

VIP = "203.0.113.5"
PREFERENCE = "east,west,central"


class Demo:
    def __init__(self, requests: int = 4):
        self.requests = requests
        self.step_no = 0
        self.lab: MultiClusterLab | None = None
        self.t0 = time.monotonic()
        self.failovers: list[tuple[str, float]] = []

    # ----- output

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say()
        self.say(f"── {self.step_no}. {title} " + "─" * max(0, 70 - len(title)))

    def indent(self, text: str, prefix: str = "   ") -> None:
        for line in text.splitlines():
            self.say(prefix + line)

    def show_table(self) -> None:
        self.say("   router (tor, FRR) — BGP table, * = best path:")
        self.indent(self.lab.table(), "     ")

    def show_fib(self) -> None:
        hops = self.lab.fib_next_hops(VIP)
        nodes = [self.lab.node_of_peer(h) or h for h in hops]
        self.say(f"   tor kernel FIB (zebra): {VIP}/32 via " + (", ".join(f"{h} ({n})" for h, n in zip(hops, nodes))
                                                          + (" — ECMP" if len(hops) > 1 else "") if hops else "nothing"))

    def show_curl(self) -> None:
        answers = [self.lab.curl_cli(VIP) for _ in range(self.requests)]
        self.say(f"   client$ curl http://{VIP}/   ×{self.requests} → " + ", ".join(answers))

    # ----- the walk-through

    def run(self) -> int:
        if os.geteuid() != 0:
            self.say("demo: needs root (it creates network namespaces and runs FRR); try: sudo make demo")
            return 1
        self.say("bgpspeaker demo: one VIP announced by three Kubernetes clusters as primary, secondary and")
        self.say("tertiary; the router sends the traffic to the best healthy cluster and fails over by itself.")
        try:
            self._walk()
        except (WaitTimeout, AssertionError, RuntimeError, OSError) as exc:
            self.say()
            self.say(f"DEMO FAILED at step {self.step_no}: {exc}")
            if self.lab is not None:
                self.say("---- what the lab looked like ----")
                self.indent(self.lab.diagnostics(lines=15))
            return 1
        finally:
            if self.lab is not None:
                self.say()
                self.say("── tearing down: stopping every process by PID, deleting every namespace")
                try:
                    self.lab.close()
                except Exception as exc:  # the result stands; say what was left
                    self.say(f"   cleanup problem: {exc}")
        self.say()
        self.say("demo OK: " + "; ".join(f"{what} in {ms * 1000:.0f} ms" for what, ms in self.failovers)
                 + f"; total {time.monotonic() - self.t0:.0f}s")
        return 0

    def _record(self) -> Optional[AddressRecord]:
        """The VIP's allocation record, as the shared store holds it (an entry of its block)."""
        return recorded(self.lab.store.snapshot().get("v1/ConfigMap") or []).get(VIP)

    def _walk(self) -> None:
        self.step("bring the lab up")
        self.indent("""\
  east-1    10.99.1.2 ─┐  cluster east    (AS 64512, emulated API #1)
  east-2    10.99.2.2 ─┤
  west-1    10.99.3.2 ─┼─ tor  FRR AS 64500, always-compare-med ── client 10.99.100.2
  central-1 10.99.4.2 ─┘  clusters west, central (AS 64512, APIs #2, #3)
  one more emulated API holds the record store that the three clusters share for pool 203.0.113.0/28""")
        self.lab = MultiClusterLab(shared_store=True, log=lambda s: self.say("   " + s))
        self.lab.start()
        for name in self.lab.speakers:
            self.say(f"   {name:<10} bgpspeaker run pid {self.lab.speakers[name].proc.pid}: ready, session to "
                     f"{self.lab.nodes[name].tor_address} established")

        self.step(f"create Service default/web (LoadBalancer {VIP}) in every cluster")
        self.say(f"   annotation bgpspeaker.io/cluster-preference: \"{PREFERENCE}\"  →  east primary (MED 100),")
        self.say("   west secondary (MED 200, AS-path +1), central tertiary (MED 300, AS-path +2)")
        self.lab.create_service("web", VIP, PREFERENCE)
        self.lab.wait_best_cluster(VIP, "east", timeout=20)
        wait_until(lambda: len(self.lab.paths(VIP)) == 4, 15, "a path from each of the 4 nodes")
        self.lab.wait_served_by(VIP, "east")
        if self.lab.allocator:
            wait_until(lambda: all(self.lab.service_ingress(c, "web") for c in self.lab.clusters), 15,
                       "every cluster's allocator to write the Service's status")
            self.say("   status.loadBalancer.ingress written by each cluster's allocator: "
                     + ", ".join(f"{c} {','.join(self.lab.service_ingress(c, 'web'))}" for c in self.lab.clusters))
            wait_until(lambda: getattr(self._record(), "clusters", None) == {"central", "east", "west"}, 15,
                       "the three clusters on the address's record")
            record = self._record()
            assert record is not None
            self.say(f"   allocation record in the shared store, block {block_name(record.address)}: "
                     f"{record.address} held by {record.holder}, used by {','.join(sorted(record.clusters))} "
                     f"(one address, one Service, in every cluster)")
        self.show_table()
        self.show_fib()
        self.show_curl()
        self.say("   east-1's own view (`bgpspeaker status`):")
        out = subprocess.run([sys.executable, "-m", "bgpspeaker", "status", "--socket",
                              os.path.join(self.lab.speakers["east-1"].dir, "run", "control.sock")],
                             capture_output=True, text=True, timeout=15)
        self.indent(out.stdout.strip() or out.stderr.strip(), "     ")

        self.failover("east's endpoints become not ready (EndpointSlice updated in east's API)",
                      "east", False, "west")
        self.failover("west's endpoints become not ready too", "west", False, "central")
        self.step("west and east are ready again")
        self.lab.set_cluster_ready("web", "west", True)
        self.lab.wait_best_cluster(VIP, "west")
        self.say(f"   west is ready: it serves again (secondary), answer {self.lab.wait_served_by(VIP, 'west')}")
        self.failover_only("east", True, "east", "east is ready: back to the primary")

    def failover(self, title: str, cluster: str, ready: bool, expect: str) -> None:
        self.step(title)
        self.failover_only(cluster, ready, expect)

    def failover_only(self, cluster: str, ready: bool, expect: str, title: str | None = None) -> None:
        if title:
            self.say(f"   {title}")
        with self.lab.probe(VIP) as probe:  # the client keeps sending requests every 20 ms
            t0 = self.lab.set_cluster_ready("web", cluster, ready)
            t1 = self.lab.wait_best_cluster(VIP, expect, timeout=15)
            probe.wait_cluster(expect)
        took = t1 - t0
        self.failovers.append((f"→{expect}", took))
        self.say(f"   router best path moved to {expect} {took * 1000:.0f} ms after the API write")
        failed = probe.failures()
        self.say(f"   client requests during the change: {len(probe.answers)}, failed: {len(failed)}, "
                 f"served by: {' → '.join(c or 'nobody' for c in probe.clusters())}")
        for answer in failed:
            self.say(f"     failed request at +{(answer.at - t0) * 1000:.0f} ms: {answer.error}")
        if failed and not probe.unexpected_failures([(t0, time.monotonic())]):
            self.say("     (a connection in flight when the route moved: its next packets reached a node that never "
                     "saw its SYN, which reset it; a retry is served)")
        self.show_table()
        self.show_fib()
        self.show_curl()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4, help="curl requests shown per step")
    args = ap.parse_args(argv)
    # SIGTERM like Ctrl-C: unwind through the finally that tears the lab down
    signal.signal(signal.SIGTERM, _interrupt)
    demo = Demo(args.requests)
    try:
        return demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted; the lab was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

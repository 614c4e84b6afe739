"""Benchmark (issue 14): a speaker's memory against hostile objects, beside the code before the trim.

10,000 LoadBalancer Services with their EndpointSlices (bench_kube's shapes, addresses
already in their status) plus 10,000 ClusterIP Services that each carry a 250 KB
annotation bgpspeaker never reads, and have an EndpointSlice it never needs. The speaker is `bgpspeaker run --dry-run
--no-allocator` (the whole daemon: informers, caches, allocator views, planner, ledger;
no ExaBGP child, whose memory is its own process's), run once with this checkout and
once with the package as it was at each `--baseline` (default: before views kept only
our annotations, and before LIST pages were parsed as they stream), each in a fresh
process against the same emulator (a third process, not counted). Printed, never
asserted: RSS once the first plan is made and VmHWM (the peak, which includes the LIST
pages being parsed). "first plan" is the daemon's own "initial plan" log line.

    .venv/bin/python integration/bench/bench_hostile.py            # 10,000 + 10,000 (goal: speaker RSS <= 150 MB)
    .venv/bin/python integration/bench/bench_hostile.py --small    # 300 + 300, a smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from integration.bench.bench_kube import make_objects  # noqa: E402

# Earlier versions run beside this checkout: (row label, git revision).
BASELINES = (("before the trim", "e231b9f~1"),  # before "views keep only the annotations we read"
             ("pages read whole", "44c89ff"))  # before LIST pages were parsed as they stream
ANNOTATION_BYTES = 250_000
GOAL_MB = 150


def hostile_services(n: int) -> list[dict]:
    blob = "x" * ANNOTATION_BYTES
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": f"internal-{i:05d}", "namespace": f"team-{i % 50}",
                          "annotations": {"example.com/notes": blob}},
             "spec": {"type": "ClusterIP", "clusterIP": f"10.97.{i // 250}.{i % 250}",
                      "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
            for i in range(n)]


def internal_slices(n: int) -> list[dict]:
    """One EndpointSlice per ClusterIP Service, as its controller makes them: the speaker
    never announces those Services, so it should not keep their slices either."""
    return [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"name": f"internal-{i:05d}-fghij", "namespace": f"team-{i % 50}",
                          "labels": {"kubernetes.io/service-name": f"internal-{i:05d}",
                                     "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
             "endpoints": [{"addresses": [f"10.{(i + k) % 250}.{100 + k}.{i % 250}"],
                            "nodeName": f"node-{(i + k) % 40}",
                            "conditions": {"ready": True, "serving": True, "terminating": False},
                            "targetRef": {"kind": "Pod", "namespace": f"team-{i % 50}", "name": f"internal-{i}-{k}"}}
                           for k in range(3)],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
            for i in range(n)]


CONFIG = """\
cluster: {name: east, defaultTier: primary}
speaker: {myASN: 64512}
peers:
  - {name: tor, address: 10.0.1.1, asn: 64500, sourceAddress: 10.0.0.2}
pools:
  - {name: public, addresses: [203.0.0.0/16]}
metrics: {address: "127.0.0.1:PORT"}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_kb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def package_at(rev: str, into: str) -> str:
    """The bgpspeaker package as it was at `rev`, unpacked under `into` (a PYTHONPATH entry)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", rev, "bgpspeaker"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def run_speaker(pythonpath: str, kubeconfig: str, workdir: str, expected: int) -> dict:
    config = os.path.join(workdir, "speaker.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.replace("PORT", str(free_port())))
    log_path = os.path.join(workdir, "speaker.log")
    env = dict(os.environ, PYTHONPATH=pythonpath)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bgpspeaker", "run", "--config", config, "--node-name",
                                 "node-0", "--kubeconfig", kubeconfig, "--dry-run", "--no-allocator",
                                 "--run-dir", os.path.join(workdir, "run"), "--log-level", "INFO"],
                                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started, deadline = time.monotonic(), time.monotonic() + 900
        while "initial plan" not in open(log_path, errors="replace").read():
            if proc.poll() is not None:
                raise SystemExit(f"speaker exited {proc.returncode}:\n{open(log_path).read()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("no first plan in 900 s")
            time.sleep(0.5)
        settled = time.monotonic() - started
        time.sleep(2.0)  # the first plan's leftovers freed
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        last = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        memory = status_kb(proc.pid)
        return {"rss": memory["VmRSS"], "hwm": memory["VmHWM"], "settled_s": settled, "cpu": last}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="300 + 300 objects: a smoke run")
    parser.add_argument("--baseline", action="append", metavar="REV",
                        help="a git revision to compare with (repeatable; default: "
                             + ", ".join(f"{rev} ({label})" for label, rev in BASELINES) + ")")
    parser.add_argument("--services", type=int, help="N of each kind (default 10,000, --small 300)")
    parser.add_argument("--only-this", action="store_true", help="skip the baseline run")
    args = parser.parse_args()
    n = args.services or (300 if args.small else 10_000)

    from integration.kubeapi import RemoteEmulator

    with tempfile.TemporaryDirectory(prefix=f"bench-hostile-{os.getpid()}-") as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        emulator = subprocess.Popen([sys.executable, "-m", "integration.kubeapi", "--port", "0",
                                     "--kubeconfig", kubeconfig], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            ready = emulator.stdout.readline().split()
            if not ready or ready[0] != "ready":
                raise SystemExit("the emulator did not start")
            remote = RemoteEmulator(ready[1])
            usual = make_objects(n, n)
            for i in range(0, len(usual), 2000):
                remote.load_objects(usual[i:i + 2000])
            hostile = hostile_services(n)
            for i in range(0, len(hostile), 50):
                remote.load_objects(hostile[i:i + 50])
            del hostile
            slices = internal_slices(n)
            for i in range(0, len(slices), 2000):
                remote.load_objects(slices[i:i + 2000])
            del slices
            print(f"{n:,} LoadBalancer Services (+ {n:,} EndpointSlices, 40 Nodes) and {n:,} ClusterIP Services "
                  f"with a {ANNOTATION_BYTES // 1000} KB annotation each (+ {n:,} EndpointSlices); "
                  f"`bgpspeaker run --dry-run "
                  f"--no-allocator`, each version in a fresh process\n")
            results = {}
            versions = []
            if not args.only_this:
                labels = dict((rev, label) for label, rev in BASELINES)
                for i, rev in enumerate(args.baseline or [rev for _, rev in BASELINES]):
                    base_dir = os.path.join(tmp, f"baseline-{i}")
                    os.makedirs(base_dir)
                    versions.append((f"before ({rev}) {labels.get(rev, '')}".strip(), package_at(rev, base_dir)))
            versions.append(("this checkout", REPO))
            for i, (name, path) in enumerate(versions):
                work = os.path.join(tmp, f"run-{i}")
                os.makedirs(work, exist_ok=True)
                results[name] = run_speaker(path, kubeconfig, work, n)
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)

    print(f"{'speaker':<40}{'RSS MB':>8}{'peak MB':>9}{'first plan s':>14}{'CPU s':>7}")
    for name, r in results.items():
        print(f"{name:<40}{r['rss']:>8.0f}{r['hwm']:>9.0f}{r['settled_s']:>14.1f}{r['cpu']:>7.1f}")
    if len(results) < 2:
        return 0
    *befores, now = results.values()
    for name, before in zip(results, befores):
        print(f"\nnow / {name}: RSS {now['rss'] / before['rss']:.2f}x, peak {now['hwm'] / before['hwm']:.2f}x, "
              f"first plan {now['settled_s'] / before['settled_s']:.2f}x", end="")
    print(f"\ngoal RSS <= {GOAL_MB} MB: {'met' if now['rss'] <= GOAL_MB else 'NOT met'} ({now['rss']:.0f} MB); "
          f"peak (VmHWM) {now['hwm']:.0f} MB: {'under' if now['hwm'] <= GOAL_MB else 'over'} {GOAL_MB} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

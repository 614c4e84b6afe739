"""Faults on the lab: each one injected into a running `bgpspeaker run` (one node, emulated
API, FRR), then the router's final RIB compared to the desired set — every prefix with
its attributes, nothing lost, nothing extra — and the time to recover recorded (printed
in pytest's terminal summary via cluster_lab.record_measurement, never asserted).

Recovery time = from the fault (or its end, for faults with a duration) to the first
moment the router's RIB equals the desired set again and the session is Established.
Faults that must not disturb the router at all (API outage, 410 storm, watch closes, a
garbage config) are checked with the router's own UPDATE counter for the speaker: no
UPDATE may arrive (docs/design.md invariant 2: "a resync that finds no change sends no BGP
update").
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from integration.lab import netns, nsforward
from integration.lab.cluster_lab import REPO, process_tree, record_measurement
from integration.lab.wait import wait_until
from integration.attack_lab import NODE, AttackLab, RibWatcher

pytestmark = pytest.mark.lab

SERVICES = {  # name -> requested address ("" = auto-assigned)
    "a": "203.0.113.1",
    "b": "203.0.113.2",
    "c": "",
}
RECOVERY: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    lab = AttackLab()
    try:
        lab.start()
        for name, ip in SERVICES.items():
            lab.service("default", name, {"bgpspeaker.io/load-balancer-ips": ip} if ip else None)
        yield lab
    finally:
        lab.close()
        if RECOVERY:
            print("\n[hardening] faults survived, time to recover: "
                  + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in RECOVERY.items()))


def desired(lab: AttackLab) -> dict:
    """{prefix: (nexthop, med, aspath, communities, stale)} the router must hold: the plan of the Services."""
    ips = {}
    for name, ip in SERVICES.items():
        ips[name] = ip or wait_until(lambda: lab.ingress_of("default", name), 20, f"default/{name} status")[0]
    node = lab.nodes[NODE]
    return {f"{ip}/32": (node.address, 100, (64512,), ("64512:100",), False) for ip in ips.values()}


def converged(lab: AttackLab, want: dict) -> bool:
    try:
        return lab.rib() == want and lab.router.established(lab.nodes[NODE].address)
    except Exception:
        return False


def wait_converged(lab: AttackLab, want: dict, timeout: float, what: str) -> float:
    try:
        return wait_until(lambda: converged(lab, want) and time.monotonic(), timeout, what, interval=0.005)
    except AssertionError:
        got = lab.rib()
        raise AssertionError(f"{what}: RIB extra {sorted(set(got) - set(want))}, missing "
                             f"{sorted(set(want) - set(got))}, wrong "
                             f"{[(p, got[p]) for p in set(got) & set(want) if got[p] != want[p]]}\n"
                             f"{lab.diagnostics()}") from None


@pytest.fixture
def steady(lab, request):
    """The lab with its speaker running and the RIB equal to the desired set before the fault."""
    sp = lab.speakers[NODE]
    if not sp.running:
        lab.start_speaker(NODE)
    if not lab.router.running:
        lab.router.start()
    want = desired(lab)
    wait_converged(lab, want, 30, "steady state before the fault")
    quiet(lab)
    yield lab, want
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(lab.diagnostics())


def record(name: str, seconds: float) -> None:
    RECOVERY[name] = seconds
    record_measurement(f"fault recovery: {name}", [seconds])
    print(f"[hardening] {name}: recovered in {seconds * 1000:.0f} ms")


def updates_received(lab: AttackLab) -> int:
    address = lab.nodes[NODE].address
    return lab.router.show_json(f"show bgp neighbors {address} json")[address]["messageStats"]["updatesRecv"]


def quiet(lab: AttackLab, for_seconds: float = 1.5, timeout: float = 30.0) -> int:
    """Wait until the router's UPDATE counter for the speaker has not moved for `for_seconds`
    (after a reconnect, ExaBGP's End-of-RIB and re-sends trail the RIB by a moment)."""
    state = {"value": updates_received(lab), "since": time.monotonic()}

    def still() -> bool:
        now = updates_received(lab)
        if now != state["value"]:
            state["value"], state["since"] = now, time.monotonic()
        return time.monotonic() - state["since"] >= for_seconds

    wait_until(still, timeout, f"no UPDATE to the router for {for_seconds} s", interval=0.05)
    return state["value"]



def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def relay_pid(lab: AttackLab):
    sp = lab.speakers[NODE]
    for pid in process_tree(sp.proc.pid):
        if "bgpspeaker.exabgp.relay" in cmdline(pid):
            return pid
    return None


def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            pass
    return total


# --------------------------------------------------------------------------- ExaBGP and relay deaths


def test_exabgp_sigkill(steady):
    lab, want = steady
    old = lab.exabgp_pid(NODE)
    assert old
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: lab.exabgp_pid(NODE) not in (None, old), 20, "a new ExaBGP")
    record("ExaBGP SIGKILL", wait_converged(lab, want, 30, "RIB after ExaBGP SIGKILL") - t0)
    assert (lab.metric(NODE, "bgpspeaker_exabgp_restarts_total") or 0) >= 1


def test_relay_killed_past_the_respawn_limit(steady):
    """ExaBGP respawns a dead relay 5 times per 64 s, then exits rc=1 (docs/reference/exabgp-api.md §8): the
    speaker must notice and start a new ExaBGP, which replays everything."""
    lab, want = steady
    exabgp = lab.exabgp_pid(NODE)
    restarts = lab.metric(NODE, "bgpspeaker_exabgp_restarts_total") or 0
    killed, last = 0, None
    t0 = time.monotonic()
    # 6 deaths in one 64 s wall-clock-aligned window end ExaBGP; a window boundary in the middle
    # resets its count, so up to 12 kills may be needed
    while killed < 12 and lab.exabgp_pid(NODE) == exabgp:
        pid = wait_until(lambda: (lambda p: p if p and p != last else None)(relay_pid(lab)), 15,
                         f"relay #{killed + 1}")
        if lab.exabgp_pid(NODE) != exabgp:
            break
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        killed, last = killed + 1, pid
    assert killed >= 6, f"ExaBGP replaced after only {killed} relay deaths"
    wait_until(lambda: lab.exabgp_pid(NODE) not in (None, exabgp), 30, "a new ExaBGP after the respawn limit")
    done = wait_converged(lab, want, 30, "RIB after the relay deaths")
    record(f"relay killed {killed}x (past ExaBGP's respawn limit), from the last kill", done - t_kill)
    print(f"[hardening] relay kills: {killed}, whole episode {done - t0:.1f}s")
    assert (lab.metric(NODE, "bgpspeaker_exabgp_restarts_total") or 0) >= restarts + 1


# --------------------------------------------------------------------------- the router


def test_frr_restarted(steady):
    lab, want = steady
    t0 = time.monotonic()
    lab.router.restart()
    record("FRR restarted", wait_converged(lab, want, 60, "RIB after FRR restart") - t0)


# --------------------------------------------------------------------------- the Kubernetes API


def _api_fault_keeps_the_router_quiet(lab, want, inject, name, change_during=False):
    """Run `inject()`; the router's RIB must never lose a route and receive no UPDATE; then a
    real change must still get through (the watch really is back)."""
    before = updates_received(lab)
    with RibWatcher(lab, interval=0.01) as watcher:
        t_end = inject()
        # the watch is back: a real change goes through (and is the only UPDATE the router gets)
        lab.service("default", "probe", {"bgpspeaker.io/load-balancer-ips": "203.0.113.9"})
        want2 = dict(want)
        want2["203.0.113.9/32"] = next(iter(want.values()))
        done = wait_converged(lab, want2, 60, f"a change after: {name}")
        lost = [p for p in want if p not in watcher.seen]
    assert not lost, lost
    # nothing was withdrawn at any sample while the API was away
    assert watcher.samples > 10
    lab.remove_service("default", "probe")
    wait_converged(lab, want, 30, "back to the desired set")
    after = updates_received(lab)
    # two UPDATEs: the probe's announce and its withdraw; nothing for the fault itself
    assert after - before <= 2, f"{after - before} UPDATEs for a fault that changed nothing"
    record(name, done - t_end)


def _outage(lab, seconds):
    before = updates_received(lab)
    lab.outage("east", seconds)
    t_start = time.monotonic()
    want = lab.rib()
    # during the outage: the routes stay (sampled until the API is back)
    while time.monotonic() < t_start + seconds:
        assert lab.rib() == want, "a route changed while the API was away"
        assert updates_received(lab) == before, "an UPDATE was sent while the API was away"
        time.sleep(0.05)
    return time.monotonic()


def test_api_outage_short(steady):
    """8 s here; the 60 s outage is integration/test_e2e_failover.py's, checked at every layer."""
    lab, want = steady
    _api_fault_keeps_the_router_quiet(lab, want, lambda: _outage(lab, 8), "API outage 8 s (end of outage → change seen)")
    assert (lab.metric(NODE, "bgpspeaker_kube_watch_restarts_total") or 0) >= 1


def test_410_gone_storm(steady):
    lab, want = steady

    def storm():
        for _ in range(10):  # every resume from a compacted history gets 410 Gone and must relist
            lab.emu.compact()
            lab.emu.close_watches()
            time.sleep(0.2)  # the storm's own pace
        return time.monotonic()
    _api_fault_keeps_the_router_quiet(lab, want, storm, "410 Gone storm x10 (last compaction → change seen)")


def test_watch_closed_every_second_for_10s(steady):
    lab, want = steady

    def closes():
        for _ in range(10):
            lab.emu.close_watches()
            time.sleep(1.0)  # the fault's own schedule: a watch cut every second
        return time.monotonic()
    _api_fault_keeps_the_router_quiet(lab, want, closes, "watch closed every 1 s for 10 s (last close → change seen)")


def test_api_errors_500_and_429_on_relist(steady):
    """Every watch cut, and the next 30 requests answered 500 / 429 (Retry-After): the
    informers back off and relist; nothing is withdrawn, no UPDATE, then changes flow again."""
    lab, want = steady

    def errors():
        start = len(lab.emu.requests)
        lab.emu.fail_next("GET", "*", 500, n=15)
        lab.emu.fail_next("GET", "*", 429, n=15, retry_after=1)
        lab.emu.close_watches()
        # 30 GETs answered with an error, then at least one served again
        wait_until(lambda: sum(r["method"] == "GET" for r in list(lab.emu.requests)[start:]) > 30, 60,
                   "the 30 injected errors to be used up")
        return time.monotonic()
    _api_fault_keeps_the_router_quiet(lab, want, errors, "API 500/429 x30 on relist (last error → change seen)")


# --------------------------------------------------------------------------- the speaker itself


def test_speaker_sigkill_whole_group(steady):
    """The host/pod dies: the speaker and its ExaBGP are SIGKILLed together; restarted, it replays."""
    lab, want = steady
    lab.stop_speaker(NODE, signal.SIGKILL)
    wait_until(lambda: not lab.router.established(lab.nodes[NODE].address), 15, "session down")
    t0 = time.monotonic()
    lab.start_speaker(NODE)
    record("speaker SIGKILL (restart → RIB back)", wait_converged(lab, want, 60, "RIB after speaker restart") - t0)


def test_speaker_sigkill_daemon_only_leaves_no_orphan(steady):
    """Only the daemon dies: its ExaBGP must not linger announcing stale state forever
    (the relay cannot reconnect, ExaBGP gives up after its respawn limit)."""
    lab, want = steady
    sp = lab.speakers[NODE]
    exabgp = lab.exabgp_pid(NODE)
    os.kill(sp.proc.pid, signal.SIGKILL)
    sp.proc.wait(10)
    t0 = time.monotonic()
    gone = wait_until(lambda: not os.path.exists(f"/proc/{exabgp}") and time.monotonic(), 60,
                      "the orphaned ExaBGP to exit")
    print(f"[hardening] orphaned ExaBGP exited {gone - t0:.1f}s after its daemon was SIGKILLed")
    netns.stop(sp.proc)
    t1 = time.monotonic()
    lab.start_speaker(NODE)
    record("speaker SIGKILL daemon only (restart → RIB back)", wait_converged(lab, want, 60, "RIB after restart") - t1)


def test_speaker_sigterm_withdraws_then_restart(steady):
    lab, want = steady
    rc = lab.stop_speaker(NODE, signal.SIGTERM)
    assert rc == 0, lab.speakers[NODE].log_tail()
    # shutdown: withdraw — the router holds nothing from us (not even stale)
    assert lab.rib() == {}, lab.rib()
    t0 = time.monotonic()
    lab.start_speaker(NODE)
    record("speaker SIGTERM (restart → RIB back)", wait_converged(lab, want, 60, "RIB after SIGTERM restart") - t0)


def test_config_replaced_with_garbage_keeps_the_old_config(steady):
    lab, want = steady
    sp = lab.speakers[NODE]
    good = open(sp.config_path).read()
    invalid = lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "invalid"}) or 0
    exabgp = lab.exabgp_pid(NODE)
    before = updates_received(lab)
    try:
        for garbage in (b"\xff\xfe not UTF-8 {{{", b"peers: 17\n", b"{{{ [", b""):
            with open(sp.config_path + ".tmp", "wb") as f:
                f.write(garbage)
            os.replace(sp.config_path + ".tmp", sp.config_path)
            invalid += 1
            wait_until(lambda: (lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "invalid"}) or 0)
                       >= invalid, 15, f"reload #{invalid} refused")
        assert lab.rib() == want
        assert lab.exabgp_pid(NODE) == exabgp, "ExaBGP was restarted for a refused config"
        assert updates_received(lab) == before
        assert lab.ready(NODE)
        assert "config reload refused" in sp.log_tail(200)
    finally:
        with open(sp.config_path + ".tmp", "w") as f:
            f.write(good)
        os.replace(sp.config_path + ".tmp", sp.config_path)
    # and the old config still drives changes
    lab.service("default", "probe", {"bgpspeaker.io/load-balancer-ips": "203.0.113.9"})
    want2 = dict(want)
    want2["203.0.113.9/32"] = next(iter(want.values()))
    wait_converged(lab, want2, 30, "a change after the garbage")
    lab.remove_service("default", "probe")
    wait_converged(lab, want, 30, "back")


# --------------------------------------------------------------------------- start-up refusals


def _run_with_run_dir(lab, run_dir: str, prepare: str = "") -> subprocess.CompletedProcess:
    """`bgpspeaker run` in a private mount namespace (mounts vanish with it) with `run_dir`."""
    sp = lab.speakers[NODE]
    script = f"set -e; {prepare}\nexec {sys.executable} -m bgpspeaker run --config {sp.config_path} " \
             f"--node-name {NODE} --kubeconfig {sp.kubeconfig} --run-dir {run_dir}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.parametrize("kind", ["read-only", "full", "not-a-directory"])
def test_unwritable_run_directory_at_start(lab, kind):
    with tempfile.TemporaryDirectory(prefix=f"faults-{os.getpid()}-") as tmp:
        run_dir = os.path.join(tmp, "run")
        os.makedirs(run_dir)
        if kind == "read-only":
            prepare, expect = f"mount -t tmpfs -o ro,size=64k tmpfs {run_dir}", "Read-only file system"
        elif kind == "full":  # every inode taken: nothing can be created
            prepare = (f"mount -t tmpfs -o size=64k,nr_inodes=3 tmpfs {run_dir}; "
                       f"touch {run_dir}/a {run_dir}/b 2>/dev/null || true")
            expect = "No space left on device"
        else:
            open(os.path.join(tmp, "file"), "w").close()
            run_dir, prepare, expect = os.path.join(tmp, "file", "run"), "", "Not a directory"
        run = _run_with_run_dir(lab, run_dir, prepare)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "run directory is not writable" in out and expect in out, out
    assert "Traceback" not in out, out


def test_config_with_a_control_character_is_refused_and_reloads_continue(steady):
    lab, want = steady
    sp = lab.speakers[NODE]
    good = open(sp.config_path).read()
    invalid = lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "invalid"}) or 0
    try:
        with open(sp.config_path + ".tmp", "wb") as f:
            f.write(b"\x07" + good.encode())
        os.replace(sp.config_path + ".tmp", sp.config_path)
        wait_until(lambda: (lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "invalid"}) or 0)
                   > invalid, 10, "the reload refused and counted")
    finally:
        with open(sp.config_path + ".tmp", "w") as f:
            f.write(good)
        os.replace(sp.config_path + ".tmp", sp.config_path)
        lab.stop_speaker(NODE)  # its config watcher may be dead: start afresh for the tests after this one
        lab.start_speaker(NODE)
        wait_converged(lab, want, 60, "RIB after restarting the speaker")


# --------------------------------------------------------------------------- a peer that resets on every UPDATE


def _bgp_message(kind: int, body: bytes = b"") -> bytes:
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), kind) + body


class ResettingPeer:
    """A tiny BGP speaker (AS 64500) that establishes a session and sends NOTIFICATION Cease
    (6/4, administrative reset) on every UPDATE it receives, then closes. Counts sessions."""

    def __init__(self, ns: str, address: str, asn: int = 64500):
        self.ns, self.address, self.asn = ns, address, asn
        self.connections: list[float] = []
        self.updates = 0
        self._stop = threading.Event()

        def listen():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, 179))
            s.listen(16)
            s.settimeout(0.2)
            return s
        self.sock = nsforward.in_netns(ns, listen)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="resetting-peer")
        self.thread.start()

    def _open(self) -> bytes:
        caps = bytes([1, 4, 0, 1, 0, 1]) + bytes([65, 4]) + struct.pack("!I", self.asn)  # MP ipv4/unicast, AS4
        params = bytes([2, len(caps)]) + caps
        return _bgp_message(1, struct.pack("!BHH4sB", 4, self.asn, 9, socket.inet_aton(self.address), len(params))
                            + params)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections.append(time.monotonic())
            conn.settimeout(5)
            try:
                self._session(conn)
            except OSError:
                pass
            finally:
                try:
                    conn.close()
                except OSError:
                    pass

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        while not self._stop.is_set():
            while len(buf) < 19:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            length, kind = struct.unpack("!HB", buf[16:19])
            while len(buf) < length:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            buf = buf[length:]
            if kind == 1:  # OPEN
                conn.sendall(self._open() + _bgp_message(4))
            elif kind == 4:  # KEEPALIVE
                conn.sendall(_bgp_message(4))
            elif kind == 2:  # UPDATE: reset
                self.updates += 1
                conn.sendall(_bgp_message(3, bytes([6, 4])))
                conn.shutdown(socket.SHUT_RDWR)
                return
            else:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)


RESETTING: dict = {}


def _resetting_peer_experiment(lab, want) -> dict:
    """Replace FRR by a peer that resets on every UPDATE for 15 s; measure sessions, CPU, log lines."""
    if RESETTING:
        return RESETTING
    sp = lab.speakers[NODE]
    log_offset = os.path.getsize(sp.log_path)
    lab.router.stop()
    peer = ResettingPeer(lab.tor, lab.nodes[NODE].tor_address)
    try:
        wait_until(lambda: peer.updates >= 1, 30, "the first UPDATE (and reset)")
        pids = process_tree(sp.proc.pid)
        cpu0, t0, n0, u0 = cpu_seconds(pids), time.monotonic(), len(peer.connections), peer.updates
        wait_until(lambda: time.monotonic() - t0 >= 15, 20, "15 s of a resetting peer")  # the observation window
        pids = process_tree(sp.proc.pid)
        seconds = time.monotonic() - t0
        RESETTING.update(cpu=(cpu_seconds(pids) - cpu0) / seconds, sessions=len(peer.connections) - n0,
                         updates=peer.updates - u0, seconds=seconds)
    finally:
        peer.close()
        lab.router.start()
    log = open(sp.log_path, errors="replace").read()[log_offset:]
    RESETTING["down_lines"] = [line for line in log.splitlines() if "down" in line and "tor" in line]
    t1 = time.monotonic()
    RESETTING["recovered"] = wait_converged(lab, want, 90, "RIB after the resetting peer was replaced by FRR") - t1
    return RESETTING


def test_peer_resetting_on_every_update_low_cpu_clear_log_line(steady, capsys):
    lab, want = steady
    r = _resetting_peer_experiment(lab, want)
    with capsys.disabled():
        print(f"\n[hardening] resetting peer: {r['sessions']} sessions and {r['updates']} UPDATEs in "
              f"{r['seconds']:.0f} s, speaker+ExaBGP CPU {r['cpu'] * 100:.1f}% of a core, {len(r['down_lines'])} "
              f"'down' log lines, e.g. {r['down_lines'][:1]}")
    record("resetting peer replaced by FRR again", r["recovered"])
    assert r["cpu"] < 0.25, f"busy loop: {r['cpu'] * 100:.0f}% of a core"
    assert r["down_lines"] and any("notification" in line.lower() for line in r["down_lines"]), r["down_lines"][-3:]


def test_peer_resetting_on_every_update_retry_is_bounded(steady):
    lab, want = steady
    r = _resetting_peer_experiment(lab, want)
    assert r["sessions"] <= 20, f"{r['sessions']} sessions in {r['seconds']:.0f} s: retry is not bounded"
    assert len(r["down_lines"]) <= 20, f"{len(r['down_lines'])} log lines in {r['seconds']:.0f} s"

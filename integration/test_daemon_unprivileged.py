"""`bgpspeaker run` as the shipped container runs it: uid/gid 65532, no capabilities at all.

Two findings of issue 14, proven against a real FRR:
- TCP MD5 needs no privilege: the daemon and its ExaBGP, as uid 65532 with an empty
  capability set (not even in the bounding set), bring up an MD5 session to FRR.
- A rotated password file (a Kubernetes Secret update: same path, new content, no config
  change) is picked up without a restart: only that peer's session re-opens with the new
  password; the other peer's session stays up (FRR's own count of established sessions
  for it does not move, and it receives no UPDATE) and ExaBGP keeps its pid.

    node 10.99.1.2 (tor-a, MD5)  10.99.1.3 (tor-b)   bgpspeaker run as 65532
      | veth
    tor  10.99.1.1 (tor-a)       10.99.1.11 (tor-b)  FRR bgpd
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from integration.kubeapi import run_emulator
from integration.lab import netns
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.frr import FrrConfig, FrrRouter, Neighbor
from integration.lab.nsforward import Forwarder
from integration.lab.wait import wait_until
from integration.test_daemon import PREFIX, Speaker, service_objects, speaker_config
from integration.test_hitless import session

pytestmark = pytest.mark.lab

REPO = str(Path(__file__).resolve().parent.parent)
UID = 65532  # the image's user `bgpspeaker` (Containerfile), the manifests' runAsUser
NODE_A, NODE_B, TOR_A, TOR_B = "10.99.1.2", "10.99.1.3", "10.99.1.1", "10.99.1.11"
UNPRIVILEGED = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def objects() -> list[dict]:
    node, service, endpoints = service_objects()
    node["status"]["addresses"] = [{"type": "InternalIP", "address": NODE_A}]
    return [node, service, endpoints]


def config(secret: Path) -> dict:
    doc = speaker_config()
    doc["peers"] = [
        {"name": "tor-a", "address": TOR_A, "asn": 64500, "holdTime": 9, "sourceAddress": NODE_A,
         "passwordFile": str(secret)},
        {"name": "tor-b", "address": TOR_B, "asn": 64500, "holdTime": 9, "sourceAddress": NODE_B},
    ]
    return doc


def reachable_by_others(path: str) -> bool:
    """Every directory on the way is searchable by others (a pyenv under /root is not)."""
    parts = Path(os.path.realpath(path)).parents
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)


def searchable_by_others(path: Path, lab) -> None:
    """Let others traverse every directory on the way to `path` (its search bit only), for
    the test's duration: a checkout in a 0700 directory (ci-fresh's mktemp, some CI
    workspaces) would otherwise hide the package from uid 65532 ("No module named bgpspeaker")."""
    for parent in [Path(os.path.realpath(path)), *Path(os.path.realpath(path)).parents]:
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
            lab.on_close(lambda p=parent, m=stat.S_IMODE(mode): os.chmod(p, m))


def unprivileged_python(work: Path) -> tuple[str, dict, Path]:
    """(python, environment, exabgp) that uid 65532 can execute: this interpreter if it can
    reach it, else the system's python of the same version with this venv's packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    exabgp_script = Path(sys.executable).parent / "exabgp"
    python = os.path.realpath(sys.executable)
    if not reachable_by_others(python):
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{site}"}
    wrapper = work / "exabgp"
    wrapper.write_text(f"#!/bin/sh\nexec {python} {exabgp_script} \"$@\"\n")
    wrapper.chmod(0o755)
    return python, env, wrapper


def private_to(path: Path, mode: int) -> None:
    os.chown(path, UID, UID)
    os.chmod(path, mode)


def test_md5_as_uid_65532_without_capabilities_and_a_rotated_password_leaves_the_other_session(lab):
    tor, node = lab.netns("tor"), lab.netns("node")
    lab.veth(tor, "eth0", node, "eth0")
    for ns, addresses in ((tor, (TOR_A, TOR_B)), (node, (NODE_A, NODE_B))):
        for address in addresses:
            netns.add_addr(ns, "eth0", f"{address}/24")
    router = FrrRouter(tor, FrrConfig(asn=64500, router_id=TOR_A, hold_time=9, neighbors=(
        Neighbor(NODE_A, 64512, password="lab-one"), Neighbor(NODE_B, 64512))), lab=lab).start()
    # A directory the unprivileged user can reach (pytest's tmp_path is root-only).
    work = Path(tempfile.mkdtemp(prefix="bgpl-unpriv-"))
    lab.on_close(lambda: shutil.rmtree(work, ignore_errors=True))
    os.chmod(work, 0o755)
    (work / "run").mkdir()
    private_to(work / "run", 0o700)
    secret = work / "tor-a.password"
    secret.write_text("lab-one\n")
    private_to(secret, 0o400)

    with run_emulator() as emu:
        emu.load_objects(objects())
        api_forward = Forwarder(node, ("127.0.0.1", 6443), None, ("127.0.0.1", emu.port), name="kubeapi").start()
        lab.on_close(api_forward.close)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(Path(emu.kubeconfig).read_text().replace(emu.url, "http://127.0.0.1:6443"))
        private_to(kubeconfig, 0o400)
        speaker = Speaker(lab, node, work, str(kubeconfig), config(secret))
        private_to(speaker.config_path, 0o400)
        python, env, exabgp_wrapper = unprivileged_python(work)
        for tree in env["PYTHONPATH"].split(os.pathsep):
            searchable_by_others(Path(tree), lab)
        speaker.start(prefix=UNPRIVILEGED, python=python, env={**env, "BGPSPEAKER_EXABGP": str(exabgp_wrapper)})

        def log() -> str:
            return speaker.log()[-4000:]
        try:
            wait_until(lambda: router.established(NODE_A, NODE_B), 30, "both sessions, tor-a with MD5")
            wait_until(lambda: router.best_path(PREFIX), 20, f"{PREFIX} at the router")
        except AssertionError:
            raise AssertionError("no session; speaker log:\n" + log()) from None
        # It really is unprivileged, and so is its ExaBGP.
        exabgp = speaker_exabgp_pid(speaker.proc.pid)
        for pid in (speaker.proc.pid, exabgp):
            status = Path(f"/proc/{pid}/status").read_text()
            assert status.split("Uid:")[1].split()[:2] == [str(UID), str(UID)], status
            caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
            assert {caps[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} == {"0" * 16}, caps
        # MD5 is really on the session's socket.
        assert "md5" in netns.run(node, ["ss", "-tnie", "state", "established", "dst", TOR_A]).stdout.lower()
        conf = speaker.workdir / "run" / "exabgp.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and conf.stat().st_uid == UID

        # Rotate: the router first (tor-a's session drops), then the Secret's file, as kubelet does.
        b_before = session(router, NODE_B)
        a_before = session(router, NODE_A)[0]
        router.configure(["router bgp 64500", f" neighbor {NODE_A} password lab-two"])
        rotated = work / "tor-a.password.new"
        rotated.write_text("lab-two\n")
        private_to(rotated, 0o400)
        os.replace(rotated, secret)
        try:
            wait_until(lambda: router.established(NODE_A) and session(router, NODE_A)[0] > a_before, 40,
                       "tor-a back with the new password")
        except AssertionError:
            raise AssertionError("tor-a not back; speaker log:\n" + log()) from None
        b_after = session(router, NODE_B)
        assert b_after[0] == b_before[0], "tor-b's session was re-established: the rotation touched it"
        assert router.established(NODE_B)
        assert b_after[1] == b_before[1], "tor-b received an UPDATE (a withdraw or a replay)"
        assert speaker_exabgp_pid(speaker.proc.pid) == exabgp, "ExaBGP was restarted"
        assert "password file changed" in speaker.log()
        assert "lab-one" not in speaker.log() and "lab-two" not in speaker.log()


def speaker_exabgp_pid(daemon_pid: int) -> int:
    """The daemon's ExaBGP child (found by parentage, never by name)."""
    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
    found = wait_until(lambda: [c for c in children(daemon_pid)
                                if b"exabgp" in Path(f"/proc/{c}/cmdline").read_bytes()], 10, "ExaBGP child")
    return found[0]

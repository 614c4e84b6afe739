"""Secrets at run time (docs/design.md invariant 5): a real `bgpspeaker run` whose peer has a TCP MD5
password from a passwordFile brings the session up with FRR (MD5 really on the socket),
and the password appears nowhere a human or a scraper can read: the daemon's log (after
start, routes, drain, reloads good and bad, an ExaBGP restart), /status, /metrics, /readyz,
the Events and every other object in the API, `render-exabgp` and `check-config` output,
and the command lines of every process it started. Its ExaBGP config on disk is 0600.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

from integration.lab import netns
from integration.lab.cluster_lab import REPO, process_tree
from integration.lab.wait import wait_until
from integration.attack_lab import NODE, AttackLab, wait_rib

pytestmark = pytest.mark.lab

SECRET = f"Md5-{uuid.uuid4().hex[:20]}"


def _leaks(text: str) -> list[str]:
    return sorted({SECRET[i:i + 8] for i in range(len(SECRET) - 7) if SECRET[i:i + 8] in text})



def test_md5_session_up_and_password_never_shown(capsys):
    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    lab = AttackLab(password=SECRET)
    try:
        lab.start()  # waits for the BGP session: with MD5 on both sides, it comes up
        sp = lab.speakers[NODE]
        node = lab.nodes[NODE]
        assert lab.router.established(node.address)
        # MD5 is really on the TCP socket (not a session that ignores the password)
        ss = netns.run(sp.ns, ["ss", "-tnie", "state", "established"]).stdout
        assert "md5" in ss.lower(), ss
        # exercise the paths that log: a Service, drain/undrain, a good and a bad reload, an ExaBGP restart
        lab.service("default", "web")
        ip = wait_until(lambda: lab.ingress_of("default", "web"), 20, "an address")[0]
        wait_rib(lab, {f"{ip}/32"})
        lab.drain(NODE)
        lab.undrain(NODE)
        good = open(sp.config_path).read()
        with open(sp.config_path, "w") as f:
            f.write(good.replace("holdTime: 3", "holdTime: 4"))
        wait_until(lambda: (lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "ok"}) or 0) >= 1, 15,
                   "a good reload")
        with open(sp.config_path, "w") as f:
            f.write(good + "\npeers: [{{{ nonsense\n")
        wait_until(lambda: (lab.metric(NODE, "bgpspeaker_config_reloads_total", {"result": "invalid"}) or 0) >= 1,
                   15, "a refused reload")
        with open(sp.config_path, "w") as f:
            f.write(good)
        exa = wait_until(lambda: lab.exabgp_pid(NODE), 10, "ExaBGP pid")
        os.kill(exa, signal.SIGKILL)
        wait_until(lambda: lab.exabgp_pid(NODE) not in (None, exa) and lab.router.established(node.address), 30,
                   "ExaBGP restarted and the MD5 session back")
        wait_rib(lab, {f"{ip}/32"})

        places: dict[str, str] = {}
        places["daemon log"] = open(sp.log_path, errors="replace").read()
        for path in ("/metrics", "/readyz", "/healthz"):
            places[path] = lab._http(NODE, path)[1].decode(errors="replace")
        places["/status"] = lab._control(NODE, "/status")[1].decode(errors="replace")
        places["API objects (Events, Services, Leases...)"] = json.dumps(lab.emu.snapshot())
        objects = os.path.join(lab.dir, "objects.yaml")
        with open(objects, "w") as f:
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
                o for o in lab.emu.snapshot().get("v1/Node", [])]}, f)
        env = dict(os.environ, PYTHONPATH=REPO)
        for name, argv in (("render-exabgp", ["render-exabgp", "--config", sp.config_path, "--node-name", NODE,
                                              "--objects", objects]),
                           ("check-config", ["check-config", sp.config_path])):
            run = subprocess.run([sys.executable, "-m", "bgpspeaker", *argv], capture_output=True, text=True,
                                 env=env, cwd=REPO, timeout=60)
            assert run.returncode == 0, run.stdout + run.stderr
            places[name] = run.stdout + run.stderr
        assert 'md5-password "********"' in places["render-exabgp"]
        for pid in process_tree(sp.proc.pid):
            try:
                places[f"cmdline of pid {pid}"] = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                pass
        leaks = {where: _leaks(text) for where, text in places.items() if _leaks(text)}
        assert not leaks, f"the MD5 password leaks into: {leaks}"
        # the one place it must be: ExaBGP's config, readable by root only
        confs = glob.glob(os.path.join(sp.dir, "run", "**", "*.conf"), recursive=True)
        assert confs, os.listdir(os.path.join(sp.dir, "run"))
        for conf in confs:
            assert oct(os.stat(conf).st_mode & 0o777) == "0o600", conf
            assert SECRET in open(conf).read()
        with capsys.disabled():
            print(f"\n[hardening] MD5 session up; password absent from {len(places)} places: "
                  f"{', '.join(sorted(k for k in places if not k.startswith('cmdline')))} and "
                  f"{sum(k.startswith('cmdline') for k in places)} process command lines")
    finally:
        lab.close()

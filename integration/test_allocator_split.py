"""`bgpspeaker allocator` beside `run --no-allocator` speakers: MetalLB's controller/speaker split.

The allocator runs alone (its own identity: the pod's name, its own token), the speaker
runs announce-only with another token. Judged from the API's own request log (who wrote
what) and the router: the Service is allocated and announced, the speaker only reads
Services, EndpointSlices, Nodes and records (its Events aside), and the allocator holds
the Lease under the pod's name, writes status and the records, and never talks BGP.
"""

from __future__ import annotations

import os
import sys

import pytest
import yaml

from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.wait import wait_until
from integration.test_daemon import PREFIX, VIP, Speaker, speaker_config, world  # noqa: F401  (fixture)
from testkit.records import recorded

pytestmark = pytest.mark.lab

POD = "bgpspeaker-allocator-7d9f-x2k4q"


def _with_token(kubeconfig, token: str, path) -> str:
    doc = yaml.safe_load(open(kubeconfig))
    for user in doc["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_allocator_and_announce_only_speaker_each_do_only_their_part(lab, world, tmp_path):  # noqa: F811
    router, emu, node, kubeconfig = world
    speaker_kc = _with_token(kubeconfig, "speaker-token", tmp_path / "speaker.kubeconfig")
    allocator_kc = _with_token(kubeconfig, "allocator-token", tmp_path / "allocator.kubeconfig")
    speaker = Speaker(lab, node, tmp_path, speaker_kc, speaker_config())
    speaker.proc = lab.popen(node, [sys.executable, "-m", "bgpspeaker", "run", "--config", str(speaker.config_path),
                                    "--node-name", "node-a", "--kubeconfig", speaker_kc, "--no-allocator",
                                    "--run-dir", str(tmp_path / "run")],
                             stdout=open(speaker.log_path, "ab"), stderr=__import__("subprocess").STDOUT)
    # Without an allocator nothing is allocated: a records cluster announces only recorded addresses.
    alloc_dir = tmp_path / "allocator"
    alloc_dir.mkdir()
    config = speaker_config()
    config["metrics"] = {"address": "127.0.0.1:7480"}
    (alloc_dir / "config.yaml").write_text(yaml.safe_dump(config))
    allocator = lab.popen(node, [sys.executable, "-m", "bgpspeaker", "allocator", "--config",
                                 str(alloc_dir / "config.yaml"), "--kubeconfig", allocator_kc,
                                 "--run-dir", str(alloc_dir / "run")],
                          stdout=open(alloc_dir / "log", "ab"), stderr=__import__("subprocess").STDOUT,
                          env={**os.environ, "POD_NAME": POD})

    def ingress():
        service = emu.get_object("v1", "Service", "demo", "web")
        return [i.get("ip") for i in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [])]
    try:
        assert wait_until(ingress, 30, "status written by the allocator") == [VIP]
        wait_until(lambda: router.best_path(PREFIX), 30, f"{PREFIX} at the router from the speaker")
    except Exception:
        print((alloc_dir / "log").read_text()[-3000:], speaker.log()[-3000:])
        raise
    lease = emu.get_object("coordination.k8s.io/v1", "Lease", "bgpspeaker-system", "bgpspeaker-allocator")
    assert lease["spec"]["holderIdentity"] == POD
    assert list(recorded(emu.snapshot().get("v1/ConfigMap") or [])) == [VIP]

    writes = [r for r in emu.requests if r["method"] in ("POST", "PUT", "PATCH", "DELETE")]
    by_speaker = {(r["method"], r["path"].split("/")[-1] if "events" in r["path"] else r["path"])
                  for r in writes if r["user"] == "speaker-token"}
    assert all("/events" in r["path"] for r in writes if r["user"] == "speaker-token"), by_speaker
    allocator_writes = {r["path"] for r in writes if r["user"] == "allocator-token"}
    assert any(p.endswith("/services/web/status") for p in allocator_writes), allocator_writes
    assert any("/configmaps" in p for p in allocator_writes) and any("/leases" in p for p in allocator_writes)
    # The allocator never started ExaBGP: no BGP session from it (the router has one peer: the speaker).
    assert not (alloc_dir / "run" / "exabgp.conf").exists()
    assert allocator.poll() is None and speaker.proc.poll() is None

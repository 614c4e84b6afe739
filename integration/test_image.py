"""The image users run, built here and run the way the DaemonSet runs it.

The Containerfile is built (integration/image.py: a Debian-made base, the pinned wheels;
podman's layer cache makes a rebuild take seconds), its filesystem mounted, and what it
ships is run with chroot inside a lab node namespace as the image's own user (uid 65532),
with a read-only root and the pod's volumes at their mountPaths (`podman run` does not
work on this kernel; `ImageRoot` is the stand-in for the kubelet).

Everything the pod does is read from the manifests (configs/kubernetes/), never copied
here: the container's args and env, its volumes, the preStop command, the probes. The
one addition is `--kubeconfig`: the API emulator speaks plain HTTP, which the in-cluster
config (HTTPS to KUBERNETES_SERVICE_HOST) cannot reach.

    tor (FRR, AS 64500) 10.77.0.1 ── 10.77.0.2 node-a (the image's bgpspeaker, AS 64512)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from integration import image as img
from integration.lab import netns, vty
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.nsforward import Forwarder
from integration.lab.wait import wait_until
from integration.test_daemon import PREFIX, VIP, world  # noqa: F401  (fixture: node + FRR + emulator)

# A cold build (debootstrap of the base, the wheels) takes minutes; the warm one seconds.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

MANIFESTS = img.REPO / "configs" / "kubernetes"
NODE = "node-a"


def manifest(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def daemonset() -> dict:
    return manifest("daemonset.yaml")


def container() -> dict:
    (speaker,) = [c for c in daemonset()["spec"]["template"]["spec"]["containers"] if c["name"] == "speaker"]
    return speaker


def allocator_container() -> dict:
    (allocator,) = manifest("allocator.yaml")["spec"]["template"]["spec"]["containers"]
    return allocator


def container_argv(root: img.ImageRoot, spec: dict | None = None) -> list[str]:
    """What the kubelet executes: `command` (else the image's ENTRYPOINT) + `args` (else CMD)."""
    spec, config = spec or container(), root.config()
    command = spec.get("command") or config.get("Entrypoint") or []
    args = spec["args"] if "args" in spec else (config.get("Cmd") or [])
    return [*command, *args]


def prestop_argv() -> list[str]:
    return container()["lifecycle"]["preStop"]["exec"]["command"]


def container_env(namespace: str, spec: dict | None = None) -> dict[str, str]:
    """The container's env, its fieldRefs resolved as the kubelet would for a pod on NODE."""
    fields = {"spec.nodeName": NODE, "metadata.namespace": namespace, "metadata.name": "bgpspeaker-allocator-0"}
    env = {}
    for item in (spec or container()).get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def pod_volumes(tmp_path: Path, speaker_yaml: str, extra_config: dict[str, str] | None = None):
    """The DaemonSet's volumeMounts as host directories / emptyDirs: (volumes, tmpfs).

    The ConfigMap volume holds the data keys as files (speaker_yaml in place of the shipped
    one); the Secret volume one password file per peer passwordFile under it."""
    spec = daemonset()["spec"]["template"]["spec"]
    sources = {v["name"]: v for v in spec["volumes"]}
    data = dict(manifest("configmap.yaml")["data"])
    data["speaker.yaml"] = speaker_yaml
    data.update(extra_config or {})
    volumes, tmpfs = {}, []
    for mount in container()["volumeMounts"]:
        source = sources[mount["name"]]
        host = tmp_path / "volumes" / mount["name"]
        host.mkdir(parents=True, mode=0o755)
        host.chmod(0o755)  # tmp_path is root's 0700: the image's user must get in
        if "configMap" in source:
            for key, text in data.items():
                (host / key).write_text(text)
        elif "secret" in source:
            for peer in yaml.safe_load(speaker_yaml).get("peers", []):
                if str(peer.get("passwordFile", "")).startswith(mount["mountPath"] + "/"):
                    (host / Path(peer["passwordFile"]).name).write_text("not-a-real-secret\n")
        elif "emptyDir" in source:
            tmpfs.append(mount["mountPath"])
            continue
        else:
            raise AssertionError(f"volume kind the test cannot stand in for: {source}")
        for child in host.iterdir():
            child.chmod(0o644)  # a ConfigMap / Secret volume's default mode
        # a mountPath below another one (secrets in the config dir) needs its mount point there
        volumes[mount["mountPath"]] = (str(host), bool(mount.get("readOnly")))
    for target in volumes:
        for parent, (parent_host, _) in volumes.items():
            if target.startswith(parent + "/"):
                (Path(parent_host) / target[len(parent) + 1:]).mkdir(parents=True, exist_ok=True)
    return volumes, tuple(tmpfs)


def shipped_speaker_yaml() -> str:
    return manifest("configmap.yaml")["data"]["speaker.yaml"]


@pytest.fixture(scope="module")
def image_root():
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (podman, namespaces); CI is root")
    tag = img.built(img.TEST_TAG, log=print)  # started at the session's start: integration/conftest.py
    root = img.ImageRoot.mount(tag)
    try:
        yield root
    finally:
        root.unmount()


def test_image_ships_the_manifests_commands_as_its_non_root_user_and_nothing_else(image_root):
    root = image_root
    assert root.user() == "65532:65532"
    passwd = (root.path / "etc/passwd").read_text().splitlines()
    assert any(line.startswith("bgpspeaker:x:65532:65532:") for line in passwd), passwd
    # Every program the manifests start is found on the image's PATH.
    for argv in (container_argv(root), prestop_argv()):
        assert root.resolve(argv[0]) is not None, f"{argv[0]} (from {argv}) is not in the image"
    for probe in ("livenessProbe", "readinessProbe"):
        assert "httpGet" in container()[probe], f"{probe}: only httpGet probes are checked here"
    assert (root.path / "run/bgpspeaker").is_dir()
    # What the build stage needed stays there: no pip, no wheels, no compiler, no caches.
    for absent in ("opt/bgpspeaker/bin/pip", "wheels", "root/.cache/pip"):
        assert not (root.path / absent).exists(), f"/{absent} is in the final image"
    for compiler in ("cc", "gcc"):
        assert root.resolve(compiler) is None, f"{compiler} is in the final image"


def test_shipped_configmap_passes_check_config_inside_the_image(image_root, tmp_path):
    root = image_root
    speaker_yaml = shipped_speaker_yaml()
    volumes, tmpfs = pod_volumes(tmp_path, speaker_yaml)
    config_path = option(container_argv(root), "--config")
    proc = subprocess.run(root.argv(["bgpspeaker", "check-config", config_path], volumes=volumes, tmpfs=tmpfs),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok:") or "\nok:" in proc.stdout, proc.stdout
    # and a broken one is refused there too (the command really reads the mounted file)
    volumes, tmpfs = pod_volumes(tmp_path / "bad", speaker_yaml.replace("myASN: 64512", "myASN: 99999999999"))
    proc = subprocess.run(root.argv(["bgpspeaker", "check-config", config_path], volumes=volumes, tmpfs=tmpfs),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "myASN" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def lab_speaker_yaml() -> str:
    """The shipped config, its peer the lab's router (no password: the test runs without
    CAP_NET_ADMIN) and a short drain; everything else as shipped."""
    config = yaml.safe_load(shipped_speaker_yaml())
    config["peers"] = [{"name": "tor", "address": "10.77.0.1", "asn": 64500, "holdTime": 9}]
    config["speaker"]["drainSeconds"] = 1
    return yaml.safe_dump(config)


def http_get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_image_announces_a_service_and_its_prestop_withdraws_it(lab, world, image_root, tmp_path):  # noqa: F811
    router, emu, node, kubeconfig = world
    root = image_root
    namespace = daemonset()["metadata"]["namespace"]
    volumes, tmpfs = pod_volumes(tmp_path, lab_speaker_yaml(), {"kubeconfig": kubeconfig.read_text()})
    config_dir = Path(option(container_argv(root), "--config")).parent
    argv = [*container_argv(root), "--kubeconfig", str(config_dir / "kubeconfig")]
    env = container_env(namespace)
    log_path = tmp_path / "speaker.log"
    proc = lab.popen(node, root.argv(argv, volumes=volumes, tmpfs=tmpfs, env=env),
                     stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)

    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        best = wait_until(lambda: proc.poll() is None and router.best_path(PREFIX) or proc.poll() is not None,
                          60, f"{PREFIX} at the router")
    except AssertionError:
        raise AssertionError("route never reached the router; the image's speaker log:\n" + log()) from None
    assert proc.poll() is None, f"the image's speaker exited {proc.returncode}:\n{log()}"
    # The shipped primary tier, from the node's address.
    assert (best.nexthop, best.aspath, best.communities) == ("10.77.0.2", [64512], ["64512:100"]), best
    # It runs as the image's user (chroot started it as 65532, so this is its own uid).
    assert Path(f"/proc/{proc.pid}/status").read_text().split("Uid:")[1].split()[:2] == ["65532", "65532"]

    # The allocator Deployment's container (the speakers run announce-only), in a pod
    # network namespace of its own with the same API, as the image's user.
    alloc_ns = lab.netns("allocator")
    api = Forwarder(alloc_ns, ("127.0.0.1", 6443), node, ("127.0.0.1", 6443), name="allocator-api").start()
    lab.on_close(api.close)
    alloc_spec = allocator_container()
    alloc_argv = [*container_argv(root, alloc_spec), "--kubeconfig", str(config_dir / "kubeconfig")]
    alloc_log = tmp_path / "allocator.log"
    allocator = lab.popen(alloc_ns, root.argv(alloc_argv, volumes=volumes, tmpfs=tmpfs,
                                              env=container_env(namespace, alloc_spec)),
                          stdout=open(alloc_log, "wb"), stderr=subprocess.STDOUT)

    def ingress():
        service = emu.get_object("v1", "Service", "demo", "web")
        return [i.get("ip") for i in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [])]
    try:
        assert wait_until(ingress, 30, "status.loadBalancer.ingress written by the image's allocator") == [VIP]
    except AssertionError:
        raise AssertionError("the image's allocator log:\n" + alloc_log.read_text(errors="replace")[-3000:]) from None
    lease = emu.get_object("coordination.k8s.io/v1", "Lease", namespace, "bgpspeaker-allocator")
    assert lease["spec"]["holderIdentity"] == "bgpspeaker-allocator-0"
    allocator.send_signal(signal.SIGTERM)
    assert allocator.wait(20) == 0, alloc_log.read_text(errors="replace")[-3000:]

    # The probes, at the manifest's paths and ports.
    for probe in ("livenessProbe", "readinessProbe"):
        get = container()[probe]["httpGet"]
        forward = Forwarder(None, ("127.0.0.1", 0), node, ("127.0.0.1", int(get["port"])), name=probe).start()
        lab.on_close(forward.close)
        wait_until(lambda: http_get(forward.port, get["path"]) == 200, 15, f"{probe} {get['path']} 200")

    # preStop, run as the kubelet runs it: inside the running container, as its user.
    prestop = subprocess.run(root.exec_argv(proc.pid, prestop_argv(), env=env),
                             capture_output=True, text=True, timeout=60)
    assert prestop.returncode == 0, f"preStop {prestop_argv()}: {prestop.stdout}{prestop.stderr}\n{log()}"
    wait_until(lambda: router.best_path(PREFIX) is None, 10, "withdrawn once preStop returned")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log()


BFDD = "/usr/lib/frr/bfdd"


def bfdd_argv(state_dir: str, config: str) -> list[str]:
    """bfdd alone (no zebra, no bgpd), every file it keeps in `state_dir`."""
    return [BFDD, "-f", config, "--vty_socket", state_dir, "-i", f"{state_dir}/bfdd.pid",
            "--bfdctl", f"{state_dir}/bfdd.sock", "-z", f"{state_dir}/zserv.api", "-P", "0"]


def bfd_conf(peer: str, local: str) -> str:
    return f"bfd\n peer {peer} local-address {local}\n  receive-interval 100\n  transmit-interval 100\n"


def test_image_bfdd_brings_a_bfd_session_up_with_frr(lab, image_root, tmp_path):  # noqa: F811
    """The image's bfdd (for BFD beside ExaBGP) has everything it needs: its libraries, its
    YANG models (built in), the vty group. FRR's privilege model: it starts as root and
    drops to the user named by -u/-g, keeping only the capabilities it asks for; as uid
    65532 from the start it refuses ("cap_set_proc failed": it needs net_bind_service,
    net_raw and sys_admin permitted)."""
    root = image_root
    tor, node = lab.netns("tor"), lab.netns("node")
    lab.veth(tor, "eth0", node, "eth0")
    netns.add_addr(tor, "eth0", "10.77.0.1/24")
    netns.add_addr(node, "eth0", "10.77.0.2/24")

    # FRR's own directory, as integration/lab/frr.py makes one: tmp_path is root's 0700
    tor_dir = Path(tempfile.mkdtemp(prefix=f"bfdd-{tor}-"))
    lab.on_close(lambda: shutil.rmtree(tor_dir, ignore_errors=True))
    (tor_dir / "frr.conf").write_text(bfd_conf("10.77.0.2", "10.77.0.1"))
    for path in (tor_dir, tor_dir / "frr.conf"):
        shutil.chown(path, "frr", "frr")
    lab.popen(tor, [*bfdd_argv(str(tor_dir), str(tor_dir / "frr.conf")), "-u", "frr", "-g", "frr",
                    "--log", f"file:{tor_dir}/bfdd.log"])

    node_conf = tmp_path / "node-conf"
    node_conf.mkdir(mode=0o755)
    (node_conf / "frr.conf").write_text(bfd_conf("10.77.0.1", "10.77.0.2"))
    (node_conf / "frr.conf").chmod(0o644)
    run_dir = "/run/bgpspeaker"
    log_path = tmp_path / "node-bfdd.log"
    proc = lab.popen(node, root.argv(
        [*bfdd_argv(run_dir, "/etc/bgpspeaker/frr.conf"), "-u", "bgpspeaker", "-g", "bgpspeaker", "--log", "stdout"],
        volumes={"/etc/bgpspeaker": (str(node_conf), True)}, tmpfs=(run_dir,), user="0:0"),
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)

    def tor_peer_up():
        assert proc.poll() is None, f"the image's bfdd exited {proc.returncode}: {log_path.read_text()}"
        with vty.VtySession(str(tor_dir / "bfdd.vty")) as session:
            session.command("enable")  # bfdd's show commands are not in the view node
            peers = json.loads(session.command("show bfd peers json"))
        return [p for p in peers if p.get("peer") == "10.77.0.2" and p.get("status") == "up"]
    wait_until(tor_peer_up, 15, "the BFD session up at the tor")
    uids = Path(f"/proc/{proc.pid}/status").read_text().split("Uid:")[1].split()[:4]
    assert uids == ["65532"] * 4, f"bfdd did not drop to the image's user: {uids}"

"""Offline lint of what an operator deploys: the Kubernetes manifests and the Containerfile.

The image cannot be built here (no registry but PyPI/Debian), so the Containerfile is
checked for what would break a build or a run: every COPY source exists, the entrypoint
is our console script, the base images are pinned to a Python we test on.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import yaml

from bgpspeaker.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "configs" / "kubernetes"


def manifests() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in manifests() if d["kind"] == kind]


def test_rbac_is_least_privilege():
    rules = [rule for role in by_kind("ClusterRole") + by_kind("Role") for rule in role["rules"]]
    granted = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # No wildcards and nothing destructive anywhere.
    assert not any("*" in item for item in granted)
    # (delete: only allocation records, ConfigMaps in our own namespace: checked below)
    assert not any(verb in ("deletecollection", "escalate", "bind", "impersonate") for _, _, verb in granted)
    assert {r for _, r, v in granted if v == "delete"} <= {"configmaps"}
    # Exactly what the daemon does: read its inputs, write status/annotation, events, its lease.
    # (integration/test_rbac.py checks the grants against the calls of a daemon run, both ways.)
    for resource in ("services", "nodes"):
        assert {("", resource, v) for v in ("list", "watch")} <= granted
    assert {("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")} <= granted
    assert ("", "services/status", "patch") in granted
    assert ("", "events", "create") in granted
    assert ("coordination.k8s.io", "leases", "update") in granted
    # Writes to secrets, pods or nodes would be a privilege the speaker never needs.
    assert not any(r in ("secrets", "pods") for _, r, _ in granted)
    assert not any(r == "nodes" and v not in ("get", "list", "watch") for _, r, v in granted)
    # The lease permission is namespaced (a Role), not cluster-wide.
    cluster_resources = {res for role in by_kind("ClusterRole") for rule in role["rules"] for res in rule["resources"]}
    assert "leases" not in cluster_resources
    # So are the allocation records: ConfigMaps of our namespace, never cluster-wide.
    assert "configmaps" not in cluster_resources


def test_daemonset_runs_the_speaker_as_designed():
    (daemonset,) = by_kind("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["bgpspeaker", "drain"]
    # Issue 14: non-root with a fixed uid, no capability added (TCP MD5 needs none: proven
    # by integration/test_daemon_unprivileged.py), seccomp, read-only root, critical priority.
    for context in (pod["securityContext"], container["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (65532, 65532, True)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert not container.get("hostPort") and not any("hostPort" in p for p in container.get("ports", []))
    # The probes hit health.address on loopback, where the network cannot reach.
    (configmap,) = by_kind("ConfigMap")
    health = yaml.safe_load(configmap["data"]["speaker.yaml"])["health"]["address"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert f"{get['host']}:{get['port']}" == health == "127.0.0.1:7473"
    # The run directory (control socket, ExaBGP's config) is the one writable place.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/run/bgpspeaker" in mounts and not mounts["/run/bgpspeaker"].get("readOnly")
    secret = next(v for v in pod["volumes"] if "secret" in v)["secret"]
    assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 65532
    # The args must parse with our own CLI: a typo here is a crash loop in production.
    args = build_parser().parse_args(container["args"] + ["--node-name", "n"])
    assert args.command == "run"
    prestop = build_parser().parse_args(container["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert prestop.command == "drain" and prestop.wait
    # Grace period must cover the drain (drainSeconds in the ConfigMap) plus withdraw time.
    (configmap,) = by_kind("ConfigMap")
    speaker = yaml.safe_load(configmap["data"]["speaker.yaml"])
    assert pod["terminationGracePeriodSeconds"] > speaker["speaker"]["drainSeconds"] + 10
    assert daemonset["spec"]["template"]["metadata"]["labels"] == daemonset["spec"]["selector"]["matchLabels"]


def test_service_account_and_bindings_line_up():
    accounts = {(a["metadata"]["name"], a["metadata"]["namespace"]) for a in by_kind("ServiceAccount")}
    (daemonset,) = by_kind("DaemonSet")
    (deployment,) = by_kind("Deployment")
    assert {w["spec"]["template"]["spec"]["serviceAccountName"] for w in (daemonset, deployment)} == \
        {name for name, _ in accounts}
    for binding in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
        (subject,) = binding["subjects"]
        assert (subject["name"], subject["namespace"]) in accounts


def grants_of(account: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) granted to one ServiceAccount through its bindings."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in by_kind("ClusterRole") + by_kind("Role")}
    out = set()
    for binding in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
        if binding["subjects"][0]["name"] != account:
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        out |= {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}
    return out


def test_the_speaker_is_read_only_and_one_allocator_identity_writes():
    """Issue 14: the DaemonSet's speakers read Services, EndpointSlices, Nodes and records,
    and write only Events about their own announcements; the allocator is the only writer of
    Service status, its Lease and the allocation records."""
    speaker, allocator = grants_of("bgpspeaker"), grants_of("bgpspeaker-allocator")
    writes = {"create", "update", "patch", "delete"}
    assert {(g, r) for g, r, v in speaker if v in writes} == {("", "events")}
    assert {("", "configmaps", "list"), ("", "configmaps", "watch")} <= speaker
    for write in [("", "services/status", "patch"), ("", "services", "patch"), ("coordination.k8s.io", "leases",
                                                                                 "update"),
                  ("", "configmaps", "create"), ("", "configmaps", "delete")]:
        assert write in allocator and write not in speaker
    (daemonset,) = by_kind("DaemonSet")
    assert "--no-allocator" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "allocator" and not pod.get("hostNetwork")
    assert {e["name"] for e in pod["containers"][0]["env"]} == {"POD_NAME", "POD_NAMESPACE"}


def test_kustomize_renders_the_manifests():
    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert sorted(kinds) == sorted(d["kind"] for d in manifests())


def test_containerfile_builds_from_existing_paths_and_runs_our_entrypoint():
    text = (ROOT / "Containerfile").read_text()
    for line in text.splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line)
        if match:
            for source in match.group(1).split():
                if source.startswith("wheels/"):
                    continue  # built by `make image` into its build context (integration/image.py)
                assert (ROOT / source).exists(), f"Containerfile copies {source}, which does not exist"
    assert re.search(r'^ENTRYPOINT \["bgpspeaker"\]', text, re.M)
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    assert "bgpspeaker = bgpspeaker.cli:main" in scripts["options.entry_points"]["console_scripts"]
    # Every stage starts from BASE (or an earlier stage), whose default is Python 3.11.
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M)
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(base == "${BASE}" or base in stages for base in bases), bases
    assert re.search(r"^ARG BASE=\S+:3\.11-\S+$", text, re.M)


def test_the_shared_record_store_gives_speakers_a_reader_and_the_allocator_a_writer():
    """One credential per role for the shared record store (README, "Multi-cluster
    addresses"): the speakers' kubeconfig may only read the records, and only the
    allocator's may change them. A node's credential that could write would let one
    compromised node of any cluster rewrite the whole fleet's records."""
    store = [d for d in yaml.safe_load_all((MANIFESTS / "record-store" / "record-store.yaml").read_text()) if d]
    example = yaml.safe_load((ROOT / "configs" / "east.yaml").read_text())["sharedStore"]
    namespace, mount = example["namespace"], str(Path(example["kubeconfig"]).parent)
    assert {d["metadata"]["name"] for d in store if d["kind"] == "Namespace"} == {namespace}
    verbs = {d["metadata"]["name"]: {(g, r, v) for rule in d["rules"] for g in rule["apiGroups"]
                                     for r in rule["resources"] for v in rule["verbs"]}
             for d in store if d["kind"] == "Role"}
    reads = {("", "configmaps", v) for v in ("get", "list", "watch")}
    assert verbs["bgpspeaker-records-reader"] == reads
    assert verbs["bgpspeaker-records-writer"] == reads | {("", "configmaps", v) for v in ("create", "patch", "delete")}
    bound = {d["roleRef"]["name"]: [s["name"] for s in d["subjects"]] for d in store if d["kind"] == "RoleBinding"}
    assert bound == {role: [role] for role in verbs}
    tokens = {d["metadata"]["annotations"]["kubernetes.io/service-account.name"] for d in store
              if d["kind"] == "Secret" and d["type"] == "kubernetes.io/service-account-token"}
    assert tokens == set(verbs)

    def mounted(pod: dict) -> str:
        """The Secret a pod mounts where sharedStore.kubeconfig lives, checked readable by it."""
        [volume] = [m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == mount]
        [secret] = [v["secret"] for v in pod["volumes"] if v["name"] == volume]
        assert secret["optional"] and secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 65532
        return secret["secretName"]

    (daemonset,) = by_kind("DaemonSet")
    (deployment,) = by_kind("Deployment")
    assert mounted(daemonset["spec"]["template"]["spec"]) == "bgpspeaker-records-reader"
    assert mounted(deployment["spec"]["template"]["spec"]) == "bgpspeaker-records-writer"
    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / "record-store")], capture_output=True, text=True,
                         check=True).stdout
    assert sorted(d["kind"] for d in yaml.safe_load_all(out) if d) == sorted(d["kind"] for d in store)

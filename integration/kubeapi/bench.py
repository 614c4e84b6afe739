"""`python -m integration.kubeapi.bench [N]`: how fast the emulator is at benchmark scale.

Loads N Services and N EndpointSlices (default 10,000 each), then times LIST and watch
on the raw wire next to the official client doing the same, so the ratio shows how
little of a client-side measurement the emulator itself accounts for.
"""

from __future__ import annotations

import http.client
import sys
import time
import urllib.request

from kubernetes import client, config

from .emulator import run_emulator


def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": f"ns{i % 50}", "labels": {"app": f"app-{i}"},
                         "annotations": {"bgpspeaker.io/cluster-preference": "east,west"}},
            "spec": {"type": "LoadBalancer", "selector": {"app": f"app-{i}"},
                     "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"}]}}}


def endpoint_slice(i: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"svc-{i}-x", "namespace": f"ns{i % 50}",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "endpoints": [{"addresses": [f"10.1.{j}.{i & 255}"], "conditions": {"ready": True},
                           "nodeName": f"node-{j}"} for j in range(3)],
            "ports": [{"port": 8080, "protocol": "TCP"}]}


def timed(what: str, fn) -> float:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    print(f"{what:<52} {took * 1000:8.1f} ms")
    return took


def main(n: int) -> None:
    with run_emulator() as emu:
        timed(f"load_objects {n} Services + {n} EndpointSlices",
              lambda: emu.load_objects([service(i) for i in range(n)] + [endpoint_slice(i) for i in range(n)]))
        raw = timed(f"raw LIST {n} Services", lambda: urllib.request.urlopen(emu.url + "/api/v1/services").read())
        timed(f"raw LIST {n} EndpointSlices",
              lambda: urllib.request.urlopen(emu.url + "/apis/discovery.k8s.io/v1/endpointslices").read())
        api = client.CoreV1Api(config.new_client_from_config(config_file=emu.kubeconfig))
        typed = timed(f"official client list_service_for_all_namespaces", api.list_service_for_all_namespaces)

        def watch_all() -> None:
            conn = http.client.HTTPConnection(emu.url.removeprefix("http://"))
            conn.request("GET", "/api/v1/services?watch=1&timeoutSeconds=5")
            resp = conn.getresponse()
            for _ in range(n):
                resp.fp.readline()
            conn.close()
        timed(f"raw watch from rv=0: {n} synthetic ADDED", watch_all)
        timed(f"{n} Service updates (set_object, thread hop each)",
              lambda: [emu.set_object(dict(service(i), spec={"type": "NodePort"})) for i in range(n)])
        print(f"client LIST / raw LIST: {typed / raw:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)

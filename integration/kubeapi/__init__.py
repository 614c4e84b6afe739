"""A Kubernetes API emulator for tests and the lab: the wire protocol that the official
client, kubectl and informers rely on (see docs/reference/kube-emulator.md).

    from integration.kubeapi import run_emulator
    with run_emulator() as emu:
        client = kubernetes.config.new_client_from_config(emu.kubeconfig)
        emu.set_object({...}); emu.compact(); emu.outage(2)
"""

from .control import RemoteEmulator
from .emulator import EmulatorThread, KubeEmulator, run_emulator
from .resources import RESOURCES, ApiError, Resource

__all__ = ["ApiError", "EmulatorThread", "KubeEmulator", "RESOURCES", "RemoteEmulator", "Resource",
           "run_emulator"]

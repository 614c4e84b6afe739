"""pytest fixtures for the lab: import them into a test module to use them.

    from integration.lab.fixtures import lab, topology  # noqa: F401  (pytest finds them by name)

    @pytest.mark.lab
    def test_x(lab):
        a = lab.netns("a")

    @pytest.mark.lab
    def test_y(topology):
        topo = topology(TopologySpec(always_compare_med=True))   # up; torn down after the test

Why a module and not a conftest.py: `integration/conftest.py` is shared ground; a
module each test imports keeps the lab's fixtures with the lab code.
"""

from __future__ import annotations

import os

import pytest

from . import netns


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces); CI is root")


@pytest.fixture
def lab():
    """A `netns.Lab` that deletes its namespaces and stops its processes (by PID) after
    the test, passed or failed. Leftovers of SIGKILLed earlier runs are reaped first,
    and a SIGTERM to the test run still cleans up."""
    _require_root()
    netns.install_sigterm_cleanup()
    netns.reap_stale()
    with netns.Lab() as lab:
        yield lab


@pytest.fixture
def topology(lab):
    """Factory: `topology(spec=TopologySpec())` brings a Topology up inside the test's lab;
    everything goes down with the lab after the test."""
    from .topology import Topology, TopologySpec

    built = []

    def make(spec: TopologySpec | None = None) -> Topology:
        topo = Topology(spec or TopologySpec(), lab=lab).up()
        built.append(topo)
        return topo

    yield make
    for topo in built[::-1]:
        topo.down()

"""pytest fixtures for the lab: import them into a test module to use them.

    from integration.lab.fixtures import lab  # noqa: F401  (pytest finds it by name)

    @pytest.mark.lab
    def test_x(lab):
        a = lab.netns("a")

Why a module and not a conftest.py: `integration/conftest.py` is shared ground; a
module each test imports keeps the lab's fixtures with the lab code.
"""

from __future__ import annotations

import os

import pytest

from . import netns


@pytest.fixture
def lab():
    """A `netns.Lab` that deletes its namespaces and stops its processes (by PID) after
    the test, passed or failed. Leftovers of SIGKILLed earlier runs are reaped first."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces); CI is root")
    netns.reap_stale()
    with netns.Lab() as lab:
        yield lab

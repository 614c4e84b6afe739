"""Shared pytest plumbing for integration/: failure reports and the measurements summary.

- `rep_<phase>` on each test item, so a fixture can tell in its teardown whether the
  test failed and print the lab's diagnostics (router table, speaker logs) only then.
- `cluster_lab.record_measurement(name, values)`: tests that measure (failover times)
  hand their numbers there; they are printed in pytest's terminal summary (p50, max, n), so
  the figures show up in every CI log without `-s` and without timed assertions.
- Before the first test, the checkout's code is compiled (integration/lab/bytecode.py: the
  environment says not to write bytecode, and every daemon, ExaBGP helper and emulator the
  suite starts compiled our modules again), and the image under test starts building when
  test_image.py is selected (integration/image.py, build_early): its cold build waits on
  the network and the disk beside the unit tests rather than on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from integration.lab.bytecode import compile_checkout
from integration.lab.cluster_lab import MEASUREMENTS, summarize

IMAGE_TEST = Path(__file__).with_name("test_image.py")


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if not compile_checkout():
        print("\nintegration/conftest.py: some of the checkout's code did not compile (see above); "
              "the daemons started from it compile those modules at each start", file=sys.stderr)
    if os.geteuid() != 0:  # not root: test_image fails, as it says why
        return
    if any(item.path == IMAGE_TEST for item in session.items):
        from integration import image

        image.build_early(image.TEST_TAG)


def pytest_sessionfinish(session):
    if "integration.image" in sys.modules:  # imported only when an early build was started
        from integration import image

        image.stop_early_builds()  # one nobody waited for: the session ended before test_image


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_terminal_summary(terminalreporter):
    if not MEASUREMENTS:
        return
    terminalreporter.section("bgpspeaker lab measurements")
    for name, values in MEASUREMENTS:
        terminalreporter.write_line(f"{name}: {summarize(values)}")


def failed(request) -> bool:
    """In a fixture's teardown: did the test that used it fail (setup or call)?"""
    node = request.node
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


def start_lab(**kwargs):
    """A started MultiClusterLab for a module-scoped fixture (closed by the caller).
    Not root is a failure, never a skip: CI is root."""
    import os

    from integration.lab.cluster_lab import MultiClusterLab

    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces, FRR); CI is root")
    if os.environ.get("LAB_NO_ALLOCATOR") == "1":  # debugging aid: run the speakers announce-only
        kwargs.setdefault("allocator", False)
    lab = MultiClusterLab(**kwargs)
    try:
        lab.start()
    except BaseException:
        lab.close()
        raise
    return lab


def lab_for_test(shared, request):
    """Generator body of a per-test fixture on a shared lab: reset it first, print its
    diagnostics (router table, speaker logs) if the test failed."""
    shared.reset()
    yield shared
    if failed(request):
        print(shared.diagnostics())

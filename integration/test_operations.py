"""Operations without surprises, end to end on the multi-cluster lab (issue 17): a
readiness that flaps does not drag traffic back and forth (tier hysteresis), and one
config change takes a whole cluster out of service without a failed request (the
fleet switch). The router's own best path and real client requests are the evidence.
"""

from __future__ import annotations

import threading
import time

import pytest

from integration.conftest import lab_for_test, start_lab
from integration.lab.cluster_lab import record_measurement
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab

RISE = 5.0
FLAP_HALF_PERIOD = 0.5
FLAP_SECONDS = 20.0


@pytest.fixture(scope="module")
def shared():
    lab = start_lab()
    yield lab
    lab.close()


@pytest.fixture
def lab(shared, request):
    yield from lab_for_test(shared, request)


class BestPathLog:
    """Polls the router's best path for some VIPs every 20 ms: [(time, cluster)] per VIP, changes only."""

    def __init__(self, lab, vips):
        self.lab, self.changes = lab, {vip: [] for vip in vips}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for vip, seen in self.changes.items():
                try:
                    cluster = self.lab.best_cluster(vip)
                except Exception:  # noqa: BLE001 - a query racing an update; the next poll sees it
                    continue
                if not seen or seen[-1][1] != cluster:
                    seen.append((time.monotonic(), cluster))
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def count(self, vip, start, end):
        """Best-path changes of `vip` within [start, end]."""
        return sum(1 for t, _ in self.changes[vip][1:] if start <= t <= end)


def test_flapping_readiness_moves_the_best_path_no_more_often_than_rise_allows(lab):
    """Two Services, east primary and west secondary, whose east endpoints flap every 0.5 s
    for 20 s: the one with `bgpspeaker.io/rise-seconds: "5"` leaves east once and comes
    back once east has been ready for 5 s; the one without follows every flap."""
    damped, plain = "203.0.113.5", "203.0.113.6"
    lab.create_service("damped", damped, "east,west", annotations={"bgpspeaker.io/rise-seconds": str(RISE)})
    lab.create_service("plain", plain, "east,west")
    for vip in (damped, plain):
        lab.wait_best_cluster(vip, "east", timeout=20)
    with BestPathLog(lab, (damped, plain)) as log:
        start = time.monotonic()
        ready = True
        while time.monotonic() - start < FLAP_SECONDS:
            ready = not ready
            for name in ("damped", "plain"):
                written = lab.set_cluster_ready(name, "east", ready)
            time.sleep(FLAP_HALF_PERIOD)
        if not ready:
            for name in ("damped", "plain"):
                written = lab.set_cluster_ready(name, "east", True)
        settled = written  # east ready for good from here on
        back = lab.wait_best_cluster(damped, "east", timeout=RISE + 10)
        lab.wait_best_cluster(plain, "east")
        end = time.monotonic()
    damped_changes = log.count(damped, start, settled)
    plain_changes = log.count(plain, start, settled)
    print(f"best-path changes in {FLAP_SECONDS:.0f} s of {FLAP_HALF_PERIOD} s flaps: rise {RISE:g} s "
          f"{damped_changes}, no rise {plain_changes}")
    record_measurement(f"flapping stopped -> east best again (rise {RISE:g} s)", [back - settled])
    # rise 5 s allows at most one return to east per 5 s of steady readiness; flaps every
    # 0.5 s never give it one: the only change is the first loss (east -> west)
    assert damped_changes <= 1 + int(FLAP_SECONDS / RISE) and damped_changes == 1, log.changes[damped]
    assert plain_changes >= 10, log.changes[plain]  # the control: the counting sees flaps
    # and east takes the damped VIP back only after being ready for riseSeconds
    assert back - settled >= RISE - 0.5, (back - settled)
    assert lab.best_cluster(damped) == "east" and end - settled < RISE + 10

"""A peer's own hold time, keepalives and graceful restart, as a real FRR router sees them.

The config is loaded from YAML (the operator's path), rendered by the driver into ExaBGP's
config, and read back from FRR's `show bgp neighbors json`: the negotiated hold time, the
keepalives FRR receives from us per second, and the graceful-restart time we advertise.
FRR is configured with a longer hold time (30 s) than the peer's (6 s), so the negotiated
value can only come from our side; exabgp.gracefulRestart is 0, so a restart time at the
router can only come from the peer's own `gracefulRestart`.
"""

from __future__ import annotations

import time

import pytest

from bgpspeaker.config.load import load_config_text
from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.test_exabgp_lab import NODE_V4, TOR_ASN, TOR_V4, Bed, run, running, until

pytestmark = pytest.mark.lab

CONFIG = f"""\
cluster: {{name: east}}
speaker: {{myASN: 64512}}
exabgp: {{gracefulRestart: 0}}
peers:
  - name: tor
    address: {TOR_V4}
    asn: {TOR_ASN}
    holdTime: 6
    keepaliveTime: 2
    gracefulRestart: 7
    nodeSelectors:
      - matchExpressions: [{{key: unused, operator: DoesNotExist}}]
"""


def test_peer_hold_time_keepalives_and_graceful_restart_reach_frr(lab):
    bed = Bed(lab, hold=30, gr=True)
    config = load_config_text(CONFIG)

    seen: dict = {}

    def keepalives() -> int:
        return bed.router.show_json(f"show bgp neighbors {NODE_V4}")[NODE_V4]["messageStats"]["keepalivesRecv"]

    async def scenario():
        async with running(bed.driver(config)):
            await until(bed.established, 30, "session established")
            seen["neighbor"] = bed.router.show_json(f"show bgp neighbors {NODE_V4}")[NODE_V4]
            first, start = keepalives(), time.monotonic()
            await until(lambda: keepalives() >= first + 3, 20, "three more keepalives from us")
            seen["took"] = time.monotonic() - start

    run(scenario())
    neighbor, took = seen["neighbor"], seen["took"]
    print(f"FRR neighbor: hold {neighbor['bgpTimerHoldTimeMsecs']} ms, "
          f"keepalive {neighbor['bgpTimerKeepAliveIntervalMsecs']} ms; 3 keepalives from us in {took:.2f} s; "
          f"graceful restart {neighbor.get('gracefulRestartInfo')}")
    assert neighbor["bgpTimerHoldTimeMsecs"] == 6000  # min(ours 6, FRR's 30): ours reached FRR
    assert neighbor["bgpTimerKeepAliveIntervalMsecs"] == 2000  # FRR's own, capped at a third of 6 s
    # Ours: one every 2 s (a third of 6), so three take 4..6 s (measured 5.3); at a third of
    # FRR's 30 s they would take 20..30 s.
    assert 3.0 <= took <= 12, took
    assert neighbor["gracefulRestartInfo"]["timers"]["receivedRestartTimer"] == 7

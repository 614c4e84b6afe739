"""bfd/vty.Vty against a real bfdd (FRR 8.4.4's, alone, no network namespace needed).

The BFD service shares one vty connection between its status poller (`show bfd peers`,
every second) and its config changes (a profile's new interval, a damping hold), which
are a sequence of lines whose meaning depends on the node the previous ones entered. A
`show` slipped between them fails in config mode, the connection is reopened in enable
mode, and the rest of the lines are unknown there: seen in the e2e suite as "Unknown
command: bfd" and a profile change that restarted bfdd instead of applying live.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from bgpspeaker.bfd.runner import bfdd_user
from bgpspeaker.bfd.vty import Vty
from integration.lab.fixtures import _require_root
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab

BFDD = "/usr/lib/frr/bfdd"


@pytest.fixture
def bfdd():
    _require_root()
    top = Path(tempfile.mkdtemp(prefix="bfd-vty-"))  # not under pytest's 0700 tmp: bfdd runs as frr
    os.chmod(top, 0o755)
    d = top / "bfd"
    d.mkdir()
    (d / "bfdd.conf").write_text("")
    shutil.chown(d, *bfdd_user())
    proc = subprocess.Popen([BFDD, "-f", str(d / "bfdd.conf"), "--vty_socket", str(d), "-i", str(d / "bfdd.pid"),
                             "--bfdctl", str(d / "bfdd.sock"), "-z", str(d / "zserv.api"), "-P", "0",
                             "-u", "frr", "-g", "frr", "--log", "stdout"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: (d / "bfdd.vty").exists(), 10, "bfdd's vty socket")
        yield str(d / "bfdd.vty")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(top, ignore_errors=True)


def test_a_config_sequence_is_never_interleaved_with_the_pollers_show_commands(bfdd):
    async def main():
        vty = Vty(bfdd)
        peers = [f"198.51.100.{i}" for i in range(1, 21)]

        async def configure(address):
            await vty.configure(["bfd", "profile fast", "receive-interval 150", "exit",
                                 f"peer {address}", "profile fast", "exit"])

        async def poll():
            for _ in range(40):
                await vty.show_json("show bfd peers")
                await asyncio.sleep(0)

        # each configure's lines and the poller's shows all queue on the one connection at once
        await asyncio.gather(poll(), *(configure(a) for a in peers))
        shown = await vty.show_json("show bfd peers")
        await vty.close()
        return shown

    shown = asyncio.run(main())
    assert sorted(p["peer"] for p in shown) == sorted(f"198.51.100.{i}" for i in range(1, 21))
    assert {p["receive-interval"] for p in shown} == {150}

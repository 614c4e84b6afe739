"""The relay process: copies bytes both ways, exits with either side, gives up connecting quickly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bgpspeaker.exabgp import relay


def start(path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bgpspeaker.exabgp.relay", path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_relays_both_ways_and_exits_when_the_daemon_goes(tmp_path):
    path = str(tmp_path / f"r-{os.getpid()}.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)
    proc = start(path)
    try:
        conn, _ = server.accept()
        conn.settimeout(10)
        proc.stdin.write(b'{"type": "state"}\ndone\n')  # ExaBGP -> daemon
        proc.stdin.flush()
        got = b""
        while not got.endswith(b"done\n"):
            got += conn.recv(4096)
        assert got == b'{"type": "state"}\ndone\n'
        conn.sendall(b"neighbor 10.0.0.1 announce eor ipv4 unicast\n")  # daemon -> ExaBGP
        assert proc.stdout.readline() == b"neighbor 10.0.0.1 announce eor ipv4 unicast\n"
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()


def test_exits_when_exabgp_closes_its_pipe(tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)
    proc = start(path)
    try:
        conn, _ = server.accept()
        proc.stdin.close()
        assert proc.wait(10) == 0
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()


def test_gives_up_connecting_after_a_short_timeout(tmp_path):
    """An orphaned ExaBGP (daemon gone) respawns the relay 5 times per 64 s, then exits
    (docs/reference/exabgp-api.md §8): a relay that gives up in seconds makes that happen in seconds."""
    t0 = time.monotonic()
    proc = start(str(tmp_path / "nobody-listens.sock"))
    assert proc.wait(relay.CONNECT_TIMEOUT + 10) == 1
    assert time.monotonic() - t0 >= relay.CONNECT_TIMEOUT * 0.9  # it did retry, not fail at once
    assert proc.stdout.read() == b""  # nothing ever printed where ExaBGP reads commands
    assert b"cannot connect" in proc.stderr.read()


def test_usage():
    assert relay.main(["relay"]) == 2

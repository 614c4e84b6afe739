"""The channel against a scripted relay on a loopback unix socket: barrier, stale acks, FIFO, window."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from bgpspeaker.exabgp.channel import Channel, ChannelClosed, neighbor_fsm

NEIGHBORS = [{"fsm": "ESTABLISHED", "state": "down", "peer": {"address": "10.0.0.1"}},
             {"fsm": "IDLE", "peer": {"address": "10.0.0.3"}}]


class FakeRelay:
    """Plays ExaBGP's side of the relay socket."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path):
        return cls(*await asyncio.open_unix_connection(path))

    async def line(self, timeout=5.0) -> str:
        return (await asyncio.wait_for(self.reader.readline(), timeout)).decode().rstrip("\n")

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(line + "\n" for line in lines).encode())
        await self.writer.drain()

    async def pass_barrier(self, neighbors=NEIGHBORS, stale=()):
        assert await self.line() == "show neighbor json"
        await self.send(*stale, json.dumps(neighbors), "done")

    def close(self):
        self.writer.close()


async def settle(predicate, timeout=5.0):
    async def loop():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(loop(), timeout)


def run(coro):
    return asyncio.run(coro)


def test_barrier_first_and_stale_acks_discarded(tmp_path):
    async def main():
        ch = Channel(str(tmp_path / "a.sock"), window=2)
        readies = []
        ch.on_ready = readies.append
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        assert await relay.line() == "show neighbor json"
        assert not ch.ready
        # acks of a dead relay's commands, an event, then the barrier's answer
        await relay.send("done", "error", "done", '{"type": "state"}', json.dumps(NEIGHBORS), "done")
        await ch.wait_ready(5)
        assert ch.stale_acks_discarded == 3
        await settle(lambda: readies)
        assert neighbor_fsm(readies[0]) == {"10.0.0.1": "ESTABLISHED", "10.0.0.3": "IDLE"}
        relay.close()
        await ch.close()
    run(main())


def test_acks_are_matched_fifo_and_window_is_bounded(tmp_path):
    async def main():
        ch = Channel(str(tmp_path / "b.sock"), window=2)
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        futures = []

        async def sender():
            for i in range(3):
                futures.append(await ch.submit(f"cmd {i}"))
        task = asyncio.create_task(sender())
        assert [await relay.line(), await relay.line()] == ["cmd 0", "cmd 1"]
        with pytest.raises(asyncio.TimeoutError):  # window of 2: the third waits for an ack
            await relay.line(timeout=0.2)
        assert ch.outstanding() == 2
        await relay.send("error")
        assert await relay.line() == "cmd 2"
        await task
        await relay.send("done", "done")
        assert [await f for f in futures] == ["error", "done", "done"]
        relay.close()
        await ch.close()
    run(main())


def test_unattributable_ack_is_never_guessed(tmp_path):
    async def main():
        ch = Channel(str(tmp_path / "c.sock"))
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        await relay.send("done")  # nothing outstanding
        await settle(lambda: ch.unexpected_lines == 1)
        future = await ch.submit("cmd")
        await relay.line()
        await relay.send("error")
        assert await future == "error"
        relay.close()
        await ch.close()
    run(main())


def test_connection_loss_fails_pending_and_a_new_connection_skips_stale_barrier_answers(tmp_path):
    async def main():
        lost = []
        readies = []
        ch = Channel(str(tmp_path / "d.sock"), on_lost=lambda: lost.append(1), on_ready=readies.append)
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        pending = await ch.submit("announce 1")
        query = asyncio.create_task(ch.neighbors())  # waits for the empty window
        await relay.line()
        await relay.send("done")
        assert await pending == "done"
        assert await relay.line() == "show neighbor json"  # sent; its answer never comes on this relay
        relay.close()
        with pytest.raises(ChannelClosed):
            await query
        await settle(lambda: lost)
        assert not ch.ready
        with pytest.raises(ChannelClosed):
            await ch.submit("too late")
        # the new relay first gets the old query's answer (stale), stale acks, then ours
        relay = await FakeRelay.connect(ch.path)
        assert await relay.line() == "show neighbor json"
        await relay.send(json.dumps([{"fsm": "IDLE", "peer": {"address": "10.0.0.9"}}]), "done", "done",
                         json.dumps(NEIGHBORS), "done")
        await ch.wait_ready(5)
        await settle(lambda: len(readies) == 2)
        assert neighbor_fsm(readies[1]) == {"10.0.0.1": "ESTABLISHED", "10.0.0.3": "IDLE"}
        future = await ch.submit("announce 2")
        assert await relay.line() == "announce 2"
        await relay.send("done")
        assert await future == "done"
        relay.close()
        await ch.close()
    run(main())


def test_exclusive_waits_for_an_empty_window_and_collects_output(tmp_path):
    async def main():
        ch = Channel(str(tmp_path / "e.sock"), window=4)
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        f1 = await ch.submit("announce 1")
        excl = asyncio.create_task(ch.exclusive("show adj-rib out"))
        assert await relay.line() == "announce 1"
        with pytest.raises(asyncio.TimeoutError):
            await relay.line(timeout=0.2)
        await relay.send("done")
        assert await relay.line() == "show adj-rib out"
        late = asyncio.create_task(ch.submit("announce 2"))  # waits behind the exclusive command
        with pytest.raises(asyncio.TimeoutError):
            await relay.line(timeout=0.2)
        await relay.send("10.0.0.1 ipv4 unicast 203.0.113.5/32 next-hop 10.0.0.2", "done")
        assert await excl == ("done", ["10.0.0.1 ipv4 unicast 203.0.113.5/32 next-hop 10.0.0.2"])
        assert await f1 == "done"
        assert await relay.line() == "announce 2"
        await relay.send("done")
        assert await (await late) == "done"
        relay.close()
        await ch.close()
    run(main())


def test_reader_drains_everything_while_nobody_consumes(tmp_path):
    """The reader only does bookkeeping: a flood of output is read even though no task awaits
    the results (a stalled consumer must not stall ExaBGP's blocking writes, docs/reference/exabgp-api.md §7)."""
    async def main():
        events = []
        ch = Channel(str(tmp_path / "f.sock"), on_event=events.append)
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        futures = [await ch.submit(f"cmd {i}") for i in range(ch.window)]
        line = json.dumps({"type": "update", "pad": "x" * 200})
        # ~5 MB: far more than the socket buffers; send() returns only when it was all read
        await asyncio.wait_for(relay.send(*[line] * 20000, *["done"] * ch.window), 60)
        await settle(lambda: len(events) == 20000)
        assert all(f.done() for f in futures)
        relay.close()
        await ch.close()
    run(main())


def test_commands_must_be_single_lines(tmp_path):
    async def main():
        ch = Channel(str(tmp_path / "g.sock"))
        await ch.start()
        with pytest.raises(ValueError):
            await ch.submit("announce\nclear adj-rib out")
        await ch.close()
    run(main())


def test_barrier_answer_is_delivered_before_the_events_that_follow_it(tmp_path):
    """A newer `up` event in the same read as the barrier's answer must be seen after it
    (otherwise the older `fsm` snapshot would overwrite the newer event)."""
    async def main():
        order = []
        ch = Channel(str(tmp_path / "h.sock"), on_event=lambda e: order.append(("event", e["state"])),
                     on_ready=lambda n: order.append(("ready", neighbor_fsm(n)["10.0.0.1"])))
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        assert await relay.line() == "show neighbor json"
        await relay.send(json.dumps([{"fsm": "OPENCONFIRM", "peer": {"address": "10.0.0.1"}}]), "done",
                         json.dumps({"type": "state", "state": "up"}))
        await settle(lambda: len(order) == 2)
        assert order == [("ready", "OPENCONFIRM"), ("event", "up")]
        relay.close()
        await ch.close()
    run(main())


def test_a_new_exabgp_owes_no_stale_barrier_answers(tmp_path):
    async def main():
        readies = []
        ch = Channel(str(tmp_path / "i.sock"), on_ready=readies.append)
        await ch.start()
        relay = await FakeRelay.connect(ch.path)
        assert await relay.line() == "show neighbor json"
        relay.close()  # barrier never answered on this connection
        await settle(lambda: not ch._conn)
        ch.new_process()  # ... and the ExaBGP that owed the answer is gone
        relay = await FakeRelay.connect(ch.path)
        await relay.pass_barrier()
        await ch.wait_ready(5)
        assert neighbor_fsm(readies[0])["10.0.0.1"] == "ESTABLISHED"
        relay.close()
        await ch.close()
    run(main())

"""Each node's peers through a real nats-server: one key per peer, fenced per node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kled.bus.embedded import EmbeddedNats
from kled.bus.office import ConnectOptions, MessageOffice, PeerChange
from kled.control.netmap import Netmap
from kled.control.peersync import PeerPublisher
from kled.errors import Forbidden
from peerkit import device, key, mesh, node
from servers import control_office


@pytest.fixture
async def control(embedded: EmbeddedNats) -> AsyncIterator[MessageOffice]:
    office = control_office(embedded)
    await office.connect()
    await office.ensure_streams()
    try:
        yield office
    finally:
        await office.close()


async def as_node(embedded: EmbeddedNats, name: str) -> MessageOffice:
    creds = await embedded.add_node(name)
    office = MessageOffice(
        ConnectOptions(
            url=embedded.url, user=creds.user, password=creds.password, node=name,
            request_timeout=1, publish_retry_for=0.5,
        )
    )  # fmt: skip
    await office.connect()
    return office


class Watcher:
    """A node's view of its peers, as the agent keeps it."""

    def __init__(self, office: MessageOffice, node: str) -> None:
        self.peers: dict[str, str] = {}  # "team/name" → public key
        self.known = asyncio.Event()
        self.changes: asyncio.Queue[PeerChange] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(office, node))

    async def _run(self, office: MessageOffice, node: str) -> None:
        async for change in office.watch_peers(node, heartbeat=0.5):
            if change is None:
                self.known.set()
                continue
            name = f"{change.team}/{change.name}"
            if change.peer is None:
                self.peers.pop(name, None)
            else:
                self.peers[name] = change.peer.public_key
            await self.changes.put(change)

    async def next(self) -> PeerChange:
        return await asyncio.wait_for(self.changes.get(), 30)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 30)


async def publisher(control: MessageOffice, netmap: Netmap) -> PeerPublisher:
    pub = PeerPublisher(control)
    await pub.start(netmap)
    await asyncio.wait_for(pub.settled(), 30)
    return pub


async def test_a_node_sees_its_whole_set_then_each_change_and_only_its_own(
    embedded: EmbeddedNats, control: MessageOffice
) -> None:
    netmap = mesh(3, devices=1)
    pub = await publisher(control, netmap)
    assert pub.writes == 3 * 3
    n1 = await as_node(embedded, "n1")
    watcher = Watcher(n1, "n1")
    try:
        await asyncio.wait_for(watcher.known.wait(), 30)
        assert watcher.peers == {
            "acme/node-n2": key(2), "acme/node-n3": key(3), "acme/device-d1": key(1001)
        }  # fmt: skip
        while not watcher.changes.empty():
            watcher.changes.get_nowait()

        # A device joining: one key per node, and n1 hears of exactly its own.
        before = pub.writes
        pub.apply(netmap.join(device(2)), netmap)
        change = await watcher.next()
        assert (change.team, change.name) == ("acme", "device-d2")
        assert change.peer is not None and change.peer.public_key == key(1002)
        await asyncio.wait_for(pub.settled(), 30)
        assert pub.writes - before == 3

        # A node leaving: removed from n1's set.
        pub.apply(netmap.leave("acme/node/n3"), netmap)
        change = await watcher.next()
        assert (change.name, change.peer) == ("node-n3", None)
        assert "acme/node-n3" not in watcher.peers

        # n1 may not read n2's peers.
        with pytest.raises(Forbidden):
            await anext(n1.watch_peers("n2", heartbeat=0.5))
    finally:
        await watcher.close()
        await n1.close()
        await pub.stop()


async def test_a_restarted_control_plane_writes_only_what_changed_meanwhile(
    control: MessageOffice,
) -> None:
    netmap = mesh(5, devices=2)
    first = await publisher(control, netmap)
    await first.stop()
    again = await publisher(control, netmap)
    assert again.writes == 0
    await again.stop()
    netmap.leave("acme/device/d2")
    third = await publisher(control, netmap)
    assert third.writes == 5  # d2 removed from each node's map, nothing else
    await third.stop()
    assert sorted(await control.peer_entries()) == sorted(third.book.want)


async def test_changes_made_while_nats_is_down_arrive_after_it_is_back(
    embedded: EmbeddedNats, control: MessageOffice
) -> None:
    netmap = mesh(2)
    pub = await publisher(control, netmap)
    n1 = await as_node(embedded, "n1")
    watcher = Watcher(n1, "n1")
    try:
        await asyncio.wait_for(watcher.known.wait(), 30)
        await embedded.stop()
        pub.apply(netmap.join(node(7)), netmap)  # written once NATS is back
        await embedded.start()  # same port, same storage
        await asyncio.wait_for(pub.settled(), 60)
        while "acme/node-n7" not in watcher.peers:
            await watcher.next()
        assert watcher.peers == {"acme/node-n2": key(2), "acme/node-n7": key(7)}
    finally:
        await watcher.close()
        await n1.close()
        await pub.stop()

"""Each node's WireGuard peers, kept in the Message Office one key per peer.

A node's peers are not part of its desired state: a node joining a team of N nodes would
then rewrite N whole states (N² peers in all). Instead every (recipient node, team, peer)
is one key of the peers bucket, ``<node>.<team>.<kind>-<name>``, holding the peer as the
recipient must configure it (``kled.resources.netstate.Peer``). A netmap change writes
only the keys it touches: a device joining a team of N nodes is N writes, a node joining
2N, a node's endpoint changing N. Agents watch their own keys (``MessageOffice.
watch_peers``): the current values when they (re)connect, then each change.

``PeerBook`` is the pure part: what the bucket must hold, kept from the netmap's deltas,
and which keys differ from what was last written. ``PeerPublisher`` writes those keys,
retrying while the Message Office is away, so no change is lost; at start it reads the
bucket back and writes only the differences, so a control-plane restart costs no writes
when nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from kled.control.hostnet import wg_peer
from kled.control.netmap import Deltas, Netmap, Peer
from kled.resources.netstate import Peer as WgPeer

log = logging.getLogger(__name__)

#: how many keys one flush writes at once (published concurrently, each acknowledged)
FLUSH_BATCH = 256


def peer_key(recipient: str, peer_id: str) -> str | None:
    """The bucket key of ``peer_id`` in the map of ``recipient``; None unless the
    recipient is a node (devices are not on the Message Office)."""
    _, kind, node = _split(recipient)
    if kind != "node":
        return None
    peer_team, peer_kind, name = _split(peer_id)
    return f"{node}.{peer_team}.{peer_kind}-{name}"


def _split(peer_id: str) -> tuple[str, str, str]:
    team, _, rest = peer_id.partition("/")
    kind, _, name = rest.partition("/")
    return team, kind, name


def _value(peer: Peer) -> bytes | None:
    converted = wg_peer(peer)
    return None if converted is None else converted.model_dump_json().encode()


class PeerBook:
    """What the peers bucket must hold (``want``) and which keys must be written."""

    def __init__(self) -> None:
        self.want: dict[str, bytes] = {}
        #: what the bucket holds, as far as we know (read at start, then our writes)
        self.have: dict[str, bytes] = {}
        self.dirty: set[str] = set()
        #: (node, team) → the keys of that recipient's map, to drop them when it leaves
        self._by_recipient: dict[tuple[str, str], set[str]] = {}

    def _set(self, key: str, value: bytes | None) -> None:
        node, team, _ = key.split(".", 2)
        keys = self._by_recipient.setdefault((node, team), set())
        if value is None:
            self.want.pop(key, None)
            keys.discard(key)
            if not keys:
                del self._by_recipient[(node, team)]
        else:
            self.want[key] = value
            keys.add(key)
        self._mark(key)

    def _mark(self, key: str) -> None:
        if self.want.get(key) != self.have.get(key):
            self.dirty.add(key)
        else:
            self.dirty.discard(key)

    def load(self, netmap: Netmap, have: dict[str, bytes]) -> None:
        """Everything, from the whole netmap and what the bucket holds (at start)."""
        self.want.clear()
        self._by_recipient.clear()
        self.have = dict(have)
        for peer in netmap.peers():
            if peer.kind != "node":
                continue
            for other in netmap.full_map(peer.id):
                key = peer_key(peer.id, other.id)
                value = _value(other)
                if key is not None and value is not None:
                    self._set(key, value)
        self.dirty = {k for k in set(self.want) | set(self.have) if not self._same(k)}

    def _same(self, key: str) -> bool:
        return self.want.get(key) == self.have.get(key)

    def apply(self, deltas: Deltas, netmap: Netmap) -> int:
        """Follow one netmap change; returns how many keys it touched."""
        touched = 0
        for recipient, delta in deltas.items():
            for peer_id in delta.removed:
                key = peer_key(recipient, peer_id)
                if key is not None:
                    self._set(key, None)
                    touched += 1
                if peer_id not in netmap:
                    touched += self._drop_recipient(peer_id)
            for peer in (*delta.added, *delta.updated):
                key = peer_key(recipient, peer.id)
                if key is not None:
                    self._set(key, _value(peer))
                    touched += 1
        return touched

    def _drop_recipient(self, peer_id: str) -> int:
        """A node that left its team's mesh: its own map goes too."""
        team, kind, node = _split(peer_id)
        if kind != "node":
            return 0
        keys = list(self._by_recipient.get((node, team), ()))
        for key in keys:
            self._set(key, None)
        return len(keys)

    def take(self, limit: int) -> list[tuple[str, bytes | None]]:
        """Up to ``limit`` keys to write, with their values (None: delete)."""
        out = []
        for key in list(self.dirty)[:limit]:
            out.append((key, self.want.get(key)))
        return out

    def written(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.have.pop(key, None)
        else:
            self.have[key] = value
        self._mark(key)

    def keys_of(self, node: str) -> list[str]:
        return sorted(k for k in self.want if k.split(".", 1)[0] == node)


class PeerBucket(Protocol):
    """The Message Office's peers bucket, as the publisher needs it."""

    async def put_peer(self, key: str, peer: WgPeer) -> int: ...

    async def delete_peer(self, key: str) -> int: ...

    async def peer_entries(self) -> dict[str, bytes]: ...


class PeerPublisher:
    """Writes the netmap's changes to the peers bucket, in the background, until they
    are acknowledged."""

    def __init__(self, bucket: PeerBucket) -> None:
        self.bucket = bucket
        self.book = PeerBook()
        #: keys written since start (puts and deletes), for tests and benchmarks
        self.writes = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, netmap: Netmap) -> None:
        have = await self.bucket.peer_entries()
        self.book.load(netmap, have)
        log.info(
            "peersync: %d peer keys, %d to write after start",
            len(self.book.want),
            len(self.book.dirty),
        )
        self._task = asyncio.create_task(self._run(), name="peersync")
        self._wake.set()

    async def reload(self, netmap: Netmap) -> None:
        """Take a netmap built anew (not by deltas): write what differs from the bucket."""
        self.book.load(netmap, await self.bucket.peer_entries())
        if self.book.dirty:
            self._idle.clear()
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def apply(self, deltas: Deltas, netmap: Netmap) -> None:
        """Follow one netmap change (``netmap`` as it is after it)."""
        if self.book.apply(deltas, netmap):
            self._idle.clear()
            self._wake.set()

    async def settled(self) -> None:
        """Wait until every change so far is in the bucket."""
        while self.book.dirty:
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.book.dirty:
                batch = self.book.take(FLUSH_BATCH)
                results = await asyncio.gather(
                    *(self._write(k, v) for k, v in batch), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    log.warning(
                        "peersync: %d of %d writes failed (%s); retrying",
                        len(failed),
                        len(batch),
                        failed[0],
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
            self._idle.set()

    async def _write(self, key: str, value: bytes | None) -> None:
        if value is None:
            await self.bucket.delete_peer(key)
        else:
            await self.bucket.put_peer(key, WgPeer.model_validate_json(value))
        self.writes += 1
        self.book.written(key, value)

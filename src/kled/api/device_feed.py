"""Pushes each device's peer-set changes to the devices that follow them.

A device configured once (``kled device join``) keeps the peers of that moment: a node
that joins the team later, or one whose endpoint moves, would never reach it. A device
that follows its peer set (``kled device join --follow``) holds open
``GET /api/v1/teams/{team}/devices/{name}/wireguard/watch``, a stream of Server-Sent Events
in the form of the resource watches (``id``, ``event``, and ``data`` holding
``{"type": ..., "object": ...}``, so the CLI's ``Client.watch`` reads it):

- ``config`` first: exactly what ``GET .../wireguard`` answers, the whole configuration;
- then one ``delta`` per change of the device's peer set, ``{"added": [peer...],
  "removed": [peer id...], "updated": [peer...]}``, peers in the config's JSON form;
- ``config`` again whenever the deltas can no longer be trusted to add up: the follower fell
  more than ``MAX_PENDING`` changes behind, or the device itself left the mesh (a device
  deleted meanwhile ends the stream instead, and reconnecting says 404);
- a comment line every ``KEEPALIVE`` seconds, so that a quiet stream stays open through
  proxies and a vanished reader is noticed.

``DeviceFeeds`` is fed every netmap change by ``MeshServices`` and keeps, per open stream,
the deltas that stream has not sent yet. A stream subscribes before it reads the config, so
no change falls between the two; a change it then hears twice is harmless, since adding a
peer a device has, or removing one it lacks, changes nothing. Nothing is kept for devices
nobody follows, and a reconnecting device starts over with a fresh ``config``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.aio import wait_event
from kled.api import openapi
from kled.api.addresses import reachable_endpoint, request_addresses
from kled.api.rest import User, service
from kled.api.service import Service
from kled.control.hostnet import wg_peer
from kled.control.netmap import Deltas, Peer, PeerDelta
from kled.errors import KledError
from kled.store.objects import Key

if TYPE_CHECKING:
    from kled.api.mesh import MeshServices

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")

#: changes kept for a stream that has not sent them yet; past this it is sent a new config
MAX_PENDING = 256
#: seconds between two keep-alive comments of a quiet stream
KEEPALIVE = 15.0
#: the keepalive a device keeps with every node (they judge a silent device offline at 15 s)
DEVICE_KEEPALIVE = 5


def device_peer_id(team: str, name: str) -> str:
    """The device's id as a netmap recipient."""
    return f"{team}/device/{name}"


class Follower:
    """One open watch of a device: the deltas it has not sent, or its need of a config."""

    def __init__(self, device: str, limit: int = MAX_PENDING) -> None:
        self.device = device
        self.limit = limit
        self.pending: deque[PeerDelta] = deque()
        #: the next event must be a whole ``config``; pending deltas are moot until then
        self.resync = False
        self._ready = asyncio.Event()

    def push(self, delta: PeerDelta) -> None:
        if self.resync:
            return  # the coming config includes it
        if len(self.pending) >= self.limit:
            log.info(
                "device/%s: follower fell %d changes behind; resyncing", self.device, self.limit
            )
            self.need_resync()
            return
        self.pending.append(delta)
        self._ready.set()

    def need_resync(self) -> None:
        self.pending.clear()
        self.resync = True
        self._ready.set()

    async def wait(self, timeout: float) -> bool:
        """Whether something is pending, waiting up to ``timeout`` seconds for it."""
        return await wait_event(self._ready, timeout)

    def take(self) -> tuple[bool, list[PeerDelta]]:
        """(whether a whole config is due, the deltas to send otherwise), emptying both."""
        resync, deltas = self.resync, list(self.pending)
        self.resync = False
        self.pending.clear()
        self._ready.clear()
        return resync, [] if resync else deltas


class DeviceFeeds:
    """Per-device streams of netmap deltas, for the devices being followed."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._followers: dict[str, set[Follower]] = {}

    def follow(self, team: str, name: str) -> Follower:
        device = device_peer_id(team, name)
        follower = Follower(device, self.limit)
        self._followers.setdefault(device, set()).add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        followers = self._followers.get(follower.device)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[follower.device]

    def following(self, team: str, name: str) -> int:
        """How many streams follow the device."""
        return len(self._followers.get(device_peer_id(team, name), ()))

    def publish(self, deltas: Deltas) -> None:
        """Called by ``MeshServices`` with every netmap change (all recipients)."""
        if not self._followers:
            return
        # A followed device that left the mesh (deleted, or its key withdrawn) is in the
        # ``removed`` of its nodes' deltas, not in a delta of its own.
        gone = {peer_id for d in deltas.values() for peer_id in d.removed}
        for device, followers in self._followers.items():
            delta = deltas.get(device)
            for follower in followers:
                if device in gone:
                    follower.need_resync()
                elif delta:
                    follower.push(delta)

    def resync_all(self) -> None:
        """Send every follower a whole config, for a netmap rebuilt without deltas."""
        for followers in self._followers.values():
            for follower in followers:
                follower.need_resync()


# ---- the JSON a device is sent ------------------------------------------------------------


def peer_json(peer: Peer, local: str | None) -> dict[str, Any] | None:
    """A peer as ``GET .../wireguard`` lists it; None if it cannot be configured."""
    wg = wg_peer(peer)
    if wg is None:
        return None
    return {
        "id": peer.id,
        "publicKey": wg.public_key,
        "endpoint": reachable_endpoint(wg.endpoint, local),
        "allowedIPs": list(wg.allowed_ips),
        "persistentKeepalive": min(wg.persistent_keepalive or DEVICE_KEEPALIVE, DEVICE_KEEPALIVE),
    }


def delta_json(delta: PeerDelta, local: str | None) -> dict[str, Any]:
    def peers(items: list[Peer]) -> list[dict[str, Any]]:
        return [p for p in (peer_json(peer, local) for peer in items) if p is not None]

    return {
        "added": peers(delta.added),
        "removed": list(delta.removed),
        "updated": peers(delta.updated),
    }


def _event(seq: int, kind: str, obj: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, "object": obj})
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()


# ---- the route ---------------------------------------------------------------------------


@router.get(
    "/teams/{team}/devices/{name}/wireguard/watch",
    tags=["Device"],
    responses=openapi.stream("text/event-stream", "the device's config, then its changes"),
)
async def device_wireguard_watch(
    request: Request, team: str, name: str, user: UserInfo = User
) -> Response:
    mesh: MeshServices = request.app.state.mesh
    svc = service(request)
    via, local = request_addresses(request)
    # Refusals (403, 404, 503) as ordinary answers, before the stream starts.
    await mesh.device_config(svc, user, team, name, via, local)
    return StreamingResponse(
        _follow(mesh, svc, user, team, name, via, local),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _follow(
    mesh: MeshServices,
    svc: Service,
    user: UserInfo,
    team: str,
    name: str,
    via: str | None,
    local: str | None,
) -> AsyncIterator[bytes]:
    # Subscribed here rather than in the route: a stream that never starts leaves nothing.
    follower = mesh.feeds.follow(team, name)
    seq = itertools.count(1)
    try:
        yield b": following\n\n"
        resync = True
        deltas: list[PeerDelta] = []
        while True:
            if resync:
                try:
                    config = await mesh.device_config(svc, user, team, name, via, local)
                except KledError as e:
                    # Deleted, or no longer readable by this user: reconnecting says why.
                    log.info("device/%s/%s: watch ended: %s", team, name, e)
                    return
                yield _event(next(seq), "config", config)
            for delta in deltas:
                body = delta_json(delta, local)
                if any(body.values()):
                    yield _event(next(seq), "delta", body)
            if not await follower.wait(KEEPALIVE):
                # A device deleted while its team had no node produced no delta to say so.
                try:
                    await svc.get(user, Key("Device", team, "", name))
                except KledError as e:
                    log.info("device/%s/%s: watch ended: %s", team, name, e)
                    return
                yield b": keepalive\n\n"
                resync, deltas = False, []
                continue
            resync, deltas = follower.take()
    finally:
        mesh.feeds.unfollow(follower)

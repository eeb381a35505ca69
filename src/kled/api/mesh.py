"""The control plane's side of the team meshes: addresses, DNS, and what devices need.

``MeshServices`` owns the mesh parts of a running control plane: the DNS server
(authoritative for the team zones, on ``--dns-listen``), the mesh controller that gives
out addresses and keeps DNS records and peer sets in step with the resources, and an
admission check that refuses a Team whose ``spec.block`` cannot be had (422 naming
``spec.block``, nothing stored). When the host side hands it the workload controller's
sink (``compose``), it also publishes every host's network through a
``HostStateComposer``.

The pods of a host ask its agent's relay, which forwards from the host's own namespace to
the DNS server; so each node is told the DNS server at the address of this machine that
the node's packets arrive at (the source of our route to ``Node.spec.address``, the address
the agent reached the API at on an underlay). A server whose ``--dns-listen`` is on
loopback, the default, also listens at that address, on the same port where it is free —
never on every interface unless told to (``--dns-listen 0.0.0.0:PORT``); one pinned to an
address of its own is advertised there to everyone.

Its routes list the address allocations (``kled ip list``) and give a device what it needs
to join its team's mesh (``kled device join`` / ``kled device config``): its address, the
team block, the DNS server and the peers. The device's private key never reaches us.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kled.admission.request import AdmissionRequest, HookResult, Operation, UserInfo
from kled.api import authz
from kled.api.addresses import (
    WILDCARDS,
    host_port,
    is_loopback,
    request_addresses,
    route_source,
)
from kled.api.device_feed import DeviceFeeds, peer_json
from kled.api.rest import User, service
from kled.api.service import Service
from kled.control.hostnet import (
    HostStateComposer,
    StateSink,
    pod_ips_by_app,
    snapshot_from_documents,
)
from kled.control.ipam import Ipam
from kled.control.meshctl import MeshController, RecordSet
from kled.control.netdocs import KINDS as NETWORK_KINDS
from kled.control.netdocs import NetworkDocs
from kled.control.netmap import Deltas
from kled.control.peersync import PeerBucket, PeerPublisher
from kled.control.workspaces import write_addresses
from kled.dns.forward import parse_upstream
from kled.dns.server import DnsServer
from kled.errors import Conflict, Forbidden, Gone, InvalidInput, KledError, NotFound, Unavailable
from kled.resources.registry import kind_info
from kled.settings import ServerSettings
from kled.store.objects import Key, Store

log = logging.getLogger(__name__)

#: the longest pause between two recomputations of the host networks (seconds)
MAX_NETWORK_PAUSE = 2.0

_STATUS_TRIES = 8
#: apps whose ``status.podIPs`` are written in one transaction
POD_IP_BATCH = 100


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"{value!r} is not host:port", field="--dns-listen")
    return host.strip("[]") or "0.0.0.0", int(port)


class MeshServices:
    def __init__(self, settings: ServerSettings, svc: Service) -> None:
        self.settings = settings
        self.service = svc
        self.store: Store = svc.store
        self.ipam = Ipam(svc.store.db)
        self.dns: DnsServer | None = None
        self.controller: MeshController | None = None
        self.composer: HostStateComposer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        #: devices following their peer set (``kled device join --follow``)
        self.feeds = DeviceFeeds()
        #: writes each node's peers to the Message Office (set by ``attach_peers``)
        self.peers: PeerPublisher | None = None
        #: how many times the host networks were recomputed (tests, benchmarks)
        self.publishes = 0
        #: each team's records as the mesh controller sent them, and its workspaces' pod
        #: IPs (``<ws>.<team>.<zone>``, named like devices; a device of the same name wins)
        self._team_records: dict[str, RecordSet] = {}
        self._workspace_ips: dict[str, dict[str, str]] = {}

    # ---- lifetime ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.service.chain.add_validating(self.check_team)
        upstreams = [parse_upstream(u) for u in s.dns_upstreams] or None
        self.dns = DnsServer(parse_listen(s.dns_listen), upstreams)
        await self.dns.start()
        self.controller = MeshController(
            self.store,
            self.ipam,
            on_records=self._records,
            on_netmap=self._netmap,
            on_rebuilt=self._rebuilt,
            default_zone=s.zone,
        )
        try:
            await self.controller.start()
        except BaseException:
            await self.dns.stop()
            raise

    async def stop(self) -> None:
        if self.peers is not None:
            await self.peers.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.controller is not None:
            await self.controller.stop()
        if self.dns is not None:
            await self.dns.stop()

    @property
    def dns_port(self) -> int:
        assert self.dns is not None, "MeshServices is not started"
        return self.dns.port

    def dns_address(self, via_host: str | None = None) -> str:
        """host:port of the DNS server as a client should be told it."""
        host = self.dns.listen[0] if self.dns is not None else "127.0.0.1"
        if host in WILDCARDS:
            host = via_host or "127.0.0.1"
        return host_port(host, self.dns_port)

    async def dns_at(self, local: str | None) -> str:
        """host:port of the DNS server for a client that reaches this machine at ``local``
        (one of its addresses; None: unknown), listening there first if need be."""
        dns = self.dns
        if dns is None or local is None:
            return self.dns_address()
        bound = dns.listen[0]
        if bound in WILDCARDS:
            return host_port(local, dns.port)
        if not is_loopback(bound) or is_loopback(local):
            return self.dns_address()  # pinned by --dns-listen, or a client on this machine
        try:
            return host_port(local, await dns.listen_also(local))
        except OSError as e:
            log.warning("dns: cannot listen on %s (%s); advertising %s", local, e, bound)
            return self.dns_address()

    async def node_dns(self, nodes: list[dict[str, Any]]) -> dict[str, str]:
        """Node → the DNS server's address as that node reaches this machine."""
        out: dict[str, str] = {}
        for node in nodes:
            meta, spec = node.get("metadata") or {}, node.get("spec") or {}
            if meta.get("deletionTimestamp"):
                continue
            out[str(meta["name"])] = await self.dns_at(route_source(spec.get("address")))
        return out

    def compose(self, inner: StateSink) -> HostStateComposer:
        """Wrap the workload controller's sink so that each host's state carries its
        network; from then on, mesh changes are published to the hosts too."""
        self.composer = HostStateComposer(inner)
        self.composer.on_workspace_ips = self._workspaces_moved
        if self._task is None:
            self._task = asyncio.create_task(self._publish_networks(), name="hostnet")
        self._changed.set()
        return self.composer

    async def attach_peers(self, bucket: PeerBucket) -> PeerPublisher:
        """From now on, write every node's peers to ``bucket`` (the Message Office)."""
        assert self.controller is not None, "MeshServices is not started"
        self.peers = PeerPublisher(bucket)
        await self.peers.start(self.controller.netmap)
        return self.peers

    # ---- callbacks from the mesh controller -----------------------------------------

    def _records(self, team: str, records: RecordSet | None) -> None:
        if records is None:
            self._team_records.pop(team, None)
        else:
            self._team_records[team] = records
        self._apply_records(team)

    def _apply_records(self, team: str) -> None:
        if self.dns is None:
            return
        records = self._team_records.get(team)
        workspaces = self._workspace_ips.get(team)
        if records is not None and workspaces:
            records = records.copy()
            records.devices = {**workspaces, **records.devices}
        self.dns.apply(team, records)

    async def _workspaces_moved(self, ips: dict[str, dict[str, str]]) -> None:
        before, self._workspace_ips = self._workspace_ips, ips
        for team in sorted(set(before) | set(ips)):
            old, new = before.get(team, {}), ips.get(team, {})
            if old == new:
                continue
            if team in self._team_records:
                self._apply_records(team)
            changed = {n: new.get(n) for n in set(old) | set(new) if old.get(n) != new.get(n)}
            await write_addresses(self.store, team, changed)

    def _netmap(self, deltas: Deltas) -> None:
        if self.peers is not None and self.controller is not None:
            self.peers.apply(deltas, self.controller.netmap)
        self.feeds.publish(deltas)

    async def _rebuilt(self) -> None:
        """The controller built its netmap again without deltas (it fell behind the
        compacted log): every follower gets a whole config, the peers bucket the
        differences."""
        self.feeds.resync_all()
        if self.peers is not None and self.controller is not None:
            await self.peers.reload(self.controller.netmap)

    # ---- admission -----------------------------------------------------------------

    async def check_team(self, request: AdmissionRequest) -> HookResult:
        """A Team's requested block must be free (or already the team's): checked
        without allocating, so a refused Team leaves nothing behind."""
        if request.kind != "Team" or request.object is None:
            return HookResult()
        if request.operation == Operation.DELETE:
            return HookResult()
        block = (request.object.get("spec") or {}).get("block")
        await self.ipam.check_team_block(request.name, block)
        return HookResult()

    # ---- host networks -------------------------------------------------------------

    async def _publish_networks(self) -> None:
        """Follow the event log; recompute the host networks when a field they depend on
        changed (not on every heartbeat), at most every 0.2 s (or twice as long as the
        last took, up to ``MAX_NETWORK_PAUSE``), from memory."""
        docs = NetworkDocs()
        seq = -1
        while True:
            try:
                if seq < 0:
                    seq = await self.store.revision()
                    for kind in NETWORK_KINDS:
                        docs.load(kind, (await self.store.list(kind)).items)
                    self._changed.set()
                batch = await self.store.events_after(seq, 1000)
                for event in batch:
                    if docs.apply(event):
                        self._changed.set()
                    seq = event.seq
                if self._changed.is_set():
                    self._changed.clear()
                    began = time.monotonic()
                    await self.publish_networks(docs)
                    # at most every 0.2 s, and not more than a third of the time (with
                    # many nodes a recomputation is long, and back to back they starved
                    # everything else: heartbeats went unhandled, nodes NotReady), but
                    # never a pause over 2 s: a slow round (a busy machine) must not
                    # hold the next change back for long
                    took = time.monotonic() - began
                    await asyncio.sleep(min(max(0.2, 2 * took), MAX_NETWORK_PAUSE))
                    continue
                if batch:
                    continue
            except asyncio.CancelledError:
                raise
            except Gone:  # fell behind the compacted event log: read everything again
                log.warning("hostnet: events were compacted before being read; listing again")
                seq = -1
                continue
            except Exception:
                log.exception("hostnet: publishing host networks failed; retrying")
                seq = -1  # read everything again
                await asyncio.sleep(1.0)
            await self.store.wait_for_change(1.0)

    async def publish_networks(self, docs: NetworkDocs) -> None:
        if self.composer is None or self.controller is None:
            return
        nodes = docs.items("Node")
        services = docs.items("App", "ManagedService")
        snapshot = snapshot_from_documents(
            teams=docs.items("Team"),
            nodes=nodes,
            services=services,
            devices=docs.items("Device"),
            intercepts=docs.items("Intercept"),
            dns_server=self.dns_address(),
            node_dns=await self.node_dns(nodes),
        )
        self.publishes += 1
        await self.composer.set_mesh(snapshot)
        await self._write_pod_ips(services)

    async def _write_pod_ips(self, apps: list[dict[str, Any]]) -> None:
        """Keep ``App.status.podIPs`` equal to the pod IPs given, for restarts."""
        assert self.composer is not None
        given = pod_ips_by_app(self.composer.book)
        changes = []
        for doc in apps:
            if doc.get("kind") != "App":
                continue
            m = doc["metadata"]
            ref = (m["team"], m.get("environment") or "", m["name"])
            wanted = given.get(ref, {})
            if ((doc.get("status") or {}).get("podIPs") or {}) != wanted:
                changes.append((Key("App", *ref), _with_pod_ips(wanted)))
        for at in range(0, len(changes), POD_IP_BATCH):  # many apps to a transaction
            chunk = changes[at : at + POD_IP_BATCH]
            try:
                await self.store.update_statuses(chunk)
            except Unavailable:
                raise
            except KledError as e:  # one out of bounds, say: each alone, as before
                log.warning("hostnet: a batch of %d pod IP writes failed (%s)", len(chunk), e)
                for key, _ in chunk:
                    await self._set_pod_ips(
                        key, given.get((key.team, key.environment, key.name), {})
                    )

    async def _set_pod_ips(self, key: Key, ips: dict[str, str]) -> None:
        for _ in range(_STATUS_TRIES):
            doc = await self.store.find(key)
            if doc is None or (doc.get("metadata") or {}).get("deletionTimestamp"):
                return
            status = copy.deepcopy(doc.get("status") or {})
            if ips:
                status["podIPs"] = ips
            else:
                status.pop("podIPs", None)
            if status == (doc.get("status") or {}):
                return
            try:
                await self.store.update_status(
                    key, status, expected_version=doc["metadata"]["resourceVersion"]
                )
                return
            except NotFound:
                return
            except Conflict:
                continue

    # ---- what the routes answer ------------------------------------------------------

    async def allocations(self, team: str | None) -> list[dict[str, Any]]:
        return [a.as_dict() for a in await self.ipam.list(team)]

    async def device_config(
        self,
        svc: Service,
        user: UserInfo,
        team: str,
        name: str,
        via_host: str | None,
        local: str | None = None,
    ) -> dict[str, Any]:
        """What the device needs to join its team's mesh; ``local`` is the address of this
        machine its request came in at (the DNS is offered there), ``via_host`` the name it
        used (offered when the DNS listens everywhere and ``local`` is unknown)."""
        device = await svc.get(user, Key("Device", team, "", name))
        spec, status = device.get("spec") or {}, device.get("status") or {}
        mine = spec.get("owner") == user.username and user.team == team
        if not (mine or user.server_admin or authz.rank(user.role) >= authz.rank("admin")):
            raise Forbidden(
                f"device/{team}/{name} belongs to {spec.get('owner')}: only its owner or a team"
                " admin may read its mesh configuration"
            )
        ip = status.get("ip")
        layout = await self.ipam.team_block(team)
        if not ip or layout is None or self.controller is None:
            raise Unavailable(f"device/{team}/{name} has no mesh address yet; try again shortly")
        team_doc = await self.store.find(Key("Team", "", "", team))
        zone = self.controller.zone_of((team_doc or {}).get("spec") or {})
        device_map = self.controller.netmap.device_map(team)
        peers = [p for p in (peer_json(peer, local) for peer in device_map) if p is not None]
        return {
            "team": team,
            "device": name,
            "publicKey": spec.get("publicKey"),
            "address": f"{ip}/32",
            "meshIP": ip,
            "block": str(layout.block),
            "dns": await self.dns_at(local) if local else self.dns_address(via_host),
            "zone": f"{team}.{zone}",
            "searchDomains": [f"{team}.{zone}"],
            "peers": peers,
        }


router = APIRouter(prefix="/api/v1")


def _mesh(request: Request) -> MeshServices:
    mesh: MeshServices = request.app.state.mesh
    return mesh


@router.get("/ips")
async def all_ips(request: Request, user: UserInfo = User) -> Response:
    if not user.server_admin:
        raise Forbidden("only the server administrator may list every team's addresses")
    return JSONResponse({"items": await _mesh(request).allocations(None)})


@router.get("/teams/{team}/ips")
async def team_ips(request: Request, team: str, user: UserInfo = User) -> Response:
    authz.authorize(user, "get", kind_info("Device"), team, f"team/{team}/ips")
    mesh = _mesh(request)
    if await mesh.store.find(Key("Team", "", "", team)) is None:
        raise NotFound(f"team/{team} not found")
    return JSONResponse({"items": await mesh.allocations(team)})


@router.get("/teams/{team}/devices/{name}/wireguard")
async def device_wireguard(
    request: Request, team: str, name: str, user: UserInfo = User
) -> Response:
    via, local = request_addresses(request)
    config = await _mesh(request).device_config(service(request), user, team, name, via, local)
    return JSONResponse(config)


def _with_pod_ips(ips: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An app's status with ``podIPs`` set to ``ips`` (none: taken out)."""

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        status = copy.deepcopy(doc.get("status") or {})
        if ips:
            status["podIPs"] = ips
        else:
            status.pop("podIPs", None)
        return status

    return change

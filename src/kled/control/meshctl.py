"""The mesh controller: addresses, DNS records and peer sets follow the resources.

It follows the store's event log from a remembered sequence and, for each change:

- Team created or changed: the team's block (``spec.block`` or the next free /16), shown
  in ``status.block``; a mesh address and a pod subnet in the team for every node.
- App or ManagedService: a service IP, written to ``status.ip`` with its DNS name in
  ``status.dns`` (``<name>.<env>.<team>.<zone>``).
- Device: a mesh IP (``status.ip``, ``status.dns`` = ``<device>.<team>.<zone>``); it joins
  the team's netmap once it has a public key. Devices reach the team's service range
  through the team's first node (see ``kled.control.netmap``).
- Node (server-wide): in every team, a mesh IP and a pod subnet, written to
  ``status.mesh.<team>`` as ``ip``, ``podSubnet`` and ``dns``; the node joins a team's
  netmap once its agent has reported the team interface's ``publicKey`` (and
  ``listenPort``) under the same key.
- A deletion: the resource's records and peers go as soon as it is being deleted; its
  addresses are released once the record is gone.

The results leave through two callbacks given by whoever wires the control plane:
``on_records(team, RecordSet | None)`` with the team's whole record set (None when the
team is gone) and ``on_netmap(deltas)`` with the netmap's per-recipient deltas. At start
it rebuilds everything from the store (allocations are persistent and idempotent, so a
restart changes no address) and frees allocations whose owners vanished meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kled.control.ipam import Ipam, Pool
from kled.control.netmap import Deltas, Netmap, Peer
from kled.errors import Conflict, Gone, KledError, NotFound, Unavailable
from kled.resources import clusterservices
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)

DEFAULT_ZONE = "kled.internal"
_SERVICE_KINDS = ("App", "ManagedService")
#: status writes (addresses) left by a rebuild or a step, written in one transaction
BACKLOG_BATCH = 100
_STATUS_TRIES = 8
#: seconds at least between two steps of the loop (the first after a quiet time at once)
STEP_GAP = 0.05


@dataclass(frozen=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class AppRecord:
    ip: str
    ports: tuple[NamedPort, ...] = ()


@dataclass
class RecordSet:
    """One team's DNS records; the same shape as ``kled.dns.records.RecordSet``."""

    zone: str = DEFAULT_ZONE
    apps: dict[tuple[str, str], AppRecord] = field(default_factory=dict)  # (env, name)
    devices: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)

    def copy(self) -> RecordSet:
        return RecordSet(self.zone, dict(self.apps), dict(self.devices), dict(self.nodes))


RecordsCallback = Callable[[str, RecordSet | None], Awaitable[None] | None]
NetmapCallback = Callable[[Deltas], Awaitable[None] | None]


@dataclass
class _Team:
    zone: str
    records: RecordSet
    #: (env, app) → the names of the Kled Cluster Services that App carries
    cluster_names: dict[tuple[str, str], dict[tuple[str, str], AppRecord]] = field(
        default_factory=dict
    )


class MeshController:
    def __init__(
        self,
        store: Store,
        ipam: Ipam,
        *,
        on_records: RecordsCallback | None = None,
        on_netmap: NetmapCallback | None = None,
        on_rebuilt: Callable[[], Awaitable[None]] | None = None,
        poll: float = 1.0,
        default_zone: str = DEFAULT_ZONE,
    ) -> None:
        self.store = store
        self.ipam = ipam
        self.netmap = Netmap()
        self.seq = 0
        self._on_records = on_records
        self._on_netmap = on_netmap
        #: told after a rebuild mid-way (the netmap made anew, no deltas emitted)
        self._on_rebuilt = on_rebuilt
        self._poll = poll
        self.default_zone = default_zone
        self._teams: dict[str, _Team] = {}
        self._nodes: dict[str, dict[str, Any]] = {}  # name → latest Node document
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._rebuilding = False
        # What IPAM gave, so that a resource's every status write costs no query.
        self._given: dict[tuple[str, str, str, str], str] = {}
        # (team, pool) → why it is full, until something in it is released
        self._full: dict[tuple[str, str], str] = {}
        # Status writes the rebuild found wanting: written by the loop, so that the API
        # serves while a first start over thousands of apps catches up.
        self._backlog: dict[Key, Callable[[dict[str, Any]], None]] = {}

    def zone_of(self, spec: dict[str, Any]) -> str:
        """A team's zone: its own, or the server's (``--zone``) when it sets none."""
        zone = spec.get("zone")
        return str(zone) if zone else self.default_zone

    # ---- lifetime ------------------------------------------------------------------

    async def start(self) -> None:
        await self.rebuild()
        self._task = asyncio.create_task(self._loop(), name="meshctl")

    def resume(self) -> None:
        """Run the loop again after ``stop``, from the revision it had reached."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="meshctl")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -STEP_GAP
        while True:
            try:
                # A burst of writes is taken a few events at a time (one batch of
                # addresses, one copy of a team's records), not one step per event.
                await asyncio.sleep(max(0.0, last + STEP_GAP - loop.time()))
                last = loop.time()
                handled = await self.step()
            except Unavailable as e:
                log.warning("meshctl: store unavailable (%s); retrying", e)
                await asyncio.sleep(self._poll)
                continue
            except Gone:  # fell behind the compacted event log: build everything again
                log.warning("meshctl: events were compacted before being read; rebuilding")
                await self.rebuild()
                if self._on_rebuilt is not None:
                    await self._on_rebuilt()
                continue
            if not handled:
                await self.store.wait_for_change(self._poll)

    async def rebuild(self) -> None:
        """Build every team's records and peers from the store, as after a restart."""
        self.seq = await self.store.revision()
        self._rebuilding = True
        try:
            await self._rebuild()
        finally:
            self._rebuilding = False
        await self._flush()
        log.info(
            "meshctl: rebuilt %d teams, %d nodes, %d peers at revision %d",
            len(self._teams),
            len(self._nodes),
            len(self.netmap),
            self.seq,
        )

    async def _rebuild(self) -> None:
        self._teams.clear()
        self._nodes.clear()
        self._given.clear()
        self._full.clear()
        self.netmap = Netmap()
        # Every address given out, in one query rather than one per resource.
        for a in await self.ipam.list():
            if a.pool != "block":
                self._given[(a.team, a.pool, a.owner_kind, a.owner_name)] = a.address
        teams = (await self.store.list("Team")).items
        nodes = (await self.store.list("Node")).items
        for node in nodes:
            if not _deleting(node):
                self._nodes[node["metadata"]["name"]] = node
        for team in teams:
            await self._guarded(self._team_changed(team), "team", team)
        for kind in ("Device", *_SERVICE_KINDS):
            docs = (await self.store.list(kind)).items
            await self._allocate_missing(kind, docs)
            for doc in docs:
                await self._guarded(self._changed(kind, doc), kind, doc)
        await self._free_orphans(teams, nodes)

    async def _allocate_missing(self, kind: str, docs: list[dict[str, Any]]) -> None:
        """Addresses for every resource of ``kind`` that has none yet, a batch per team:
        a first start over thousands of apps takes a few transactions, not one each.
        Whatever this leaves out (a full range) is handled one by one, as before."""
        pool: Pool = "mesh" if kind == "Device" else "service"
        missing: dict[str, list[tuple[str, str]]] = {}
        for doc in docs:
            meta = doc["metadata"]
            team, name = meta["team"], meta["name"]
            owner = name if kind == "Device" else f"{meta.get('environment') or ''}/{name}"
            known = (team, pool, kind, owner) in self._given
            if team in self._teams and not known and not _deleting(doc):
                missing.setdefault(team, []).append((kind, owner))
        for team, owners in missing.items():
            try:
                given = await self.ipam.allocate_many(team, pool, owners)
            except Unavailable:
                raise
            except KledError as e:
                log.warning("meshctl: team %s: batch allocation failed (%s)", team, e)
                continue
            for (owner_kind, owner), ip in given.items():
                self._given[(team, pool, owner_kind, owner)] = ip

    async def _allocate_ahead(self, batch: list[Event]) -> None:
        """The addresses of the devices and services a batch of events adds, in one IPAM
        transaction per team and pool (as at a rebuild) rather than one per resource; a
        resource this leaves out (a full range) is allocated alone when its event comes."""
        for kind in ("Device", *_SERVICE_KINDS):
            docs = [
                e.object
                for e in batch
                if e.kind == kind and e.type == "ADDED" and e.team in self._teams
            ]
            if len(docs) > 1:
                await self._allocate_missing(kind, docs)

    async def _write_backlog(self) -> None:
        """The status writes the rebuild or a step left, ``BACKLOG_BATCH`` to a
        transaction; each reads the resource as it is now (inside the transaction)."""
        while self._backlog:
            keys = list(itertools.islice(self._backlog, BACKLOG_BATCH))
            changes = {key: self._backlog.pop(key) for key in keys}
            try:
                await self.store.update_statuses(
                    [(key, _status_change(change)) for key, change in changes.items()]
                )
            except Unavailable:
                self._backlog.update(changes)  # again, after the pause the loop takes
                raise
            except KledError as e:  # one out of bounds, say: each alone, as before
                log.warning("meshctl: a batch of %d statuses failed (%s)", len(changes), e)
                for key, change in changes.items():
                    try:
                        await self._set_status(key, change)
                    except Unavailable:
                        self._backlog[key] = change
                        raise
                    except KledError as one:
                        log.warning("meshctl: %s: %s", key, one)

    def _later(
        self, key: Key, change: Callable[[dict[str, Any]], None], held: dict[str, Any]
    ) -> None:
        """Change part of a resource's status at the end of this step, with the other
        resources' changes in one transaction (nothing if ``held`` has it already)."""
        if not _deleting(held):
            status = copy.deepcopy(held.get("status") or {})
            change(status)
            if status == (held.get("status") or {}):
                return
        before = self._backlog.pop(key, None)
        if before is None:
            self._backlog[key] = change
            return

        def both(status: dict[str, Any]) -> None:
            before(status)
            change(status)

        self._backlog[key] = both

    async def _guarded(self, work: Awaitable[None], kind: str, doc: dict[str, Any]) -> None:
        """One resource's failure (a refused block, a full range) must not stop the rest;
        it is already reported in that resource's status."""
        try:
            await work
        except Unavailable:
            raise
        except KledError as e:
            meta = doc.get("metadata") or {}
            log.warning(
                "meshctl: %s/%s/%s: %s", kind.lower(), meta.get("team", ""), meta.get("name"), e
            )
        except Exception:
            # A document no code path expected must not keep the control plane from
            # starting: name it, skip it, go on with the rest.
            meta = doc.get("metadata") or {}
            log.exception(
                "meshctl: %s/%s/%s: skipped", kind.lower(), meta.get("team", ""), meta.get("name")
            )

    async def step(self, limit: int = 500) -> int:
        """Handle the events after ``seq``; returns how many there were."""
        await self._write_backlog()
        batch = await self.store.events_after(self.seq, limit)
        await self._allocate_ahead(batch)
        for event in batch:
            try:
                await self._handle(event)
            except Unavailable:
                raise  # retried from this event on
            except KledError as e:
                log.warning("meshctl: %s/%s/%s: %s", event.kind.lower(), event.team, event.name, e)
            except Exception:
                # A bug must not wedge the controller on one event forever.
                log.exception(
                    "meshctl: %s/%s/%s: failed", event.kind.lower(), event.team, event.name
                )
            self.seq = event.seq
        await self._write_backlog()
        await self._flush()
        return len(batch)

    # ---- events --------------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        doc = event.object
        if event.kind == "Team":
            if event.type == "DELETED":
                await self._team_deleted(event.name)
            elif not _deleting(doc):
                await self._team_changed(doc)
        elif event.kind == "Node":
            if event.type == "DELETED" or _deleting(doc):
                await self._node_gone(event.name, release=event.type == "DELETED")
            else:
                before = self._nodes.get(event.name)
                self._nodes[event.name] = doc
                if before is not None and _node_view(before) == _node_view(doc):
                    return  # a heartbeat: nothing the mesh uses changed
                for team in list(self._teams):
                    await self._node_in_team(doc, team)
        elif event.kind in ("Device", *_SERVICE_KINDS):
            if event.type == "DELETED" or _deleting(doc):
                await self._forget(event, release=event.type == "DELETED")
            else:
                await self._changed(event.kind, doc)

    async def _team_changed(self, doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        spec = doc.get("spec") or {}
        zone = self.zone_of(spec)
        try:
            layout = await self.ipam.ensure_team_block(name, spec.get("block"))
        except KledError as e:
            if isinstance(e, Unavailable):
                raise
            await self._set_status(Key("Team", "", "", name), _error(str(e)))
            raise
        team = self._teams.get(name)
        if team is None:
            team = self._teams[name] = _Team(zone, RecordSet(zone))
        elif team.zone != zone:
            team.zone = team.records.zone = zone
        self._dirty.add(name)
        await self._emit_netmap(self.netmap.set_service_range(name, str(layout.service)))
        described = layout.describe()

        def write(status: dict[str, Any]) -> None:
            status.pop("error", None)
            status["block"] = str(layout.block)
            status["ranges"] = {k: described[k] for k in ("mesh", "service", "pods")}
            status["zone"] = f"{name}.{zone}"

        await self._set_status(Key("Team", "", "", name), write)
        for node in list(self._nodes.values()):
            await self._node_in_team(node, name)

    async def _team_deleted(self, name: str) -> None:
        self._teams.pop(name, None)
        for peer in self.netmap.peers(name):
            await self._emit_netmap(self.netmap.leave(peer.id))
        self.netmap.set_service_range(name, None)
        await self.ipam.release_team(name)
        self._given = {k: v for k, v in self._given.items() if k[0] != name}
        self._full = {k: v for k, v in self._full.items() if k[0] != name}

        def drop(status: dict[str, Any]) -> None:
            mesh = status.get("mesh") or {}
            mesh.pop(name, None)

        for node in list(self._nodes):
            await self._set_status(Key("Node", "", "", node), drop)
        self._dirty.discard(name)
        self._gone.add(name)

    async def _node_in_team(self, node: dict[str, Any], team: str) -> None:
        name = node["metadata"]["name"]
        ip = await self._allocate(team, "mesh", "Node", name)
        subnet = await self._allocate(team, "pods", "Node", name)
        state = self._teams[team]
        dns = f"{name}.nodes.{team}.{state.zone}"
        if state.records.nodes.get(name) != ip:
            state.records.nodes[name] = ip
            self._dirty.add(team)

        def write(status: dict[str, Any]) -> None:
            mesh = status.setdefault("mesh", {})
            entry = mesh.setdefault(team, {})
            entry.update(ip=ip, podSubnet=subnet, dns=dns)

        current = await self._set_status(Key("Node", "", "", name), write)
        reported = ((current or node).get("status") or {}).get("mesh", {}).get(team, {})
        key = reported.get("publicKey")
        if key:
            address = (node.get("spec") or {}).get("address")
            port = reported.get("listenPort")
            endpoint = f"{_host(address)}:{port}" if address and port else None
            peer = Peer(
                id=f"{team}/node/{name}",
                kind="node",
                team=team,
                public_key=str(key),
                mesh_ip=ip,
                endpoint=endpoint,
                allowed_ips=(f"{ip}/32", subnet),
            )
            await self._join(peer)

    async def _node_gone(self, name: str, *, release: bool) -> None:
        self._nodes.pop(name, None)
        for team, state in self._teams.items():
            if state.records.nodes.pop(name, None) is not None:
                self._dirty.add(team)
            await self._emit_netmap(self.netmap.leave(f"{team}/node/{name}"))
            if release:
                await self._release(team, "Node", name)

    async def _changed(self, kind: str, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        team, env, name = meta["team"], meta.get("environment") or "", meta["name"]
        if _deleting(doc):
            return
        state = await self._team_state(team)
        key = Key(kind, team, env, name)
        pool: Pool
        if kind == "Device":
            pool, owner, dns = "mesh", name, f"{name}.{team}.{state.zone}"
        else:
            pool, owner, dns = "service", f"{env}/{name}", f"{name}.{env}.{team}.{state.zone}"
        try:
            ip = await self._allocate(team, pool, kind, owner)
        except Conflict as e:  # the range is full: say so where the user looks
            await self._set_status(key, _error(str(e)), doc)
            raise

        def write(status: dict[str, Any]) -> None:
            status.pop("error", None)
            status["ip"] = ip
            status["dns"] = dns

        self._later(key, write, doc)
        spec = doc.get("spec") or {}
        if kind == "Device":
            if state.records.devices.get(name) != ip:
                state.records.devices[name] = ip
                self._dirty.add(team)
            if spec.get("publicKey"):
                peer = Peer(
                    id=f"{team}/device/{name}",
                    kind="device",
                    team=team,
                    public_key=str(spec["publicKey"]),
                    mesh_ip=ip,
                    endpoint=spec.get("endpoint"),
                    allowed_ips=(f"{ip}/32",),
                )
                await self._join(peer)
            else:
                await self._emit_netmap(self.netmap.leave(f"{team}/device/{name}"))
            return
        ports = tuple(
            NamedPort(str(p["name"]), int(p["port"]), str(p.get("protocol") or "TCP"))
            for p in spec.get("ports") or []
            if p.get("name")
        )
        record = AppRecord(ip, ports)
        if state.records.apps.get((env, name)) != record:
            state.records.apps[(env, name)] = record
            self._dirty.add(team)
        self._cluster_service_records(state, team, env, name, doc)

    def _cluster_service_records(
        self, state: _Team, team: str, env: str, app: str, doc: dict[str, Any] | None
    ) -> None:
        """The names of the Kled Cluster Services an App carries (``clusterservices``)."""
        wanted: dict[tuple[str, str], AppRecord] = {}
        for service in clusterservices.entries(doc):
            ports = tuple(NamedPort(p.name, p.port, p.protocol) for p in service.ports if p.name)
            for key in clusterservices.dns_names(service):
                wanted[key] = AppRecord(service.ip, ports)
        before = state.cluster_names.pop((env, app), {})
        for key in before:
            if key not in wanted and state.records.apps.get(key) == before[key]:
                del state.records.apps[key]
                self._dirty.add(team)
        for key, record in wanted.items():
            if state.records.apps.get(key) != record:
                state.records.apps[key] = record
                self._dirty.add(team)
        if wanted:
            state.cluster_names[(env, app)] = wanted

    async def _forget(self, event: Event, *, release: bool) -> None:
        team, env, name = event.team, event.environment, event.name
        state = self._teams.get(team)
        if event.kind == "Device":
            if state is not None and state.records.devices.pop(name, None) is not None:
                self._dirty.add(team)
            await self._emit_netmap(self.netmap.leave(f"{team}/device/{name}"))
            owner = name
        else:
            if state is not None and state.records.apps.pop((env, name), None) is not None:
                self._dirty.add(team)
            if state is not None:
                self._cluster_service_records(state, team, env, name, None)
            owner = f"{env}/{name}"
        if release:
            await self._release(team, event.kind, owner)

    async def _allocate(self, team: str, pool: Pool, kind: str, owner: str) -> str:
        key = (team, pool, kind, owner)
        ip = self._given.get(key)
        if ip is None:
            full = self._full.get((team, pool))
            if full is not None:
                # Nothing was released in this range since it was found full: asking IPAM
                # again (a locked scan per event) would only slow every write down.
                raise Conflict(full)
            try:
                ip = self._given[key] = await self.ipam.allocate(team, pool, kind, owner)
            except Conflict as e:
                self._full[(team, pool)] = str(e)
                raise
        return ip

    async def _release(self, team: str, kind: str, owner: str) -> None:
        for pool in ("mesh", "service", "pods"):
            self._given.pop((team, pool, kind, owner), None)
            self._full.pop((team, pool), None)
        await self.ipam.release(team, kind, owner)

    async def _team_state(self, team: str) -> _Team:
        state = self._teams.get(team)
        if state is not None:
            return state
        # A resource of a team we have not seen (no Team resource, or not yet handled).
        doc = await self.store.find(Key("Team", "", "", team))
        if doc is not None:
            await self._team_changed(doc)
            return self._teams[team]
        await self.ipam.ensure_team_block(team)
        zone = self.default_zone
        state = self._teams[team] = _Team(zone, RecordSet(zone))
        for node in list(self._nodes.values()):
            await self._node_in_team(node, team)
        return state

    async def _free_orphans(self, teams: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
        """Release what was allocated for resources deleted while we were not running."""
        node_names = {n["metadata"]["name"] for n in nodes}
        live: set[tuple[str, str, str]] = set()
        for kind in ("Device", *_SERVICE_KINDS):
            for doc in (await self.store.list(kind)).items:
                m = doc["metadata"]
                owner = m["name"] if kind == "Device" else f"{m.get('environment')}/{m['name']}"
                live.add((m["team"], kind, owner))
        known_teams = {t["metadata"]["name"] for t in teams} | set(self._teams)
        for a in await self.ipam.list():
            if a.team not in known_teams:
                await self.ipam.release_team(a.team)
                self._given = {k: v for k, v in self._given.items() if k[0] != a.team}
                known_teams.add(a.team)  # once is enough
                continue
            if a.pool == "block":
                continue
            if a.owner_kind == "Node":
                if a.owner_name not in node_names:
                    await self._release(a.team, "Node", a.owner_name)
            elif (a.team, a.owner_kind, a.owner_name) not in live:
                await self._release(a.team, a.owner_kind, a.owner_name)

    # ---- output --------------------------------------------------------------------

    async def _flush(self) -> None:
        gone, self._gone = self._gone, set()
        dirty, self._dirty = self._dirty, set()
        for team in sorted(gone - set(self._teams)):
            await _call(self._on_records, team, None)
        for team in sorted(dirty):
            state = self._teams.get(team)
            if state is not None:
                await _call(self._on_records, team, state.records.copy())

    async def _join(self, peer: Peer) -> None:
        if self._rebuilding:
            # Peers (re)connecting after a restart are sent their full map; no deltas.
            self.netmap.load(peer)
        else:
            await self._emit_netmap(self.netmap.join(peer))

    async def _emit_netmap(self, deltas: Deltas) -> None:
        if deltas and self._on_netmap is not None and not self._rebuilding:
            result = self._on_netmap(deltas)
            if inspect.isawaitable(result):
                await result

    async def _set_status(
        self,
        key: Key,
        change: Callable[[dict[str, Any]], None],
        held: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Change part of a resource's status, keeping what other writers put there.

        ``held`` is the resource as its latest event (or a list at start) showed it: when
        it already has what ``change`` writes, nothing is read or written — a later change
        by anyone else comes as an event of its own. A restart over 10,000 apps whose
        addresses are in place then costs no query per app."""
        if held is not None and not _deleting(held):
            status = copy.deepcopy(held.get("status") or {})
            change(status)
            if status == (held.get("status") or {}):
                return held
            if self._rebuilding:
                self._backlog[key] = change  # written by the loop, once serving
                return held
        for _ in range(_STATUS_TRIES):
            doc = await self.store.find(key)
            if doc is None or _deleting(doc):
                return doc
            status = copy.deepcopy(doc.get("status") or {})
            change(status)
            if status == (doc.get("status") or {}):
                return doc
            try:
                return await self.store.update_status(
                    key, status, expected_version=doc["metadata"]["resourceVersion"]
                )
            except NotFound:
                return None
            except Conflict:
                continue  # someone else wrote status meanwhile: merge again
        log.warning("meshctl: %s: status kept changing, gave up this round", key)
        return None


def _status_change(
    change: Callable[[dict[str, Any]], None],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A change of part of a status as ``Store.update_statuses`` takes it."""

    def whole(doc: dict[str, Any]) -> dict[str, Any]:
        status = copy.deepcopy(doc.get("status") or {})
        change(status)
        return status

    return whole


async def _call(callback: RecordsCallback | None, team: str, records: RecordSet | None) -> None:
    if callback is None:
        return
    result = callback(team, records)
    if inspect.isawaitable(result):
        await result


def _node_view(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What of a Node the mesh uses: its address and, per team, its addresses and the
    key and port its agent reported."""
    mesh = (doc.get("status") or {}).get("mesh") or {}
    teams = sorted(
        (team, e.get("ip"), e.get("podSubnet"), e.get("publicKey"), e.get("listenPort"))
        for team, e in mesh.items()
    )
    return ((doc.get("spec") or {}).get("address"), teams)


def _deleting(doc: dict[str, Any]) -> bool:
    return bool((doc.get("metadata") or {}).get("deletionTimestamp"))


def _error(message: str) -> Callable[[dict[str, Any]], None]:
    def write(status: dict[str, Any]) -> None:
        status["error"] = message

    return write


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address

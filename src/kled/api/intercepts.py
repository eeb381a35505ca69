"""Intercepts as users see them: what may be intercepted, by whom, and when it ends.

An ``Intercept`` points an app's service IP at a developer's device (ARCHITECTURE §4,
issue 5). The schema (``resources/specs.py``) checks its shape; this module checks it
against the rest of the team, once, at admission, so that the gateways never receive an
intercept they would have to refuse:

- the app exists in the environment and exposes every port named;
- the device exists in the team and belongs to the user (or the user is an admin);
- at most one global intercept per app, and one personal intercept per header and value;
- the header is one the gateways' header router accepts (``netstate.PersonalIntercept``);
- and, since intercepts follow a device's owner, that members touch only their own Devices.

It also owns an intercept's end and its status. Deleting an environment already deletes
what it holds (the service layer's cascade); deleting an app or a device is followed here,
from the store's event log, by deleting the intercepts that point at it. The same task
writes ``status.phase``: ``Pending`` until the device has a mesh IP, ``Active`` once the
gateways are told, and ``Fallback`` while any gateway reports that it sends the intercept's
traffic back to the replicas. Falling back is each gateway's own local decision (the device
missed its WireGuard handshakes, ``agent/net/liveness.py``), so it keeps working with the
control plane down; the gateways list what they fall back on in their heartbeats
(``Node.status.mesh.<team>.fallback``), and this module only shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from kled.admission.request import AdmissionRequest, HookResult, Operation, UserInfo
from kled.api import authz
from kled.api.rest import User, service
from kled.api.service import Service
from kled.errors import Conflict, Forbidden, InvalidInput, NotFound
from kled.resources.netstate import PersonalIntercept
from kled.resources.registry import kind_info
from kled.resources.specs import WORKSPACE_TARGET
from kled.store.follow import follow_events
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)


def _spec(doc: dict[str, Any] | None) -> dict[str, Any]:
    return dict((doc or {}).get("spec") or {})


def _deleting(doc: dict[str, Any]) -> bool:
    return bool((doc.get("metadata") or {}).get("deletionTimestamp"))


def header_key(header: dict[str, Any] | None) -> tuple[str, str] | None:
    """A header match as the router compares it: name case-insensitive, value stripped."""
    if not header:
        return None
    return str(header.get("name", "")).strip().lower(), str(header.get("value", "")).strip()


def check_header(header: dict[str, Any]) -> None:
    """Refuse what the gateways' header router would refuse, naming the field."""
    try:
        PersonalIntercept(
            header=str(header.get("name", "")),
            value=str(header.get("value", "")),
            target_ip="127.0.0.1",
            port_map={1: 1},
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "name" if error["loc"] and error["loc"][0] == "header" else "value"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidInput(f"header {where}: {message}", field=f"spec.header.{where}") from None


#: how a gateway names an intercept it falls back on: ``env/app→ip`` (global) or
#: ``env/app[header=value]→ip`` (personal), as ``agent/net/liveness.fallen_back`` writes it
_FALLBACK = re.compile(
    r"^(?P<env>[^/]+)/(?P<app>[^\[→]+)(?:\[(?P<h>[^=]*)=(?P<v>.*)\])?→(?P<ip>.+)$"
)


def fallback_key(item: str) -> tuple[str, str, tuple[str, str] | None, str] | None:
    """(env, app, header key or None, device IP) of a gateway's fallback entry."""
    m = _FALLBACK.match(item)
    if m is None:
        return None
    header = None if m["h"] is None else header_key({"name": m["h"], "value": m["v"]})
    return m["env"], m["app"], header, m["ip"]


def falling_back_at(
    doc: dict[str, Any], device_ip: str, reports: Mapping[str, Mapping[str, frozenset[str]]]
) -> list[str]:
    """The nodes whose gateway falls back on this Intercept (``reports``: node → team →
    the entries its heartbeat listed)."""
    meta = doc.get("metadata") or {}
    spec = _spec(doc)
    mine = (meta.get("environment"), spec.get("app"), header_key(spec.get("header")), device_ip)
    return sorted(
        node
        for node, teams in reports.items()
        if any(fallback_key(item) == mine for item in teams.get(str(meta.get("team")), ()))
    )


def team_gateways(nodes: list[dict[str, Any]], team: str) -> list[dict[str, Any]]:
    """The team's gateways as their nodes report them: each node whose gateway for the team
    is up (its WireGuard key reported), whether it is Ready, the intercepts it has applied
    and those it falls back on (named as ``agent/net/liveness.intercept_entry`` does)."""
    out = []
    for doc in nodes:
        status = doc.get("status") or {}
        entry = (status.get("mesh") or {}).get(team)
        if _deleting(doc) or not isinstance(entry, dict) or not entry.get("publicKey"):
            continue
        out.append(
            {
                "node": str((doc.get("metadata") or {}).get("name")),
                "ready": status.get("phase") == "Ready",
                "intercepts": sorted(str(i) for i in entry.get("intercepts") or []),
                "fallback": sorted(str(i) for i in entry.get("fallback") or []),
            }
        )
    return sorted(out, key=lambda g: g["node"])


def applied_at(doc: dict[str, Any], device_ip: str, gateways: list[dict[str, Any]]) -> list[str]:
    """The gateways (nodes) that have applied this Intercept."""
    meta = doc.get("metadata") or {}
    spec = _spec(doc)
    mine = (meta.get("environment"), spec.get("app"), header_key(spec.get("header")), device_ip)
    return [g["node"] for g in gateways if any(fallback_key(i) == mine for i in g["intercepts"])]


def may_use_device(user: UserInfo, device: dict[str, Any]) -> bool:
    """Only the device's owner, a team admin or owner, or the server admin."""
    if user.server_admin or authz.rank(user.role) >= authz.rank("admin"):
        return True
    return bool(_spec(device).get("owner") == user.username)


class InterceptServices:
    """The admission hook for Intercepts and the task that ends and reports them."""

    def __init__(self, svc: Service) -> None:
        self.service = svc
        self.store: Store = svc.store
        self._task: asyncio.Task[None] | None = None
        #: node → team → what its gateway there falls back on (from Node.status.mesh)
        self._fallback: dict[str, dict[str, frozenset[str]]] = {}
        #: team → its gateways, as ``team_gateways`` reads them from the Nodes
        self._gateways: dict[str, list[dict[str, Any]]] = {}

    async def start(self, after: int | None = None) -> None:
        """Admit Intercepts and follow the log from ``after`` (default: now)."""
        self.service.chain.add_validating(self.admit)
        if after is None:
            after = await self.store.revision()
        self._task = asyncio.create_task(
            follow_events(
                self.store, after, self.on_event, what="intercept feed", resync=self.resync
            ),
            name="intercept-feed",
        )

    async def resync(self) -> int:
        """After the feed's events were compacted: judge every Intercept from the store as
        it is now (ending those whose app or device went meanwhile, taking every node's
        gateways again); the revision to go on from."""
        now = await self.store.revision()
        self._fallback.clear()
        self._gateways.clear()
        for node in (await self.store.list("Node")).items:
            if not _deleting(node):
                await self._node_fallback(str(node["metadata"]["name"]), node)
        for doc in (await self.store.list("Intercept")).items:
            if _deleting(doc):
                continue
            meta, spec = doc["metadata"], _spec(doc)
            team, target = str(meta["team"]), str(spec.get("device", ""))
            app = await self.store.find(
                Key("App", team, str(meta.get("environment") or ""), str(spec.get("app")))
            )
            device = await self._target(team, target)
            device_gone = not target.startswith(WORKSPACE_TARGET) and (
                device is None or _deleting(device)
            )
            if app is None or _deleting(app) or device_gone:
                log.info(
                    "intercept/%s/%s/%s ended: its %s went while the feed was behind",
                    team,
                    meta.get("environment"),
                    meta["name"],
                    "device" if device_gone else "app",
                )
                with contextlib.suppress(NotFound):
                    await self.store.delete(Key.of(doc))
                continue
            await self._report(doc, device)
        return now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- admission -------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> HookResult:
        if request.kind == "Device":
            self._check_device_owner(request)
            return HookResult()
        if request.kind != "Intercept" or request.operation == Operation.DELETE:
            return HookResult()
        doc = request.object or {}
        spec = _spec(doc)
        team, env = request.team or "", request.environment or ""
        app = await self._app(team, env, str(spec.get("app", "")))
        self._check_ports(app, spec)
        header = spec.get("header")
        if header:
            check_header(header)
            self._check_tcp(app, spec)
        target = str(spec.get("device", ""))
        device = await self._target(team, target)
        if target.startswith(WORKSPACE_TARGET):
            if device is None or _deleting(device):
                raise InvalidInput(
                    f"workspace {target[3:]!r} not found in team {team}", field="spec.device"
                )
            # Who may exec into the workspace may point traffic at it.
            what = f"workspace/{team}/{target.removeprefix(WORKSPACE_TARGET)}"
            authz.authorize(request.user, "update", kind_info("Workspace"), team, what)
            await self._check_unique(team, env, request.name, spec)
            return HookResult()
        if device is None or _deleting(device):
            raise InvalidInput(
                f"device {spec.get('device')!r} not found in team {team}", field="spec.device"
            )
        if not may_use_device(request.user, device):
            raise Forbidden(
                f"device {spec.get('device')!r} belongs to {_spec(device).get('owner')!r}; "
                "only its owner or a team admin may point traffic at it",
                field="spec.device",
            )
        await self._check_unique(team, env, request.name, spec)
        return HookResult()

    @staticmethod
    def _check_device_owner(request: AdmissionRequest) -> None:
        """A member registers, changes and removes only their own devices: a device is a
        way into the team's network, and intercepts follow its owner."""
        user = request.user
        if user.server_admin or authz.rank(user.role) >= authz.rank("admin"):
            return
        for doc in (request.old_object, request.object):
            owner = _spec(doc).get("owner") if doc is not None else None
            if doc is not None and owner != user.username:
                raise Forbidden(
                    f"device {request.name!r} belongs to {owner!r}: only its owner or a team "
                    "admin may register, change or remove it",
                    field="spec.owner",
                )

    async def _app(self, team: str, env: str, name: str) -> dict[str, Any]:
        app = await self.store.find(Key("App", team, env, name))
        if app is None or _deleting(app):
            raise InvalidInput(
                f"app {name!r} not found in environment {env} of team {team}", field="spec.app"
            )
        return app

    @staticmethod
    def _check_ports(app: dict[str, Any], spec: dict[str, Any]) -> None:
        exposed = sorted({int(p["port"]) for p in _spec(app).get("ports") or []})
        name = (app.get("metadata") or {}).get("name")
        if not exposed:
            raise InvalidInput(f"app {name!r} exposes no ports to intercept", field="spec.app")
        for index, item in enumerate(spec.get("ports") or []):
            if int(item["port"]) not in exposed:
                shown = ", ".join(str(p) for p in exposed)
                raise InvalidInput(
                    f"app {name!r} does not expose port {item['port']} (it exposes {shown})",
                    field=f"spec.ports[{index}].port",
                )

    @staticmethod
    def _check_tcp(app: dict[str, Any], spec: dict[str, Any]) -> None:
        wanted = {int(p["port"]) for p in spec.get("ports") or []}
        tcp = {
            int(p["port"])
            for p in _spec(app).get("ports") or []
            if p.get("protocol", "TCP") == "TCP" and (not wanted or int(p["port"]) in wanted)
        }
        if not tcp:
            raise InvalidInput(
                "a header can only select HTTP traffic: intercept at least one TCP port",
                field="spec.ports",
            )

    async def _check_unique(self, team: str, env: str, name: str, spec: dict[str, Any]) -> None:
        mine = header_key(spec.get("header"))
        for other in (await self.store.list("Intercept", team, env)).items:
            meta = other.get("metadata") or {}
            theirs = _spec(other)
            if meta.get("name") == name or _deleting(other) or theirs.get("app") != spec["app"]:
                continue
            if mine is None and theirs.get("header") is None:
                raise Conflict(
                    f"app {spec['app']!r} is already intercepted by {meta.get('name')!r} "
                    f"(to device {theirs.get('device')!r}); stop it first or use --header",
                    field="spec.app",
                )
            if mine is not None and header_key(theirs.get("header")) == mine:
                raise Conflict(
                    f"intercept {meta.get('name')!r} already selects {mine[0]}: {mine[1]} "
                    f"on app {spec['app']!r}; choose another header value",
                    field="spec.header.value",
                )

    # ---- ending and reporting --------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        gone = event.type == "DELETED" or _deleting(event.object)
        if event.kind == "App" and gone:
            await self._end(event.team, event.environment, lambda s: s.get("app") == event.name)
        elif event.kind == "Device" and gone:
            await self._end(event.team, None, lambda s: s.get("device") == event.name)
        elif event.kind == "Device":
            await self._report_device(event.team, event.name, event.object)
        elif event.kind == "Workspace" and not gone:
            # its pod IP came or changed: intercepts to ws/<name> follow it
            target = WORKSPACE_TARGET + event.name
            await self._report_device(event.team, target, event.object)
        elif event.kind == "Node":
            await self._node_fallback(event.name, None if gone else event.object)
        elif event.kind == "Intercept" and event.type == "ADDED":
            device = await self._target(event.team, str(_spec(event.object).get("device")))
            await self._report(event.object, device)

    async def _end(self, team: str, env: str | None, points_here: Any) -> None:
        for doc in (await self.store.list("Intercept", team, env)).items:
            if _deleting(doc) or not points_here(_spec(doc)):
                continue
            meta = doc["metadata"]
            log.info(
                "intercept/%s/%s/%s ended: its %s is gone",
                team,
                meta.get("environment"),
                meta["name"],
                "app" if env is not None else "device",
            )
            with contextlib.suppress(NotFound):
                await self.store.delete(Key.of(doc))

    async def _target(self, team: str, target: str) -> dict[str, Any] | None:
        """The Device an intercept points at, or the Workspace for ``ws/<name>``: either
        has its mesh address in ``status.ip``."""
        if target.startswith(WORKSPACE_TARGET):
            return await self.store.find(
                Key("Workspace", team, "", target.removeprefix(WORKSPACE_TARGET))
            )
        return await self.store.find(Key("Device", team, "", target))

    async def _report_device(self, team: str, name: str, device: dict[str, Any]) -> None:
        for doc in (await self.store.list("Intercept", team)).items:
            if _spec(doc).get("device") == name and not _deleting(doc):
                await self._report(doc, device)

    async def _node_fallback(self, node: str, doc: dict[str, Any] | None) -> None:
        """Take a node's fallback and applied reports; re-judge the intercepts of the teams
        whose reports it changed."""
        mesh = ((doc or {}).get("status") or {}).get("mesh") or {}
        touched = set(mesh) | {
            t for t, gws in self._gateways.items() if any(g["node"] == node for g in gws)
        }
        nodes = (await self.store.list("Node")).items if touched else []
        regated = set()
        for team in touched:
            gateways = team_gateways(nodes, team)
            if gateways != self._gateways.get(team, []):
                self._gateways[team] = gateways
                regated.add(team)
        now = {
            team: frozenset(str(i) for i in entry.get("fallback") or [])
            for team, entry in mesh.items()
            if isinstance(entry, dict) and entry.get("fallback")
        }
        if doc is not None and node not in self._fallback:
            # First word from this node since we started: a Fallback shown before a restart
            # of the control plane may have ended meanwhile, so look at all its teams.
            changed = set(mesh)
        else:
            before = self._fallback.get(node, {})
            changed = {t for t in set(before) | set(now) if before.get(t) != now.get(t)}
        if doc is None:
            self._fallback.pop(node, None)
        else:
            self._fallback[node] = now
        for team in sorted(changed | regated):
            for intercept in (await self.store.list("Intercept", team)).items:
                if _deleting(intercept):
                    continue
                device = await self._target(team, str(_spec(intercept).get("device")))
                await self._report(intercept, device)

    async def _report(self, doc: dict[str, Any], device: dict[str, Any] | None) -> None:
        ip = ((device or {}).get("status") or {}).get("ip")
        spec = _spec(doc)
        nodes = falling_back_at(doc, str(ip), self._fallback) if ip else []
        gateways = self._gateways.get(str((doc.get("metadata") or {}).get("team")), [])
        ready = [g["node"] for g in gateways if g["ready"]]
        applied = [n for n in applied_at(doc, str(ip), gateways) if n in ready] if ip else []
        if nodes:
            status = {
                "phase": "Fallback",
                "message": (
                    f"device {spec.get('device')} silent (no WireGuard handshake) at the "
                    f"gateway of {', '.join(nodes)}; traffic goes to the replicas"
                ),
                "deviceIP": ip,
            }
        elif ip:
            status = {
                "phase": "Active",
                "message": f"{spec.get('app')} → device {spec.get('device')} ({ip})",
                "deviceIP": ip,
            }
        else:
            status = {
                "phase": "Pending",
                "message": f"waiting for device {spec.get('device')} to get a mesh address",
            }
        # How many of the team's (Ready) gateways apply it: `kled intercept list` shows it.
        status["gateways"] = f"{len(applied)}/{len(ready)}"
        current = doc.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        with contextlib.suppress(NotFound, Conflict):
            await self.store.update_status(Key.of(doc), {**current, **status})
        meta = doc["metadata"]
        log.info(
            "intercept/%s/%s/%s phase=%s",
            meta["team"],
            meta.get("environment"),
            meta["name"],
            status["phase"],
        )


router = APIRouter(prefix="/api/v1")


@router.get("/teams/{team}/gateways")
async def gateways(request: Request, team: str, user: UserInfo = User) -> Response:
    """The team's gateways and the intercepts each has applied: what `kled intercept
    start|stop` wait on (every Ready gateway applied it, or none still has it)."""
    authz.authorize(user, "get", kind_info("Intercept"), team, f"team/{team}/gateways")
    svc = service(request)
    if await svc.store.find(Key("Team", "", "", team)) is None:
        raise NotFound(f"team/{team} not found")
    nodes = (await svc.store.list("Node")).items
    return JSONResponse({"items": team_gateways(nodes, team)})

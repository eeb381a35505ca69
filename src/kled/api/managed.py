"""Managed services on the API side: the admission check and the controller's lifetime.

A ManagedService is refused at the door when its template does not exist, its version is
not one the template provides or a parameter is unknown or out of bounds (the field path
in the error, ``resources/templates.py``); the controller (``control/managed.py``) then
keeps its server app, credentials Secret and status.

``POST …/managedservices/{name}/backup`` (``kled service backup``) has the control plane
run the engine's dump inside the server's replica, through its agent
(``replica_command``), and record what the dump reports in ``status.backups``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kled.admission.request import AdmissionRequest, HookResult, Operation, UserInfo
from kled.api import authz
from kled.api.exec_stream import pick_replica
from kled.api.replica_command import run_in_replica
from kled.api.rest import User, service
from kled.api.service import Service
from kled.bus.office import MessageOffice
from kled.control.managed import (
    ManagedServiceController,
    backup_command,
    find_template,
    recorded,
    server_app_name,
    server_verb,
)
from kled.errors import Conflict, InvalidInput, NotFound, Unavailable
from kled.resources import bounds
from kled.resources.hoststate import replica_id
from kled.resources.quantities import parse_memory
from kled.resources.registry import kind_info
from kled.resources.templates import check_service, template_spec
from kled.store.objects import Key

router = APIRouter(prefix="/api/v1")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_TRIES = 10


class ManagedServices:
    def __init__(
        self, svc: Service, office: Callable[[], MessageOffice | None] = lambda: None
    ) -> None:
        self.service = svc
        self.office = office
        self.controller = ManagedServiceController(svc.store)

    async def start(self) -> None:
        """The controller only: the server adds ``admit`` to the admission chain on every
        replica, and starts controllers on the one holding the lease."""
        await self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()

    async def admit(self, request: AdmissionRequest) -> HookResult:
        if request.kind != "ManagedService" or request.operation == Operation.DELETE:
            return HookResult()
        spec = (request.object or {}).get("spec") or {}
        name = str(spec.get("template") or "")
        stored = await self.service.store.find(Key("ServiceTemplate", "", "", name))
        found = find_template(name, stored)
        check_service(spec, template_spec(found) if found is not None else None)
        return await self._check_storage(request)

    async def _check_storage(self, request: AdmissionRequest) -> HookResult:
        """A ``spec.storage.size`` set or made smaller: refused when the data directory
        holds more (measured in the server, through its agent)."""
        new, old = _size(request.object), _size(request.old_object)
        if request.operation != Operation.UPDATE or new is None or (old is not None and new >= old):
            return HookResult()
        office, doc = self.office(), request.old_object or {}
        try:
            if office is None:
                raise Unavailable("this server has no Message Office")
            held = await data_bytes(self.service, office, doc)
        except (Conflict, Unavailable) as e:
            return HookResult(warnings=[f"{SIZE}: not checked against the data ({e})"])
        if held > new:
            size = ((request.object or {}).get("spec") or {})["storage"]["size"]
            raise InvalidInput(
                f"storage smaller than the data: the data directory holds {held} bytes "
                f"({held / (1 << 20):.1f} MiB), more than {size}",
                field=SIZE,
            )
        return HookResult()


SIZE = "spec.storage.size"


def _size(doc: dict[str, Any] | None) -> int | None:
    storage = ((doc or {}).get("spec") or {}).get("storage") or {}
    return parse_memory(storage["size"], field=SIZE) if storage.get("size") else None


async def _run_in_server(
    svc: Service, office: MessageOffice, doc: dict[str, Any], command: list[str]
) -> bytes:
    """``command`` in the service's server replica: its stdout, or :class:`Conflict` with
    the last line it wrote on stderr."""
    m = doc["metadata"]
    team, env, name = str(m["team"]), str(m.get("environment") or ""), str(m["name"])
    app = await svc.store.find(Key("App", team, env, server_app_name(name)))
    if app is None:
        raise Conflict(f"service {name} has no server app yet")
    index, node = pick_replica(app, 0, f"the server of service {name}")
    rid = replica_id(team, env, server_app_name(name), index)
    code, out, err = await run_in_replica(office, node, rid, command)
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit {code}"]
        raise Conflict(f"service {name}: {lines[-1].removeprefix('servicerun: ')}")
    return out


async def data_bytes(svc: Service, office: MessageOffice, doc: dict[str, Any]) -> int:
    """What the service's data directory takes on its node now."""
    out = await _run_in_server(svc, office, doc, server_verb(doc, "usage"))
    return int(json.loads(out)["dataBytes"])


def _office(request: Request) -> MessageOffice:
    office: MessageOffice | None = getattr(
        getattr(request.app.state, "hosts", None), "office", None
    )
    if office is None:
        raise Unavailable("this server has no Message Office: no agent to run it through")
    return office


@router.post(
    "/teams/{team}/environments/{env}/managedservices/{name}/backup",
    status_code=201,
    summary="Dump a managed service into its node's backup folder, listed in status.backups",
    tags=["ManagedService"],
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"label": {"type": "string"}}}
                }
            },
        }
    },
)
async def backup(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    svc = service(request)
    what = f"managedservice/{team}/{env}/{name}"
    doc = await svc.get(user, Key("ManagedService", team, env, name))
    authz.authorize(user, "update", kind_info("ManagedService"), team, what)
    raw = await request.body()
    body: Any = bounds.loads(raw) if raw.strip() else {}
    label = body.get("label", name) if isinstance(body, dict) else None
    if not isinstance(label, str) or not _LABEL.match(label):
        raise InvalidInput("label: lower-case letters, digits and '-', at most 63", field="label")
    command = backup_command(doc, label)
    out = await _run_in_server(svc, _office(request), doc, command)
    node = (doc.get("status") or {}).get("node")
    taken = {**json.loads(out), "node": node}
    await _update_status(svc, Key.of(doc), lambda status: {**status, "backups": recorded(
        {"metadata": doc["metadata"], "status": {"backups": [
            *(status.get("backups") or []), taken]}})})  # fmt: skip
    return JSONResponse(taken, status_code=201)


@router.get(
    "/teams/{team}/environments/{env}/managedservices/{name}/usage",
    summary="What a managed service's data directory takes now (kept in status.dataBytes)",
    tags=["ManagedService"],
)
async def usage(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    svc = service(request)
    doc = await svc.get(user, Key("ManagedService", team, env, name))
    held = await data_bytes(svc, _office(request), doc)
    await _update_status(svc, Key.of(doc), lambda status: {**status, "dataBytes": held})
    size = _size(doc)
    return JSONResponse({"dataBytes": held, "storageBytes": size})


async def _update_status(
    svc: Service, key: Key, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """The service's status changed by ``change``, retried over concurrent writers."""
    for _ in range(_TRIES):
        current = await svc.store.find(key)
        if current is None:
            raise NotFound(f"service {key.name} was deleted meanwhile")
        version = current["metadata"]["resourceVersion"]
        try:
            await svc.store.update_status(
                key, change(dict(current.get("status") or {})), expected_version=version
            )
            return
        except Conflict:
            continue
    raise Conflict(f"the status of service {key.name} could not be written: try again")

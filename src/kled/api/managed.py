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
)
from kled.errors import Conflict, InvalidInput, NotFound, Unavailable
from kled.resources.hoststate import replica_id
from kled.resources.registry import kind_info
from kled.resources.templates import check_service, template_spec
from kled.store.objects import Key

router = APIRouter(prefix="/api/v1")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_TRIES = 10


class ManagedServices:
    def __init__(self, svc: Service) -> None:
        self.service = svc
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
        return HookResult()


@router.post(
    "/teams/{team}/environments/{env}/managedservices/{name}/backup",
    status_code=201,
    summary="Dump a managed service into its node's backup folder, listed in status.backups",
    tags=["ManagedService"],
)
async def backup(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    svc = service(request)
    what = f"managedservice/{team}/{env}/{name}"
    doc = await svc.get(user, Key("ManagedService", team, env, name))
    authz.authorize(user, "update", kind_info("ManagedService"), team, what)
    raw = await request.body()
    body: Any = json.loads(raw) if raw.strip() else {}
    label = body.get("label", name) if isinstance(body, dict) else None
    if not isinstance(label, str) or not _LABEL.match(label):
        raise InvalidInput("label: lower-case letters, digits and '-', at most 63", field="label")
    command = backup_command(doc, label)
    app = await svc.store.find(Key("App", team, env, server_app_name(name)))
    if app is None:
        raise Conflict(f"service {name} has no server app yet")
    index, node = pick_replica(app, 0, f"the server of service {name}")
    office: MessageOffice | None = getattr(
        getattr(request.app.state, "hosts", None), "office", None
    )
    if office is None:
        raise Unavailable("this server has no Message Office: no agent to run the dump")
    rid = replica_id(team, env, server_app_name(name), index)
    code, out, err = await run_in_replica(office, node, rid, command)
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit {code}"]
        raise Conflict(f"backup of service {name}: {lines[-1].removeprefix('servicerun: ')}")
    taken = {**json.loads(out), "node": node}
    await _record(svc, Key.of(doc), taken)
    return JSONResponse(taken, status_code=201)


async def _record(svc: Service, key: Key, taken: dict[str, Any]) -> None:
    """``taken`` added to the service's ``status.backups`` (the last 50)."""
    for _ in range(_TRIES):
        current = await svc.store.find(key)
        if current is None:
            raise NotFound(f"service {key.name} was deleted during its backup")
        status = dict(current.get("status") or {})
        backups = [*(status.get("backups") or []), taken]
        listed = recorded({**current, "status": {**status, "backups": backups}})
        version = current["metadata"]["resourceVersion"]
        try:
            await svc.store.update_status(
                key, {**status, "backups": listed}, expected_version=version
            )
            return
        except Conflict:
            continue
    raise Conflict(f"the backup of service {key.name} could not be recorded: try again")

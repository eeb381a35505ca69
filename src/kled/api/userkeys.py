"""Users' SSH keys (``kled user key add|list|remove``) and who may enter a workspace by SSH.

The keys live on the ``User`` resource (``spec.sshKeys``, ``resources/sshkeys.py``). Only
admins may write a User, but a user manages their own keys: these routes let a user add,
list and remove their own, and an admin or owner those of users whose role is not above
theirs (``authz.check_ceiling``), then write the User as the system does.

A workspace is entered (``kled ws ssh``, ``kled ws proxy``) by its owner (``spec.owner``)
and the team's admins and owners; a workspace without an owner is the team's, open to
every member. Its SSH server accepts the keys of exactly those users, and the CLI's own
key of the one who opened the stream (``allowed_keys``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.rest import User, service
from kled.api.service import ADMIN, Service
from kled.errors import Conflict, Forbidden, InvalidInput, NotFound
from kled.resources import sshkeys
from kled.resources.sshkeys import fingerprint, parse_key, user_keys
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter()


class KeyBody(BaseModel):
    key: str


def _entry(line: str) -> dict[str, str]:
    kind, _, comment = parse_key(line)
    return {"id": fingerprint(line), "type": kind, "comment": comment, "key": line}


async def _user_doc(svc: Service, user: UserInfo, team: str, name: str) -> dict[str, Any]:
    what = f"user/{team}/{name}"
    authz.check_team(user, team, what)
    doc = await svc.get(ADMIN, Key("User", team, "", name))
    if user.server_admin or (user.username == name and user.team == team):
        return doc
    role = (doc.get("spec") or {}).get("role")
    if authz.rank(user.role) < authz.rank("admin"):
        authz.deny(user, "manage-ssh-keys", what)
        raise Forbidden(f"only {name} or a team admin may manage {name}'s SSH keys")
    authz.check_ceiling(user, role, "manage the SSH keys of", what)
    return doc


def _keys(doc: dict[str, Any]) -> list[str]:
    return user_keys(doc)


async def _write(svc: Service, doc: dict[str, Any], keys: list[str]) -> None:
    doc = {**doc, "spec": {**(doc.get("spec") or {}), "sshKeys": [{"key": k} for k in keys]}}
    version = (doc.get("metadata") or {}).get("resourceVersion")
    await svc.update(ADMIN, doc, expected_version=version)


@router.get("/teams/{team}/users/{name}/ssh-keys", tags=["User"])
async def list_keys(request: Request, team: str, name: str, user: UserInfo = User) -> Response:
    """The user's SSH public keys, each with its id (OpenSSH's SHA256 fingerprint)."""
    doc = await _user_doc(service(request), user, team, name)
    return JSONResponse({"items": [_entry(k) for k in _keys(doc)]})


@router.post("/teams/{team}/users/{name}/ssh-keys", tags=["User"], status_code=201)
async def add_key(
    request: Request, team: str, name: str, body: KeyBody, user: UserInfo = User
) -> Response:
    """Add an OpenSSH public key line to the user (409 if they have it already)."""
    svc = service(request)
    try:
        parse_key(body.key)
    except ValueError as err:
        raise InvalidInput(str(err), field="key") from None
    doc = await _user_doc(svc, user, team, name)
    added = _entry(body.key)
    if any(fingerprint(k) == added["id"] for k in _keys(doc)):
        raise Conflict(f"user/{team}/{name} has the key {added['id']} already")
    await _write(svc, doc, [*_keys(doc), _normal(body.key)])
    log.info("ssh key added user=%s by=%s id=%s", f"user/{team}/{name}", user.username, added["id"])
    return JSONResponse({k: added[k] for k in ("id", "type", "comment")}, status_code=201)


def _normal(line: str) -> str:
    words = line.strip().split(None, 2)
    return " ".join(words)


@router.delete("/teams/{team}/users/{name}/ssh-keys/{key_id:path}", tags=["User"])
async def remove_key(
    request: Request, team: str, name: str, key_id: str, user: UserInfo = User
) -> Response:
    """Remove the key with this id (its fingerprint, or a unique beginning of it)."""
    svc = service(request)
    doc = await _user_doc(svc, user, team, name)
    keys = _keys(doc)
    wanted = key_id if key_id.startswith("SHA256:") else f"SHA256:{key_id}"
    found = [k for k in keys if fingerprint(k).startswith(wanted)]
    if len(wanted) < len("SHA256:") + 4 or not found:
        raise NotFound(f"user/{team}/{name} has no SSH key {key_id}")
    if len(found) > 1:
        raise InvalidInput(f"{key_id} names {len(found)} keys: give more of it", field="ID")
    await _write(svc, doc, [k for k in keys if k != found[0]])
    gone = fingerprint(found[0])
    log.info("ssh key removed user=%s by=%s id=%s", f"user/{team}/{name}", user.username, gone)
    return JSONResponse({"id": gone})


# ---- who may enter a workspace --------------------------------------------------------


def may_enter(user: UserInfo, team: str, workspace: dict[str, Any]) -> bool:
    """The server administrator, and the members ``sshkeys.may_enter`` names."""
    if user.server_admin:
        return True
    return user.team == team and sshkeys.may_enter(user.role, user.username, workspace)


async def allowed_keys(svc: Service, team: str, workspace: dict[str, Any]) -> list[str]:
    """The SSH keys of every user allowed on the workspace, each once."""
    return sshkeys.workspace_keys(workspace, (await svc.store.list("User", team)).items)

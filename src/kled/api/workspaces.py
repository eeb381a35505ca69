"""A workspace's routes beside the generic resource ones: its source, logs and exec.

The source folder goes from the user's CLI to the node that runs it:

``kled ws up ./folder`` packs the folder (a gzipped tar) and uploads it here in parts no
larger than the API's body limit, named by the archive's sha256: parts already here are
skipped, so an interrupted upload resumes. When every part is in, ``complete`` joins them
and checks the digest; only then can a Workspace name it (``spec.source.upload``).

Archives no workspace names are removed an hour after they were written, parts of an
upload left unfinished after a day (at the next upload of the team).

The node's agent fetches the archive with its Message Office credentials (HTTP basic:
the NATS user and password the control plane gave it at join), and only an archive that a
workspace placed on that node names. Archives live under the control plane's data dir,
so a scale-out control plane with several replicas needs a shared folder there.

``…/workspaces/{name}/logs`` reads what the build and hooks printed from the Message
Office; ``…/workspaces/{name}/exec`` is ``exec_stream``'s WebSocket, into the workspace.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api import authz, exec_stream, openapi, userkeys, wstokens
from kled.api.hosts import HostServices
from kled.api.rest import User, service
from kled.api.service import Service, parse_duration
from kled.bus.exec_link import ExecLink
from kled.bus.office import MessageOffice
from kled.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KledError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from kled.resources.registry import kind_info
from kled.resources.workspacestate import workspace_id
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
router.include_router(userkeys.router)  # users' SSH keys, which workspaces' servers accept

_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
MAX_PARTS = 100_000


def _hosts(request: Request) -> HostServices:
    hosts: HostServices = request.app.state.hosts
    return hosts


def _root(request: Request, team: str) -> Path:
    return Path(_hosts(request).settings.data_dir) / "workspace-sources" / team


def _digest(value: str) -> str:
    if not _DIGEST.match(value):
        raise InvalidInput("must be a sha256 in hex (64 characters)", field="digest")
    return value


def archive_path(root: Path, digest: str) -> Path:
    return root / f"{digest}.tar.gz"


@router.get("/teams/{team}/workspace-sources/{digest}", tags=["Workspace"])
async def source_state(request: Request, team: str, digest: str, user: UserInfo = User) -> Response:
    """Whether the archive is complete, else which parts are already here."""
    authz.authorize(user, "create", kind_info("Workspace"), team, f"workspace/{team}")
    root = _root(request, team)
    _digest(digest)
    if archive_path(root, digest).exists():
        return JSONResponse({"complete": True, "parts": []})
    parts = root / f"{digest}.parts"
    have = sorted(int(p.name) for p in parts.iterdir()) if parts.is_dir() else []
    return JSONResponse({"complete": False, "parts": have})


@router.put(
    "/teams/{team}/workspace-sources/{digest}/parts/{index}",
    tags=["Workspace"],
    openapi_extra=openapi.bytes_body("one part of the source archive"),
)
async def put_part(
    request: Request, team: str, digest: str, index: int, user: UserInfo = User
) -> Response:
    authz.authorize(user, "create", kind_info("Workspace"), team, f"workspace/{team}")
    _digest(digest)
    if not 0 <= index < MAX_PARTS:
        raise InvalidInput(f"must be between 0 and {MAX_PARTS - 1}", field="index")
    data = await request.body()
    parts = _root(request, team) / f"{digest}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".{index}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, parts / str(index))
    return JSONResponse({"part": index, "size": len(data)})


@router.post(
    "/teams/{team}/workspace-sources/{digest}/complete",
    tags=["Workspace"],
    openapi_extra=openapi.no_body(),
)
async def complete(
    request: Request, team: str, digest: str, parts: int, user: UserInfo = User
) -> Response:
    """Join parts 0..parts-1; the result must have the digest it is named by."""
    authz.authorize(user, "create", kind_info("Workspace"), team, f"workspace/{team}")
    _digest(digest)
    root = _root(request, team)
    target = archive_path(root, digest)
    if target.exists():
        return JSONResponse({"complete": True})
    folder = root / f"{digest}.parts"
    missing = [i for i in range(parts) if not (folder / str(i)).exists()]
    if parts < 1 or missing:
        raise InvalidInput(f"parts missing: {missing[:10] or [0]}", field="parts")
    tmp = root / f".{digest}.tmp"
    sha = hashlib.sha256()
    with tmp.open("wb") as out:
        for i in range(parts):
            chunk = (folder / str(i)).read_bytes()
            sha.update(chunk)
            out.write(chunk)
    if sha.hexdigest() != digest:
        tmp.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        raise InvalidInput("the parts do not make the archive named: upload again", field="digest")
    os.replace(tmp, target)
    shutil.rmtree(folder, ignore_errors=True)
    await _prune(request, team, keep=digest)
    return JSONResponse({"complete": True})


#: an archive no workspace names is removed this long after it was written
UNUSED_FOR = 3600.0
#: an upload's parts are removed this long after the last one came
PARTS_FOR = 86400.0


async def _prune(request: Request, team: str, *, keep: str) -> None:
    """Remove the team's archives that no workspace names (any more), and stale parts."""
    root = _root(request, team)
    docs = (await _hosts(request).store.list("Workspace", team)).items
    named = {((d.get("spec") or {}).get("source") or {}).get("upload") for d in docs} | {keep}
    now = time.time()
    for path in root.iterdir():
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        digest = path.name.split(".", 1)[0]
        if path.name.endswith(".tar.gz") and digest not in named and age > UNUSED_FOR:
            path.unlink(missing_ok=True)
        elif path.name.endswith(".parts") and digest != keep and age > PARTS_FOR:
            shutil.rmtree(path, ignore_errors=True)


def _node_login(request: Request, node: str) -> None:
    hosts = _hosts(request)
    if hosts.embedded is None:
        raise Unavailable("workspace sources are served to agents of the embedded NATS only")
    header = request.headers.get("authorization") or ""
    expected = hosts.embedded.node_credentials(node)
    try:
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, password = "", ""
    if (
        expected is None
        or not header.startswith("Basic ")
        or not hmac.compare_digest(user, expected.user)
        or not hmac.compare_digest(password, expected.password)
    ):
        raise Unauthorized("a node's Message Office credentials are required")


@router.get(
    "/nodes/{node}/workspace-sources/{team}/{digest}",
    tags=["Workspace"],
    openapi_extra=openapi.NODE_LOGIN,
)
async def node_source(request: Request, node: str, team: str, digest: str) -> Response:
    """The archive, for the agent of the node that runs a workspace naming it."""
    _node_login(request, node)
    _digest(digest)
    store = _hosts(request).store
    wanted = [
        doc
        for doc in (await store.list("Workspace", team)).items
        if ((doc.get("spec") or {}).get("source") or {}).get("upload") == digest
        and (doc.get("status") or {}).get("node") == node
    ]
    path = archive_path(_root(request, team), digest)
    if not wanted or not path.exists():
        raise NotFound(f"no workspace source {digest[:12]} for node {node}")
    return FileResponse(path, media_type="application/gzip")


@router.post(
    "/nodes/{node}/workspace-tokens/{team}/{name}",
    tags=["Workspace"],
    openapi_extra={**openapi.NODE_LOGIN, **openapi.no_body()},
)
async def node_workspace_token(request: Request, node: str, team: str, name: str) -> Response:
    """A new token of the workspace's owner, for the agent of the node it is placed on to
    put in the container it makes (``wstokens``); ``token`` is null when it has no owner."""
    _node_login(request, node)
    hosts = _hosts(request)
    doc = await hosts.store.find(Key("Workspace", team, "", name))
    if doc is None or (doc.get("status") or {}).get("node") != node:
        raise NotFound(f"no workspace {name} of team {team} on node {node}")
    svc: Service = request.app.state.service
    token = await wstokens.issue(hosts.store, svc.credentials, team, name)
    svc.forget_credentials()
    return JSONResponse({"team": team, "user": wstokens.owner_of(doc), "token": token})


@router.get(
    "/teams/{team}/workspaces/{name}/logs",
    tags=["Workspace"],
    responses=openapi.stream("application/x-ndjson", "log lines, one JSON object a line"),
)
async def workspace_logs(
    request: Request,
    team: str,
    name: str,
    user: UserInfo = User,
    follow: bool = False,
    since: str | None = None,
) -> Response:
    """What the workspace's build and lifecycle commands printed, as JSON lines
    (``since``: only the last ``90s``, ``5m``…)."""
    authz.authorize(user, "get", kind_info("Workspace"), team, f"workspace/{team}/{name}")
    await service(request).get(user, Key("Workspace", team, "", name))
    office = _hosts(request).office
    if office is None:
        raise Unavailable("this server has no Message Office: no logs to read")
    start = datetime.now(UTC) - parse_duration(since, "since") if since else None

    async def lines() -> AsyncIterator[bytes]:
        async for line in office.read_logs(workspace_id(team, name), since=start, follow=follow):
            entry = {
                "stream": line.stream,
                "line": line.line,
                "time": line.time.isoformat().replace("+00:00", "Z"),
            }
            yield (json.dumps(entry) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.websocket("/teams/{team}/workspaces/{name}/exec")
async def workspace_exec(ws: WebSocket, team: str, name: str) -> None:
    """``kled ws exec``: the exec stream of ``exec_stream``, into a Running workspace, as
    its remoteUser, in its workspaceFolder, with its remoteEnv (the agent knows them)."""
    await _workspace_stream(ws, team, name, ssh=False)


@router.websocket("/teams/{team}/workspaces/{name}/ssh")
async def workspace_ssh(ws: WebSocket, team: str, name: str) -> None:
    """``kled ws proxy``: the same stream, carrying SSH to a server the node's agent runs
    for this one connection (``agent/wsssh.py``). The command is ``ssh KEY``: the client's
    public key; the server accepts it and the keys of the users allowed on the workspace
    (its owner, the team's admins: ``userkeys``), who alone may connect."""
    await _workspace_stream(ws, team, name, ssh=True)


@router.websocket("/teams/{team}/workspaces/{name}/agent")
async def workspace_agent(ws: WebSocket, team: str, name: str) -> None:
    """``kled ws up`` of an SSH git URL: the same stream, carrying the laptop's SSH agent
    to the node for the clone (``workspace/agentrelay.py``; the command is ``ssh-agent``).
    Open once the workspace is placed, before it runs; for those who may enter it."""
    await _workspace_stream(ws, team, name, ssh=False, relay=True)


def _ssh_command(command: list[str]) -> list[str]:
    key = command[1].split() if len(command) == 2 and command[0] == "ssh" else []
    if len(key) < 2 or not key[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise InvalidInput("command: give ssh and an OpenSSH public key", field="command")
    return ["ssh", " ".join(key[:2])]


async def _workspace_stream(
    ws: WebSocket, team: str, name: str, *, ssh: bool, relay: bool = False
) -> None:
    svc: Service = ws.app.state.service
    what = f"workspace/{team}/{name}"
    try:
        user = await exec_stream._user(ws, svc)
        authz.check_team(user, team, what)
        doc = await svc.get(user, Key("Workspace", team, "", name))
        authz.authorize(user, "update", kind_info("Workspace"), team, what)
        command = exec_stream._command(ws)
        # an exec or SSH session sees the owner's token (``wstokens``): only those who may
        # act as the owner enter, as with SSH keys
        if not userkeys.may_enter(user, team, doc):
            authz.deny(user, "ssh" if ssh else "exec", what)
            owner = (doc.get("spec") or {}).get("owner")
            raise Forbidden(f"{what} is {owner}'s: only they and team admins may enter it")
        await wstokens.check_owner_write(
            svc.store, user, Key("Workspace", team, "", name), doc, None, verb="enter"
        )
        if ssh:
            keys = await userkeys.allowed_keys(svc, team, doc)
            base = _ssh_command(command)
            command = [*base, *(k for k in keys if " ".join(k.split()[:2]) != base[1])]
        status = doc.get("status") or {}
        if relay:
            if command != ["ssh-agent"]:
                raise InvalidInput("command: the agent stream runs ssh-agent", field="command")
            if not status.get("node"):
                raise Conflict(f"{what} is not placed on a node yet")
        elif status.get("phase") != "Running" or not status.get("node"):
            raise Conflict(f"{what} is {status.get('phase') or 'Pending'}, not Running")
        node = str(status["node"])
        hosts = getattr(ws.app.state, "hosts", None)
        office: MessageOffice | None = getattr(hosts, "office", None)
        if office is None:
            raise Unavailable("this server has no Message Office: no agent to exec through")
    except KledError as err:
        await exec_stream._deny(ws, err)
        return
    rid = workspace_id(team, name)
    if ssh:
        rid = rid.removesuffix(".0") + ".ssh"
    elif relay:
        rid = rid.removesuffix(".0") + ".agent"
    session = uuid.uuid4().hex
    subjects = office.subjects
    link = ExecLink(office, subjects.exec_in(node, session), subjects.exec_out(node, session))
    try:
        await link.open()
    except KledError as err:
        await exec_stream._deny(ws, err)
        return
    await ws.accept()
    log.info("exec user=%s %s node=%s argv0=%s", user.username, what, node, command[0])
    try:
        await exec_stream._relay(ws, link, rid, command)
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()

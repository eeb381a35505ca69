"""``kled exec``'s door into the control plane: a WebSocket relayed to a replica's agent.

``GET /api/v1/teams/{team}/environments/{env}/apps/{name}/exec?command=…&command=…``
upgraded to a WebSocket runs ``command`` inside one replica of the app (``replica=N``, else
the first Running one). Who may update the app may exec into it: a viewer is refused with
403, another team with 404, before the upgrade (a denial response with Kled's ``Status``
body, so a client reads the same error as from any route).

On the socket every message is binary; its first byte names the channel, as Kubernetes'
exec protocol does: ``0`` stdin, ``1`` stdout, ``2`` stderr, ``3`` the end (a JSON object:
``{"exitCode": N}`` or ``{"error": "…"}``), ``4`` a signal for the command
(``{"signal": 15}``), and ``255 0`` the end of stdin. Behind it the stream travels the
Message Office to the agent (``kled.bus.exec_link``) in bounded frames with a window, so a
slow terminal slows the command rather than filling the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.errors import status_body
from kled.api.service import Service
from kled.bus.exec_link import MAX_CHUNK, ExecLink, LinkLost
from kled.bus.office import MessageOffice
from kled.errors import Conflict, InvalidInput, KledError, Unauthorized, Unavailable
from kled.resources.hoststate import replica_id
from kled.resources.registry import kind_info
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")

STDIN, STDOUT, STDERR, END, SIGNAL, CLOSE = 0, 1, 2, 3, 4, 255
#: how long the agent has to start the command
START_TIMEOUT = 15.0
MAX_ARGS = 256
MAX_ARGV_BYTES = 64 * 1024


async def _user(ws: WebSocket, svc: Service) -> UserInfo:
    header = ws.headers.get("authorization") or ""
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    user = await svc.authenticate(token)
    if user is None:
        raise Unauthorized(
            "missing, unknown, expired or revoked token: "
            "pass Authorization: Bearer TOKEN (kled login)"
        )
    return user


def _command(ws: WebSocket) -> list[str]:
    command = ws.query_params.getlist("command")
    if not command or not all(command):
        raise InvalidInput("command: give the command to run, one argument each", field="command")
    if len(command) > MAX_ARGS or sum(len(a.encode()) for a in command) > MAX_ARGV_BYTES:
        raise InvalidInput(f"command: at most {MAX_ARGS} arguments, 64 KiB", field="command")
    return command


def pick_replica(doc: dict[str, Any], wanted: int | None, what: str) -> tuple[int, str]:
    """(index, node) of the replica to exec into: ``wanted``, else the first Running."""
    entries = (doc.get("status") or {}).get("replicas") or []
    running = sorted(
        (e for e in entries if e.get("state") == "Running" and e.get("node")),
        key=lambda e: int(e.get("index", 0)),
    )
    if wanted is None:
        if not running:
            raise Conflict(f"{what} has no Running replica to exec into")
        return int(running[0]["index"]), str(running[0]["node"])
    for entry in entries:
        if int(entry.get("index", -1)) == wanted:
            if entry.get("state") != "Running" or not entry.get("node"):
                state = entry.get("state") or "not placed"
                raise Conflict(f"replica {wanted} of {what} is {state}, not Running")
            return wanted, str(entry["node"])
    raise InvalidInput(f"replica: {what} has no replica {wanted}", field="replica")


def terminal(ws: WebSocket) -> dict[str, int] | None:
    """``tty=1`` (with ``cols`` and ``rows``, 80 by 24 by default): the command gets a
    terminal of that size; None for pipes."""
    params = ws.query_params
    if params.get("tty") not in ("1", "true"):
        return None
    size = {"cols": 80, "rows": 24}
    for name in size:
        raw = params.get(name)
        if raw is not None:
            if not raw.isdigit() or not 0 < int(raw) < 10000:
                raise InvalidInput(f"{name}: a terminal size between 1 and 9999", field=name)
            size[name] = int(raw)
    return size


async def _deny(ws: WebSocket, err: KledError) -> None:
    body = JSONResponse(status_body(err.status, err.reason, str(err), err.field), err.status)
    try:
        await ws.send_denial_response(body)
    except RuntimeError:
        await ws.accept()
        await ws.send_bytes(bytes([END]) + json.dumps({"error": str(err)}).encode())
        await ws.close(4000 + err.status)


@router.websocket("/teams/{team}/environments/{env}/apps/{name}/exec")
async def app_exec(ws: WebSocket, team: str, env: str, name: str) -> None:
    svc: Service = ws.app.state.service
    what = f"app/{team}/{env}/{name}"
    try:
        user = await _user(ws, svc)
        authz.check_team(user, team, what)
        doc = await svc.get(user, Key("App", team, env, name))
        authz.authorize(user, "update", kind_info("App"), team, what)
        command = _command(ws)
        tty = terminal(ws)
        raw = ws.query_params.get("replica")
        if raw is not None and not raw.isdigit():
            raise InvalidInput("replica: a replica index (0, 1, …)", field="replica")
        index, node = pick_replica(doc, None if raw is None else int(raw), what)
        hosts = getattr(ws.app.state, "hosts", None)
        office: MessageOffice | None = getattr(hosts, "office", None)
        if office is None:
            raise Unavailable("this server has no Message Office: no agent to exec through")
    except KledError as err:
        await _deny(ws, err)
        return
    rid = replica_id(team, env, name, index)
    session = uuid.uuid4().hex
    subjects = office.subjects
    link = ExecLink(office, subjects.exec_in(node, session), subjects.exec_out(node, session))
    try:
        await link.open()
    except KledError as err:
        await _deny(ws, err)
        return
    await ws.accept()
    log.info("exec user=%s replica=%s node=%s argv0=%s", user.username, rid, node, command[0])
    try:
        await _relay(ws, link, rid, command, tty=tty)
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()


Ending = Callable[[WebSocket, dict[str, Any]], Awaitable[None]]


async def _relay(
    ws: WebSocket,
    link: ExecLink,
    rid: str,
    command: list[str],
    end: Ending | None = None,
    *,
    tty: dict[str, int] | None = None,
    container: str | None = None,
) -> None:
    """Relay one exec session; ``end`` sends the result (``{"exitCode"}`` or ``{"error"}``)
    in the client's protocol (Kled's own by default; Kled Clusters send a ``Status``);
    ``tty`` (cols, rows) runs the command on a terminal of its own; ``container`` names a
    sidecar of the replica's pod to run it in."""
    _end = end or _end_kled
    extra: dict[str, Any] = {} if tty is None else {"tty": tty}
    if container is not None:
        extra["container"] = container
    await link.send("open", replica=rid, command=command, **extra)
    try:
        first = await asyncio.wait_for(link.recv(), START_TIMEOUT)
    except (TimeoutError, LinkLost) as err:
        message = f"the agent running {rid} did not answer: {err or 'timeout'}"
        await _end(ws, {"error": message})
        return
    if first.kind != "started":
        await _end(ws, {"error": str(first.meta.get("message") or first.kind)})
        return
    upstream = asyncio.create_task(_from_client(ws, link))
    try:
        while True:
            try:
                frame = await link.recv()
            except LinkLost as err:
                await _end(ws, {"error": str(err)})
                return
            if frame.kind in ("out", "err"):
                channel = STDOUT if frame.kind == "out" else STDERR
                await ws.send_bytes(bytes([channel]) + frame.data)
                await link.consumed(len(frame.data))
            elif frame.kind == "exit":
                await _end(ws, {"exitCode": frame.meta.get("code")})
                return
            elif frame.kind == "error":
                await _end(ws, {"error": str(frame.meta.get("message"))})
                return
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away: the finally of app_exec tells the agent
    finally:
        upstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, KledError):
            await upstream


async def _from_client(ws: WebSocket, link: ExecLink) -> None:
    """The client's messages to the agent; its disconnect closes the stream."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if not data:
                continue
            channel, body = data[0], data[1:]
            if channel == STDIN:
                for start in range(0, len(body), MAX_CHUNK):
                    await link.send_data("in", body[start : start + MAX_CHUNK])
            elif channel == CLOSE:
                await link.send("eof")
            elif channel == SIGNAL:
                with contextlib.suppress(ValueError, AttributeError):
                    asked = json.loads(body)
                    number, size = asked.get("signal"), asked.get("resize")
                    if isinstance(number, int):
                        await link.send("kill", signal=number)
                    elif isinstance(size, dict) and _size_ok(size):
                        await link.send("resize", cols=size["cols"], rows=size["rows"])
    except WebSocketDisconnect:
        pass
    await link.send("close")


async def _end_kled(ws: WebSocket, result: dict[str, Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_bytes(bytes([END]) + json.dumps(result).encode())
        await ws.close(1000)


def _size_ok(size: dict[str, Any]) -> bool:
    return all(isinstance(size.get(k), int) and 0 < size[k] < 10000 for k in ("cols", "rows"))

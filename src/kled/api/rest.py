"""REST routes for every kind, generated from the kind registry.

Server-wide kinds live at ``/api/v1/{plural}``, team kinds at
``/api/v1/teams/{team}/{plural}``, environment kinds at
``/api/v1/teams/{team}/environments/{env}/{plural}`` (and listed across environments at the
team path). A ``GET`` on a collection with ``watch=true`` streams Server-Sent Events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api.authz import check_team
from kled.api.service import Outcome, Service
from kled.errors import InvalidInput, Unauthorized
from kled.resources.registry import API_VERSION, KindInfo, Scope, resolve_kind
from kled.store.objects import Key

router = APIRouter(prefix="/api/v1")
MAX_LIST = 1000


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def current_user(
    request: Request, authorization: str | None = Header(default=None)
) -> UserInfo:
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    user = await service(request).authenticate(token)
    if user is None:
        raise Unauthorized(
            "missing, unknown, expired or revoked token: "
            "pass Authorization: Bearer TOKEN (kled login)"
        )
    request.state.user = user
    # Another team's paths do not exist for this user: answer 404 before anything else,
    # so that neither validation nor authorisation tells them what is there.
    params = request.path_params
    team = params.get("team") or (params.get("name") if params.get("plural") == "teams" else None)
    if team:
        check_team(user, str(team), f"team {team}")
    return user


User = Depends(current_user)


def _matcher(label_selector: str | None) -> Any:
    if not label_selector:
        return None
    from kled.resources.selectors import parse_selector

    return parse_selector(label_selector).matches


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        doc = json.loads(raw or b"null")
    except ValueError as e:
        raise InvalidInput(f"the body is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be one resource as a JSON object")
    return doc


def _outcome(outcome: Outcome, status: int = 200) -> JSONResponse:
    body: dict[str, Any] = {
        "result": outcome.result,
        "object": outcome.object,
        "warnings": outcome.warnings,
    }
    if outcome.token:
        body["token"] = outcome.token
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in outcome.warnings)}
    return JSONResponse(body, status_code=status, headers=headers if outcome.warnings else None)


def _info(plural: str, scope: Scope | None = None) -> KindInfo:
    info = resolve_kind(plural)
    if plural != info.plural:
        raise InvalidInput(f"use the plural {info.plural!r} in paths", field="path")
    if scope is not None and info.scope is not scope:
        where = {
            Scope.SERVER: "/api/v1/{plural}",
            Scope.TEAM: "/api/v1/teams/{team}/{plural}",
            Scope.ENVIRONMENT: "/api/v1/teams/{team}/environments/{env}/{plural}",
        }[info.scope]
        raise InvalidInput(f"{info.plural} live at {where}", field="path")
    return info


def _place(doc: dict[str, Any], info: KindInfo, team: str, env: str, name: str = "") -> None:
    """Fill metadata.team/environment/kind from the path; refuse a body that disagrees."""
    if doc.get("kind") not in (None, info.kind):
        raise InvalidInput(f"kind {doc.get('kind')!r} sent to {info.plural}", field="kind")
    doc["kind"] = info.kind
    doc.setdefault("apiVersion", API_VERSION)
    meta = doc.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise InvalidInput("must be an object", field="metadata")
    for field_name, value in (("team", team), ("environment", env), ("name", name)):
        if not value:
            continue
        given = meta.get(field_name)
        if given not in (None, "", value):
            raise InvalidInput(
                f"is {given!r} but the path says {value!r}", field=f"metadata.{field_name}"
            )
        meta[field_name] = value


# ---- collections ---------------------------------------------------------------------


async def _collection(
    request: Request,
    user: UserInfo,
    info: KindInfo,
    team: str | None,
    env: str | None,
    label_selector: str | None,
    limit: int,
    continue_token: str | None,
    watch: bool,
    resource_version: str | None,
    last_event_id: str | None,
) -> Response:
    svc = service(request)
    matches = _matcher(label_selector)
    if watch:
        since_text = last_event_id or resource_version
        since = None
        if since_text:
            try:
                since = int(since_text)
            except ValueError as e:
                raise InvalidInput("must be a number", field="resourceVersion") from e
        stream = await svc.watch(user, info, team, env, since=since, matches=matches)
        return StreamingResponse(
            _sse(stream),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if limit < 0 or limit > MAX_LIST:
        raise InvalidInput(f"must be 0-{MAX_LIST}", field="limit")
    page = await svc.list(
        user, info, team, env, matches=matches, limit=limit, continue_token=continue_token
    )
    return JSONResponse(
        {
            "apiVersion": API_VERSION,
            "kind": "List",
            "items": page.items,
            "metadata": {"continue": page.continue_token, "resourceVersion": str(page.revision)},
        }
    )


async def _sse(stream: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    yield b": watching\n\n"
    async for event in stream:
        data = json.dumps({"type": event.type, "object": Service.present(event.object)})
        yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


@router.get("/{plural}")
async def list_server(
    request: Request,
    plural: str,
    user: UserInfo = User,
    labelSelector: str | None = None,
    limit: int = 0,
    continue_: str | None = Query(default=None, alias="continue"),
    watch: bool = False,
    resourceVersion: str | None = None,
    last_event_id: str | None = Header(default=None),
) -> Response:
    info = _info(plural, Scope.SERVER)
    return await _collection(
        request,
        user,
        info,
        None,
        None,
        labelSelector,
        limit,
        continue_,
        watch,
        resourceVersion,
        last_event_id,
    )


@router.get("/teams/{team}/{plural}")
async def list_team(
    request: Request,
    team: str,
    plural: str,
    user: UserInfo = User,
    labelSelector: str | None = None,
    limit: int = 0,
    continue_: str | None = Query(default=None, alias="continue"),
    watch: bool = False,
    resourceVersion: str | None = None,
    last_event_id: str | None = Header(default=None),
) -> Response:
    info = _info(plural)
    if info.scope is Scope.SERVER:
        raise InvalidInput(f"{info.plural} live at /api/v1/{info.plural}", field="path")
    await _require_team(request, user, team)
    return await _collection(
        request,
        user,
        info,
        team,
        None,
        labelSelector,
        limit,
        continue_,
        watch,
        resourceVersion,
        last_event_id,
    )


@router.get("/teams/{team}/environments/{env}/{plural}")
async def list_env(
    request: Request,
    team: str,
    env: str,
    plural: str,
    user: UserInfo = User,
    labelSelector: str | None = None,
    limit: int = 0,
    continue_: str | None = Query(default=None, alias="continue"),
    watch: bool = False,
    resourceVersion: str | None = None,
    last_event_id: str | None = Header(default=None),
) -> Response:
    info = _info(plural, Scope.ENVIRONMENT)
    await _require_team(request, user, team)
    return await _collection(
        request,
        user,
        info,
        team,
        env,
        labelSelector,
        limit,
        continue_,
        watch,
        resourceVersion,
        last_event_id,
    )


async def _require_team(request: Request, user: UserInfo, team: str) -> None:
    check_team(user, team, f"team {team}")
    if await service(request).store.find(Key("Team", "", "", team)) is None:
        from kled.errors import NotFound

        raise NotFound(f"team {team} not found")


@router.post("/{plural}", status_code=201)
async def create_server(
    request: Request, plural: str, user: UserInfo = User, dryRun: bool = False
) -> Response:
    info = _info(plural, Scope.SERVER)
    doc = await _body(request)
    _place(doc, info, "", "")
    return _outcome(await service(request).create(user, doc, dry_run=dryRun), 201)


@router.post("/teams/{team}/{plural}", status_code=201)
async def create_team(
    request: Request,
    team: str,
    plural: str,
    user: UserInfo = User,
    dryRun: bool = False,
) -> Response:
    info = _info(plural, Scope.TEAM)
    doc = await _body(request)
    _place(doc, info, team, "")
    return _outcome(await service(request).create(user, doc, dry_run=dryRun), 201)


@router.post("/teams/{team}/environments/{env}/clone", status_code=201)
async def clone_env(request: Request, team: str, env: str, user: UserInfo = User) -> Response:
    body = await _body(request)
    target = body.get("name")
    if not isinstance(target, str) or not target:
        raise InvalidInput("the new environment's name is required", field="name")
    return _outcome(await service(request).clone_environment(user, team, env, target), 201)


@router.post("/teams/{team}/environments/{env}/{plural}", status_code=201)
async def create_env(
    request: Request,
    team: str,
    env: str,
    plural: str,
    user: UserInfo = User,
    dryRun: bool = False,
) -> Response:
    info = _info(plural, Scope.ENVIRONMENT)
    doc = await _body(request)
    _place(doc, info, team, env)
    return _outcome(await service(request).create(user, doc, dry_run=dryRun), 201)


# ---- items -----------------------------------------------------------------------------


def _key(info: KindInfo, team: str, env: str, name: str) -> Key:
    return Key(info.kind, team, env, name)


async def _item(
    request: Request,
    user: UserInfo,
    info: KindInfo,
    team: str,
    env: str,
    name: str,
    reveal: bool,
) -> Response:
    doc = await service(request).get(user, _key(info, team, env, name), reveal=reveal)
    return JSONResponse(doc)


@router.get("/{plural}/{name}")
async def get_server(request: Request, plural: str, name: str, user: UserInfo = User) -> Response:
    return await _item(request, user, _info(plural, Scope.SERVER), "", "", name, False)


@router.get("/teams/{team}/{plural}/{name}")
async def get_team(
    request: Request, team: str, plural: str, name: str, user: UserInfo = User
) -> Response:
    return await _item(request, user, _info(plural, Scope.TEAM), team, "", name, False)


@router.get("/teams/{team}/environments/{env}/{plural}/{name}")
async def get_env(
    request: Request,
    team: str,
    env: str,
    plural: str,
    name: str,
    user: UserInfo = User,
    reveal: bool = False,
) -> Response:
    return await _item(request, user, _info(plural, Scope.ENVIRONMENT), team, env, name, reveal)


async def _replace(
    request: Request,
    user: UserInfo,
    info: KindInfo,
    team: str,
    env: str,
    name: str,
    dry_run: bool,
) -> Response:
    doc = await _body(request)
    _place(doc, info, team, env, name)
    return _outcome(await service(request).update(user, doc, dry_run=dry_run))


@router.put("/{plural}/{name}")
async def put_server(
    request: Request,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
) -> Response:
    return await _replace(request, user, _info(plural, Scope.SERVER), "", "", name, dryRun)


@router.put("/teams/{team}/{plural}/{name}")
async def put_team(
    request: Request,
    team: str,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
) -> Response:
    return await _replace(request, user, _info(plural, Scope.TEAM), team, "", name, dryRun)


@router.put("/teams/{team}/environments/{env}/{plural}/{name}")
async def put_env(
    request: Request,
    team: str,
    env: str,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
) -> Response:
    info = _info(plural, Scope.ENVIRONMENT)
    return await _replace(request, user, info, team, env, name, dryRun)


async def _put_status(
    request: Request, user: UserInfo, info: KindInfo, team: str, env: str, name: str
) -> Response:
    body = await _body(request)
    status = body.get("status", body)
    if not isinstance(status, dict):
        raise InvalidInput("must be an object", field="status")
    version = (body.get("metadata") or {}).get("resourceVersion")
    doc = await service(request).update_status(user, _key(info, team, env, name), status, version)
    return JSONResponse(doc)


@router.put("/{plural}/{name}/status")
async def status_server(
    request: Request, plural: str, name: str, user: UserInfo = User
) -> Response:
    return await _put_status(request, user, _info(plural, Scope.SERVER), "", "", name)


@router.put("/teams/{team}/{plural}/{name}/status")
async def status_team(
    request: Request, team: str, plural: str, name: str, user: UserInfo = User
) -> Response:
    return await _put_status(request, user, _info(plural, Scope.TEAM), team, "", name)


@router.put("/teams/{team}/environments/{env}/{plural}/{name}/status")
async def status_env(
    request: Request, team: str, env: str, plural: str, name: str, user: UserInfo = User
) -> Response:
    info = _info(plural, Scope.ENVIRONMENT)
    return await _put_status(request, user, info, team, env, name)


async def _remove(
    request: Request,
    user: UserInfo,
    info: KindInfo,
    team: str,
    env: str,
    name: str,
    dry_run: bool,
    version: str | None,
) -> Response:
    outcome = await service(request).delete(
        user, _key(info, team, env, name), dry_run=dry_run, expected_version=version
    )
    return _outcome(outcome)


@router.delete("/{plural}/{name}")
async def delete_server(
    request: Request,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
    resourceVersion: str | None = None,
) -> Response:
    info = _info(plural, Scope.SERVER)
    return await _remove(request, user, info, "", "", name, dryRun, resourceVersion)


@router.delete("/teams/{team}/{plural}/{name}")
async def delete_team(
    request: Request,
    team: str,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
    resourceVersion: str | None = None,
) -> Response:
    info = _info(plural, Scope.TEAM)
    return await _remove(request, user, info, team, "", name, dryRun, resourceVersion)


@router.delete("/teams/{team}/environments/{env}/{plural}/{name}")
async def delete_env(
    request: Request,
    team: str,
    env: str,
    plural: str,
    name: str,
    user: UserInfo = User,
    dryRun: bool = False,
    resourceVersion: str | None = None,
) -> Response:
    info = _info(plural, Scope.ENVIRONMENT)
    return await _remove(request, user, info, team, env, name, dryRun, resourceVersion)

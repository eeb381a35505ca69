"""REST routes for every kind, generated from the kind registry.

Server-wide kinds live at ``/api/v1/{plural}``, team kinds at
``/api/v1/teams/{team}/{plural}``, environment kinds at
``/api/v1/teams/{team}/environments/{env}/{plural}`` (and listed across environments at the
team path). A ``GET`` on a collection with ``watch=true`` streams Server-Sent Events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api.authz import check_team
from kled.api.service import Outcome, Service
from kled.errors import InvalidInput, NotFound, Unauthorized
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


async def _require_team(request: Request, user: UserInfo, team: str) -> None:
    check_team(user, team, f"team {team}")
    if await service(request).store.find(Key("Team", "", "", team)) is None:
        raise NotFound(f"team {team} not found")


@router.post("/teams/{team}/environments/{env}/clone", status_code=201)
async def clone_env(request: Request, team: str, env: str, user: UserInfo = User) -> Response:
    body = await _body(request)
    target = body.get("name")
    if not isinstance(target, str) or not target:
        raise InvalidInput("the new environment's name is required", field="name")
    return _outcome(await service(request).clone_environment(user, team, env, target), 201)


# ---- the routes of every kind, per scope -------------------------------------------------


@dataclass
class ListQuery:
    """Query parameters of a collection ``GET`` (the API's own camelCase spelling)."""

    labelSelector: str | None = None
    limit: int = 0
    continue_: str | None = Query(default=None, alias="continue")
    watch: bool = False
    resourceVersion: str | None = None


@dataclass
class WriteQuery:
    dryRun: bool = False
    resourceVersion: str | None = None


def _where(request: Request) -> tuple[str, str]:
    params = request.path_params
    return str(params.get("team", "")), str(params.get("env", ""))


PREFIXES = {
    Scope.SERVER: "",
    Scope.TEAM: "/teams/{team}",
    Scope.ENVIRONMENT: "/teams/{team}/environments/{env}",
}


def _routes(scope: Scope) -> None:
    """Register list, create, get, replace, status and delete for kinds under ``scope``'s path.

    The team path also lists environment kinds across the team's environments.
    """
    prefix = PREFIXES[scope]
    listable = (scope, Scope.ENVIRONMENT) if scope is Scope.TEAM else (scope,)

    async def list_kind(
        request: Request,
        plural: str,
        user: UserInfo = User,
        q: ListQuery = Depends(),
        last_event_id: str | None = Header(default=None),
    ) -> Response:
        info = _info(plural)
        if info.scope not in listable:
            _info(plural, scope)  # raises, naming where the kind lives
        team, env = _where(request)
        if team:
            await _require_team(request, user, team)
        return await _collection(
            request,
            user,
            info,
            team or None,
            env or None,
            q.labelSelector,
            q.limit,
            q.continue_,
            q.watch,
            q.resourceVersion,
            last_event_id,
        )

    async def create(
        request: Request, plural: str, user: UserInfo = User, q: WriteQuery = Depends()
    ) -> Response:
        info = _info(plural, scope)
        team, env = _where(request)
        doc = await _body(request)
        _place(doc, info, team, env)
        return _outcome(await service(request).create(user, doc, dry_run=q.dryRun), 201)

    async def get(
        request: Request, plural: str, name: str, user: UserInfo = User, reveal: bool = False
    ) -> Response:
        team, env = _where(request)
        key = Key(_info(plural, scope).kind, team, env, name)
        return JSONResponse(await service(request).get(user, key, reveal=reveal))

    async def replace(
        request: Request,
        plural: str,
        name: str,
        user: UserInfo = User,
        q: WriteQuery = Depends(),
    ) -> Response:
        info = _info(plural, scope)
        team, env = _where(request)
        doc = await _body(request)
        _place(doc, info, team, env, name)
        return _outcome(await service(request).update(user, doc, dry_run=q.dryRun))

    async def replace_status(
        request: Request, plural: str, name: str, user: UserInfo = User
    ) -> Response:
        team, env = _where(request)
        key = Key(_info(plural, scope).kind, team, env, name)
        body = await _body(request)
        status = body.get("status", body)
        if not isinstance(status, dict):
            raise InvalidInput("must be an object", field="status")
        version = (body.get("metadata") or {}).get("resourceVersion")
        return JSONResponse(await service(request).update_status(user, key, status, version))

    async def remove(
        request: Request,
        plural: str,
        name: str,
        user: UserInfo = User,
        q: WriteQuery = Depends(),
    ) -> Response:
        team, env = _where(request)
        key = Key(_info(plural, scope).kind, team, env, name)
        outcome = await service(request).delete(
            user, key, dry_run=q.dryRun, expected_version=q.resourceVersion
        )
        return _outcome(outcome)

    collection = f"{prefix}/{{plural}}"
    item = f"{collection}/{{name}}"
    for path, handler, method, status in (
        (collection, list_kind, "GET", 200),
        (collection, create, "POST", 201),
        (item, get, "GET", 200),
        (item, replace, "PUT", 200),
        (f"{item}/status", replace_status, "PUT", 200),
        (item, remove, "DELETE", 200),
    ):
        router.add_api_route(
            path,
            handler,
            methods=[method],
            status_code=status,
            name=f"{handler.__name__}_{scope.value}",
        )


for _scope in Scope:
    _routes(_scope)

"""REST routes for every kind, generated from the kind registry.

Server-wide kinds live at ``/api/v1/{plural}``, team kinds at
``/api/v1/teams/{team}/{plural}``, environment kinds at
``/api/v1/teams/{team}/environments/{env}/{plural}`` (and listed across environments at the
team path). A ``GET`` on a collection with ``watch=true`` streams Server-Sent Events.

Each kind gets routes of its own (``/api/v1/teams/{team}/environments/{env}/apps``) rather
than one route per scope with ``{plural}`` in the path, so that the OpenAPI document names
every path, parameter and request body; a kind named by an alias or at the wrong scope
reaches a catch-all that says which path is right.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api import openapi
from kled.api.authz import check_team
from kled.api.errors import status_body
from kled.api.service import Outcome, Service
from kled.errors import Gone, InvalidInput, NotFound, Unauthorized
from kled.resources import bounds
from kled.resources.registry import API_VERSION, KINDS, KindInfo, Scope, resolve_kind
from kled.store.objects import Key

router = APIRouter(prefix="/api/v1")
#: the catch-alls that say where a kind lives: included after every other router, so that
#: ``router`` (the busiest routes) can come first without hiding another router's paths
misplaced_router = APIRouter(prefix="/api/v1")
MAX_LIST = 1000


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def user_of(svc: Service, authorization: str | None) -> UserInfo:
    """The user an ``Authorization`` header's bearer token speaks for; 401 without one."""
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    user = await svc.authenticate(token)
    if user is None:
        raise Unauthorized(
            "missing, unknown, expired or revoked token: "
            "pass Authorization: Bearer TOKEN (kled login)"
        )
    return user


async def current_user(
    request: Request, authorization: str | None = Header(default=None)
) -> UserInfo:
    user = await user_of(service(request), authorization)
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
    doc = bounds.loads(await request.body() or b"null")
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
        }[info.scope].replace("{plural}", info.plural)
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
    if not watch:
        body = await list_body(svc, user, info, team, env, label_selector, limit, continue_token)
        return Response(body, media_type="application/json")
    matches = _matcher(label_selector)
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


async def list_body(
    svc: Service,
    user: UserInfo,
    info: KindInfo,
    team: str | None,
    env: str | None,
    label_selector: str | None,
    limit: int,
    continue_token: str | None,
) -> bytes:
    """The JSON of a page of ``info``'s collection (not a watch), as the API answers it."""
    matches = _matcher(label_selector)
    if limit < 0 or limit > MAX_LIST:
        raise InvalidInput(f"must be 0-{MAX_LIST}", field="limit")
    page = await svc.list(
        user,
        info,
        team,
        env,
        matches=matches,
        limit=limit,
        continue_token=continue_token,
        as_text=True,
    )
    meta = {"continue": page.continue_token, "resourceVersion": str(page.revision)}
    if page.texts is not None:
        # the cache's JSON text of each item as it is: no decoding and encoding again
        body = (
            f'{{"apiVersion":"{API_VERSION}","kind":"List","items":[{",".join(page.texts)}],'
            f'"metadata":{json.dumps(meta, separators=(",", ":"))}}}'
        )
        return body.encode()
    return encode(
        {"apiVersion": API_VERSION, "kind": "List", "items": page.items, "metadata": meta}
    )


def encode(content: Any) -> bytes:
    """JSON as ``JSONResponse`` renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def _sse(stream: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    yield b": watching\n\n"
    try:
        async for event in stream:
            data = json.dumps({"type": event.type, "object": Service.present(event.object)})
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
    except Gone as e:
        # The watcher fell behind compaction mid-stream: say so, as Kubernetes does with an
        # ERROR event holding a 410 Status, and end; the client lists again and resumes.
        status = status_body(e.status, e.reason, str(e), e.field)
        data = json.dumps({"type": "ERROR", "object": status})
        yield f"id: {e.oldest}\nevent: ERROR\ndata: {data}\n\n".encode()


async def _require_team(request: Request, user: UserInfo, team: str) -> None:
    await require_team(service(request), user, team)


async def require_team(svc: Service, user: UserInfo, team: str) -> None:
    check_team(user, team, f"team {team}")
    if await svc.store.find(Key("Team", "", "", team)) is None:
        raise NotFound(f"team {team} not found")


@router.post(
    "/teams/{team}/environments/{env}/clone",
    status_code=201,
    summary="Clone an environment with its apps, configs and secrets",
    tags=["Environment"],
    responses=openapi.responses(201, "Outcome"),
    openapi_extra=openapi.json_body(
        {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "withData": {"type": "boolean"}},
        }
    ),
)
async def clone_env(request: Request, team: str, env: str, user: UserInfo = User) -> Response:
    body = await _body(request)
    target = body.get("name")
    if not isinstance(target, str) or not target:
        raise InvalidInput("the new environment's name is required", field="name")
    with_data = body.get("withData", False)
    if not isinstance(with_data, bool):
        raise InvalidInput("withData: must be true or false", field="withData")
    outcome = await service(request).clone_environment(user, team, env, target, with_data=with_data)
    return _outcome(outcome, 201)


# ---- the routes of every kind, at its own path -------------------------------------------


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


@dataclass(frozen=True)
class Place:
    """What a route's path names: a team, an environment, an object ("" where it names none)."""

    team: str = ""
    env: str = ""
    name: str = ""


TeamName = Annotated[str, Path(description="the team's name")]
EnvName = Annotated[str, Path(description="the environment's name")]
ObjectName = Annotated[str, Path(description="the resource's metadata.name")]


def _at_server() -> Place:
    return Place()


def _at_team(team: TeamName) -> Place:
    return Place(team)


def _at_environment(team: TeamName, env: EnvName) -> Place:
    return Place(team, env)


def _server_object(name: ObjectName) -> Place:
    return Place(name=name)


def _team_object(team: TeamName, name: ObjectName) -> Place:
    return Place(team, name=name)


def _environment_object(team: TeamName, env: EnvName, name: ObjectName) -> Place:
    return Place(team, env, name)


def _the_team(team: TeamName) -> Place:
    # A Team is server-wide, named in the path as {team} like everywhere else, so that
    # current_user's check (another team's paths do not exist) covers it too.
    return Place(name=team)


PREFIXES = {
    Scope.SERVER: "",
    Scope.TEAM: "/teams/{team}",
    Scope.ENVIRONMENT: "/teams/{team}/environments/{env}",
}
COLLECTIONS: dict[Scope, Callable[..., Place]] = {
    Scope.SERVER: _at_server,
    Scope.TEAM: _at_team,
    Scope.ENVIRONMENT: _at_environment,
}
OBJECTS: dict[Scope, Callable[..., Place]] = {
    Scope.SERVER: _server_object,
    Scope.TEAM: _team_object,
    Scope.ENVIRONMENT: _environment_object,
}


def _list_route(info: KindInfo, scope: Scope) -> None:
    """``GET`` of ``info``'s collection at ``scope``'s path (environment kinds also at the
    team's, across its environments)."""
    at = COLLECTIONS[scope]

    async def list_kind(
        request: Request,
        user: UserInfo = User,
        where: Place = Depends(at),
        q: ListQuery = Depends(),
        last_event_id: str | None = Header(default=None),
    ) -> Response:
        if where.team:
            await _require_team(request, user, where.team)
        return await _collection(
            request,
            user,
            info,
            where.team or None,
            where.env or None,
            q.labelSelector,
            q.limit,
            q.continue_,
            q.watch,
            q.resourceVersion,
            last_event_id,
        )

    across = " across the team's environments" if scope is not info.scope else ""
    router.add_api_route(
        f"{PREFIXES[scope]}/{info.plural}",
        list_kind,
        methods=["GET"],
        name=f"list_{info.kind}" + ("_in_team" if across else ""),
        summary=f"List {info.plural}{across} (watch=true streams Server-Sent Events)",
        tags=[info.kind],
        responses=openapi.responses(200, "List", stream="text/event-stream"),
    )


def _kind_routes(info: KindInfo) -> None:
    """Register create, get, replace, status and delete of ``info`` at its own path."""
    at = COLLECTIONS[info.scope]
    this = _the_team if info.kind == "Team" else OBJECTS[info.scope]

    async def create(
        request: Request,
        user: UserInfo = User,
        where: Place = Depends(at),
        q: WriteQuery = Depends(),
    ) -> Response:
        doc = await _body(request)
        _place(doc, info, where.team, where.env)
        return _outcome(await service(request).create(user, doc, dry_run=q.dryRun), 201)

    async def get(
        request: Request, user: UserInfo = User, it: Place = Depends(this), reveal: bool = False
    ) -> Response:
        key = Key(info.kind, it.team, it.env, it.name)
        return JSONResponse(await service(request).get(user, key, reveal=reveal))

    async def replace(
        request: Request,
        user: UserInfo = User,
        it: Place = Depends(this),
        q: WriteQuery = Depends(),
    ) -> Response:
        doc = await _body(request)
        _place(doc, info, it.team, it.env, it.name)
        return _outcome(await service(request).update(user, doc, dry_run=q.dryRun))

    async def replace_status(
        request: Request, user: UserInfo = User, it: Place = Depends(this)
    ) -> Response:
        key = Key(info.kind, it.team, it.env, it.name)
        body = await _body(request)
        status = body.get("status", body)
        if not isinstance(status, dict):
            raise InvalidInput("must be an object", field="status")
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InvalidInput("must be an object", field="metadata")
        version = meta.get("resourceVersion")
        return JSONResponse(await service(request).update_status(user, key, status, version))

    async def remove(
        request: Request,
        user: UserInfo = User,
        it: Place = Depends(this),
        q: WriteQuery = Depends(),
    ) -> Response:
        key = Key(info.kind, it.team, it.env, it.name)
        outcome = await service(request).delete(
            user, key, dry_run=q.dryRun, expected_version=q.resourceVersion
        )
        return _outcome(outcome)

    collection = f"{PREFIXES[info.scope]}/{info.plural}"
    item = "/teams/{team}" if info.kind == "Team" else f"{collection}/{{name}}"
    body = openapi.write_body(info.kind)
    for path, handler, method, status, model, extra, summary in (
        (collection, create, "POST", 201, "Outcome", body, f"Create a {info.kind}"),
        (item, get, "GET", 200, "Object", None, f"Read a {info.kind}"),
        (item, replace, "PUT", 200, "Outcome", body, f"Replace a {info.kind}"),
        (
            f"{item}/status",
            replace_status,
            "PUT",
            200,
            "Object",
            openapi.json_body(openapi.ref("StatusWrite")),
            f"Replace a {info.kind}'s status",
        ),
        (item, remove, "DELETE", 200, "Outcome", None, f"Delete a {info.kind}"),
    ):
        router.add_api_route(
            path,
            handler,
            methods=[method],
            status_code=status,
            name=f"{handler.__name__}_{info.kind}",
            summary=summary,
            tags=[info.kind],
            responses=openapi.responses(status, model),
            openapi_extra=extra,
        )


def _misplaced_routes(scope: Scope) -> None:
    """Answer a path that names a kind by an alias, an unknown word or at another scope.

    Every kind has routes at its own path (above, registered first); a request that reaches
    these made a mistake, and is told which path is right.
    """
    prefix = PREFIXES[scope]

    async def answer_misplaced(request: Request, plural: str, user: UserInfo = User) -> Response:
        _info(plural, scope)  # raises, naming the plural or the path the kind lives at
        raise NotFound(f"no route for {request.method} {request.url.path}")

    collection = f"{prefix}/{{plural}}"
    item = f"{collection}/{{name}}"
    for path, methods in (
        (collection, ["GET", "POST"]),
        (item, ["GET", "PUT", "DELETE"]),
        (f"{item}/status", ["PUT"]),
    ):
        misplaced_router.add_api_route(
            path,
            answer_misplaced,
            methods=methods,
            name=f"misplaced_{scope.value}",
            include_in_schema=False,
        )


for _info_of_kind in KINDS:
    _list_route(_info_of_kind, _info_of_kind.scope)
    if _info_of_kind.scope is Scope.ENVIRONMENT:
        _list_route(_info_of_kind, Scope.TEAM)
    _kind_routes(_info_of_kind)
for _scope in Scope:
    _misplaced_routes(_scope)

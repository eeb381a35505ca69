"""GraphQL at ``/graphql``: queries and mutations over the same service layer as REST.

Resources travel as JSON (the same documents REST returns). Errors carry
``extensions.code`` (``NOT_FOUND``, ``FORBIDDEN``, ``CONFLICT``, ``INVALID``...) and
``extensions.status`` (the HTTP status REST would have answered).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import strawberry
from fastapi import Request
from graphql import GraphQLError
from strawberry.fastapi import GraphQLRouter
from strawberry.scalars import JSON
from strawberry.types import Info

from kled.admission.request import UserInfo
from kled.api.service import Outcome, Service
from kled.errors import KledError, Unauthorized
from kled.resources.registry import Scope, resolve_kind
from kled.store.objects import Key

T = TypeVar("T")


async def _context(request: Request) -> dict[str, Any]:
    svc: Service = request.app.state.service
    header = request.headers.get("authorization") or ""
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    return {"service": svc, "user": await svc.authenticate(token)}


async def _call(info: Info, fn: Callable[[Service, UserInfo], Awaitable[T]]) -> T:
    svc: Service = info.context["service"]
    user: UserInfo | None = info.context["user"]
    try:
        if user is None:
            raise Unauthorized("missing, unknown, expired or revoked token")
        return await fn(svc, user)
    except KledError as e:
        code = e.reason.upper() if e.reason != "NotFound" else "NOT_FOUND"
        raise GraphQLError(
            str(e), extensions={"code": code, "status": e.status, "field": e.field}
        ) from e


def _key(kind: str, team: str | None, environment: str | None, name: str) -> Key:
    info = resolve_kind(kind)
    return Key(
        info.kind,
        "" if info.scope is Scope.SERVER else (team or ""),
        environment or "" if info.scope is Scope.ENVIRONMENT else "",
        name,
    )


def _as_dict(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise GraphQLError("document must be a JSON object", extensions={"code": "INVALID"})
    return document


@strawberry.type
class WriteResult:
    result: str
    object: JSON
    warnings: list[str]
    token: str | None = None

    @classmethod
    def of(cls, outcome: Outcome) -> WriteResult:
        return cls(
            result=outcome.result,
            object=JSON(outcome.object),
            warnings=outcome.warnings,
            token=outcome.token,
        )


@strawberry.type
class ResourceList:
    items: list[JSON]
    continue_token: str | None
    resource_version: str


@strawberry.type
class Identity:
    username: str
    team: str | None
    role: str | None
    server_admin: bool


@strawberry.type
class Query:
    @strawberry.field(description="Who the token belongs to.")
    async def whoami(self, info: Info) -> Identity:
        async def run(_svc: Service, user: UserInfo) -> Identity:
            return Identity(
                username=user.username,
                team=user.team,
                role=user.role,
                server_admin=user.server_admin,
            )

        return await _call(info, run)

    @strawberry.field(description='One resource, e.g. kind: "App", team, environment, name.')
    async def resource(
        self,
        info: Info,
        kind: str,
        name: str,
        team: str | None = None,
        environment: str | None = None,
        reveal: bool = False,
    ) -> JSON:
        async def run(svc: Service, user: UserInfo) -> Any:
            return await svc.get(user, _key(kind, team, environment, name), reveal=reveal)

        return await _call(info, run)

    @strawberry.field(description="Resources of a kind, filtered by team, environment, labels.")
    async def resources(
        self,
        info: Info,
        kind: str,
        team: str | None = None,
        environment: str | None = None,
        label_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> ResourceList:
        async def run(svc: Service, user: UserInfo) -> ResourceList:
            from kled.resources.selectors import parse_selector

            kind_info = resolve_kind(kind)
            matches = parse_selector(label_selector).matches if label_selector else None
            page = await svc.list(
                user,
                kind_info,
                team,
                environment,
                matches=matches,
                limit=limit,
                continue_token=continue_token,
            )
            return ResourceList(
                items=[JSON(item) for item in page.items],
                continue_token=page.continue_token,
                resource_version=str(page.revision),
            )

        return await _call(info, run)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create or update one resource document.")
    async def apply(self, info: Info, document: JSON, dry_run: bool = False) -> WriteResult:
        async def run(svc: Service, user: UserInfo) -> WriteResult:
            return WriteResult.of(await svc.apply(user, _as_dict(document), dry_run=dry_run))

        return await _call(info, run)

    @strawberry.mutation(description="Delete one resource.")
    async def delete(
        self,
        info: Info,
        kind: str,
        name: str,
        team: str | None = None,
        environment: str | None = None,
        dry_run: bool = False,
    ) -> WriteResult:
        async def run(svc: Service, user: UserInfo) -> WriteResult:
            key = _key(kind, team, environment, name)
            return WriteResult.of(await svc.delete(user, key, dry_run=dry_run))

        return await _call(info, run)

    @strawberry.mutation(description="Clone an environment with its apps, configs and secrets.")
    async def clone_environment(
        self, info: Info, team: str, source: str, target: str
    ) -> WriteResult:
        async def run(svc: Service, user: UserInfo) -> WriteResult:
            return WriteResult.of(await svc.clone_environment(user, team, source, target))

        return await _call(info, run)


schema = strawberry.Schema(query=Query, mutation=Mutation)


def graphql_router() -> GraphQLRouter[Any, Any]:
    return GraphQLRouter(schema, context_getter=_context)

"""GraphQL at ``/graphql``: queries and mutations over the same service layer as REST.

Resources travel as JSON (the same documents REST returns). Errors carry
``extensions.code`` (``NOT_FOUND``, ``FORBIDDEN``, ``CONFLICT``, ``INVALID``...) and
``extensions.status`` (the HTTP status REST would have answered).

A query is bounded before it runs, so that one request cannot hold the server: at most
``MAX_DEPTH`` levels, ``MAX_ALIASES`` aliases, ``MAX_TOKENS`` tokens and a cost of
``MAX_COST`` (each top-level field — one call of the service — costs ``ROOT_FIELD_COST``,
any other field 1). Kled's own errors (a denial, a missing resource) are answers, not
faults of the server: they are not logged as errors; ``authz`` logs a denial once, at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import strawberry
from cross_web import HTTPException as BadGraphQLRequest
from fastapi import Request
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext, Info

from kled.admission.request import UserInfo
from kled.api.service import Outcome, Service
from kled.errors import InvalidInput, KledError, Unauthorized
from kled.resources import bounds
from kled.resources.registry import Scope, resolve_kind
from kled.store.objects import Key

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 5000
MAX_COST = 100
ROOT_FIELD_COST = 10


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
            str(e),
            original_error=e,
            extensions={"code": code, "status": e.status, "field": e.field},
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
    # A KledError, so that _call answers it as every refusal (and it is not logged as a fault).
    if not isinstance(document, dict):
        raise InvalidInput("must be a JSON object", field="document")
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


class CostLimit(ValidationRule):
    """Refuse an operation whose fields, fragments expanded, cost more than ``MAX_COST``."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        document = context.document
        fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        for operation in document.definitions:
            if not isinstance(operation, OperationDefinitionNode):
                continue
            cost = _cost(operation.selection_set, fragments, root=True, seen=set())
            if cost > MAX_COST:
                name = operation.name.value if operation.name else "anonymous"
                self.report_error(
                    GraphQLError(
                        f"operation {name!r} costs {cost}, over the limit of {MAX_COST} "
                        f"(a top-level field costs {ROOT_FIELD_COST}, any other 1): "
                        "split it into smaller requests",
                        operation,
                        extensions={"code": "TOO_COMPLEX", "status": 400},
                    )
                )


def _cost(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    *,
    root: bool,
    seen: set[str],
) -> int:
    if selections is None:
        return 0
    total = 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            if node.name.value.startswith("__"):
                continue  # introspection reads the schema, not the store (graphql bounds it)
            total += ROOT_FIELD_COST if root else 1
            total += _cost(node.selection_set, fragments, root=False, seen=seen)
        elif isinstance(node, InlineFragmentNode):
            total += _cost(node.selection_set, fragments, root=root, seen=seen)
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None and node.name.value not in seen:
                # A cycle is reported by graphql's own rule; count each spread once here.
                seen.add(node.name.value)
                total += _cost(fragment.selection_set, fragments, root=root, seen=seen)
                seen.discard(node.name.value)
    return total


def _kled_error(error: GraphQLError) -> KledError | None:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, KledError):
            return cause
        cause = getattr(cause, "original_error", None) or cause.__cause__
    return None


class KledSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log faults of the server as errors; answers (denials, limits, bad input) are not."""
        faults = []
        for error in errors:
            if _kled_error(error) is not None:
                continue  # a denial is logged by authz; a NotFound or Invalid is an answer
            if error.original_error is None:
                log.info("graphql request refused: %s", error.message)
                continue
            faults.append(error)
        super().process_errors(faults, execution_context)


schema = KledSchema(
    query=Query,
    mutation=Mutation,
    extensions=[
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
        partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
        partial(AddValidationRules, [CostLimit]),
    ],
)


class _Router(GraphQLRouter[Any, Any]):
    """Strawberry's router, refusing with 400 JSON it cannot use rather than failing on it."""

    def parse_json(self, data: str | bytes) -> Any:
        # Strawberry answers 500 to a body that is JSON but not an object, is not UTF-8, or
        # nests past the recursion limit; a request, its variables and extensions are
        # objects, bounded as every other body of the API.
        try:
            value = bounds.loads(data)
        except InvalidInput as e:
            raise BadGraphQLRequest(400, str(e)) from None
        if not isinstance(value, dict):
            raise BadGraphQLRequest(400, "a GraphQL request (and its variables) is a JSON object")
        return value


def graphql_router() -> GraphQLRouter[Any, Any]:
    return _Router(schema, context_getter=_context)

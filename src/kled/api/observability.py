"""Health, readiness and Prometheus metrics of the API process.

``/metrics`` needs a token, as every other read does. The server administrator and a
*metrics token* (``purpose="metrics"``, server-wide, made by ``kled token create NAME
--metrics``; it opens ``/metrics`` and nothing else) see every series. A team user's token
sees only the series labelled with its own team — the ``policy="team/name"`` series of
kPolicy, and any ``team`` label — and none of the server-wide ones, so that no team learns
another's policy names or the server's traffic. The apps' and nodes' usage series
(``kled_app_*``, ``kled_node_*``, from ``api/usage.py``) follow the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    Metric,
    generate_latest,
)

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.openapi import json_body
from kled.api.rest import User, _body, service
from kled.api.service import parse_duration
from kled.api.usage import UsageSeries, book_of, service_index
from kled.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from kled.resources.meta import is_dns_label
from kled.store.credentials import Credential

router = APIRouter()
METRICS_PURPOSE = "metrics"
METRICS_USER = "metrics"

REQUESTS = Counter(
    "kled_api_requests_total",
    "API requests by method, route and status",
    ["method", "route", "code"],
)
AGENT_MESSAGES = Counter(
    "kled_agent_messages_total",
    "Messages from agents the control plane has handled, by kind",
    ["kind"],
)
LATENCY = Histogram(
    "kled_api_request_duration_seconds",
    "API request latency by method and route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@router.get("/healthz", summary="The process is up", tags=["Health"])
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="The store answers (and which stored documents were skipped as unreadable)",
    tags=["Health"],
    responses={
        503: {
            "description": "the database does not answer",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def readyz(request: Request) -> Response:
    try:
        revision = await request.app.state.service.store.revision()
    except Exception as e:  # any failure to reach the database means not ready
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503)
    body: dict[str, Any] = {"status": "ready", "revision": revision}
    problems = request.app.state.service.store.problems
    if problems:
        # skipped, not fatal: the server serves everything else (kled server doctor)
        body["unreadable"] = [{"resource": k, "problem": v} for k, v in sorted(problems.items())]
    return JSONResponse(body)


@router.get(
    "/metrics",
    summary="Prometheus metrics: all with an administrator or metrics token, a team's with its",
    tags=["Health"],
    responses={200: {"description": "Prometheus text", "content": {"text/plain": {"schema": {}}}}},
)
async def metrics(request: Request, authorization: str | None = Header(default=None)) -> Response:
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    team = await _metrics_scope(request, token)
    own: Any = REGISTRY if team is None else TeamSeries(team)
    series = UsageSeries(book_of(request), team, await service_index(request, team))
    registry = Scrape([own, series])
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _metrics_scope(request: Request, token: str | None) -> str | None:
    """None for every series; a team's name for only that team's; else Unauthorized."""
    svc = service(request)
    if token:
        cred = await svc.credentials.lookup(token)
        if cred is not None and cred.purpose == METRICS_PURPOSE and cred.usable():
            return None
    user = await svc.authenticate(token)
    if user is None:
        raise Unauthorized(
            "missing, unknown, expired or revoked token: /metrics needs the server "
            "administrator's, a metrics token (kled token create NAME --metrics) or a team's"
        )
    return None if user.server_admin else user.team


def team_of(labels: dict[str, str]) -> str | None:
    """The team a series belongs to: its ``team`` label, or the team of ``policy=team/name``."""
    if labels.get("team"):
        return labels["team"]
    policy = labels.get("policy") or ""
    return policy.split("/", 1)[0] if "/" in policy else None


class Scrape:
    """Several collectors served as one scrape."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


class TeamSeries:
    """The default registry as one team sees it: its own series, nothing server-wide."""

    def __init__(self, team: str) -> None:
        self.team = team

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            samples = [s for s in family.samples if team_of(s.labels) == self.team]
            if samples:
                mine = Metric(family.name, family.documentation, family.type, family.unit)
                mine.samples = samples
                yield mine


# ---- metrics tokens --------------------------------------------------------------------

_TIME = {"type": ["string", "null"], "description": "RFC 3339, UTC"}
_TOKEN_BODY = json_body(
    {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "description": "a DNS label"},
            "ttl": {"type": "string", "description": "lifetime: 30m, 24h, 7d (default: none)"},
        },
    }
)
_CREATED = {
    "type": "object",
    "required": ["name", "token"],
    "properties": {"name": {"type": "string"}, "token": {"type": "string"}, "expiresAt": _TIME},
}
_LISTED = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "expiresAt": _TIME,
                    "revoked": {"type": "boolean"},
                    "createdAt": _TIME,
                },
            },
        }
    },
}
_REVOKED = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "revoked": {"type": "boolean"}},
}


def _answer(code: int, schema: dict[str, Any], why: str) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": why, "content": {"application/json": {"schema": schema}}}}


def _admin_only(user: UserInfo, verb: str) -> None:
    if not user.server_admin:
        authz.deny(user, verb, "metrics-tokens")
        raise Forbidden(f"only the server administrator may {verb} metrics tokens")


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


@router.post(
    "/api/v1/metrics-tokens",
    status_code=201,
    openapi_extra=_TOKEN_BODY,
    responses=_answer(201, _CREATED, "the new metrics token, its secret shown this once"),
)
async def create_metrics_token(request: Request, user: UserInfo = User) -> Response:
    """A server-wide token that reads ``/metrics`` and nothing else; its secret, once."""
    _admin_only(user, "create")
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str) or not is_dns_label(name):
        raise InvalidInput("must be a DNS label (lowercase letters, digits and '-')", field="name")
    ttl = body.get("ttl")
    expires = datetime.now(UTC) + parse_duration(str(ttl), "ttl") if ttl else None
    secret = await service(request).credentials.issue(
        purpose=METRICS_PURPOSE, team="", name=name, username=METRICS_USER, expires_at=expires
    )
    answer = {"name": name, "token": secret, "expiresAt": _timestamp(expires)}
    return JSONResponse(answer, status_code=201)


@router.get("/api/v1/metrics-tokens", responses=_answer(200, _LISTED, "every metrics token"))
async def list_metrics_tokens(request: Request, user: UserInfo = User) -> Response:
    """The metrics tokens, revoked and expired ones included (never their secrets)."""
    _admin_only(user, "list")
    creds = await service(request).credentials.listed(METRICS_PURPOSE, "")
    return JSONResponse({"items": [_shown(c) for c in creds]})


def _shown(cred: Credential) -> dict[str, Any]:
    return {
        "name": cred.name,
        "expiresAt": _timestamp(cred.expires),
        "revoked": cred.revoked,
        "createdAt": _timestamp(cred.created_at),
    }


@router.delete(
    "/api/v1/metrics-tokens/{name}", responses=_answer(200, _REVOKED, "the token, revoked")
)
async def revoke_metrics_token(request: Request, name: str, user: UserInfo = User) -> Response:
    """Revoke a metrics token: it stops working at once; its record stays, marked revoked."""
    _admin_only(user, "revoke")
    try:
        await service(request).credentials.revoke(METRICS_PURPOSE, "", name)
    except NotFound:
        raise NotFound(f"metrics token {name!r} not found") from None
    return JSONResponse({"name": name, "revoked": True})

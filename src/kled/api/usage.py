"""What apps, managed services and nodes use, for ``kled top`` and for ``/metrics``.

The numbers are the agents' latest samples, kept in memory by ``control/usage.py``'s
``UsageBook`` (the ``HostServices`` feeds it heartbeats). A team's usage is seen by those
who may list its apps; a node's by any signed-in user, as nodes themselves are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Metric

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.rest import User
from kled.control.managed import server_app_name
from kled.control.usage import FAMILIES, ServiceIndex, UsageBook
from kled.resources.registry import kind_info

router = APIRouter(prefix="/api/v1")

_NUMBER = {"type": ["integer", "null"]}
_INTEGER = {"type": "integer"}
_APP_ROW = {
    "type": "object",
    "properties": {
        "team": {"type": "string"},
        "environment": {"type": "string"},
        "app": {"type": "string"},
        "replicas": {"type": "integer"},
        "ready": {"type": "integer"},
        "restarts": {"type": "integer"},
        "cpuMillicores": _NUMBER,
        "cpuSeconds": {"type": ["number", "null"]},
        "memoryBytes": _NUMBER,
        "rxBytes": _NUMBER,
        "txBytes": _NUMBER,
        "nodes": {"type": "array", "items": {"type": "string"}},
    },
}
_SERVICE_ROW = {
    "type": "object",
    "properties": {
        "team": {"type": "string"},
        "environment": {"type": "string"},
        "service": {"type": "string"},
        "template": {"type": "string"},
        "phase": {"type": "string"},
        "ready": {"type": "integer"},
        "restarts": {"type": "integer"},
        "cpuMillicores": _NUMBER,
        "cpuSeconds": {"type": ["number", "null"]},
        "memoryBytes": _NUMBER,
        "nodes": {"type": "array", "items": {"type": "string"}},
    },
}
_NODE_ROW = {
    "type": "object",
    "properties": {
        "node": {"type": "string"},
        "cpuMillicores": _NUMBER,
        "cpuPercent": _NUMBER,
        "memoryBytes": _NUMBER,
        "memoryPercent": _NUMBER,
        "replicas": {"type": "integer"},
        "capacity": {
            "type": "object",
            "properties": {"cpuMillicores": _INTEGER, "memoryBytes": _INTEGER},
        },
    },
}


def _items(row: dict[str, Any], why: str) -> dict[int | str, dict[str, Any]]:
    schema = {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": row}},
    }
    return {200: {"description": why, "content": {"application/json": {"schema": schema}}}}


async def service_index(request: Request, team: str | None) -> ServiceIndex:
    """The managed services (of ``team``, or all) by their server app, from the store."""
    store = request.app.state.service.store
    index: dict[tuple[str, str, str], dict[str, Any]] = {}
    for doc in (await store.list("ManagedService", team)).items:
        m, status = doc["metadata"], doc.get("status") or {}
        key = (str(m["team"]), str(m.get("environment") or ""), server_app_name(m["name"]))
        index[key] = {"service": m["name"], "template": (doc.get("spec") or {}).get("template"),
                      "phase": status.get("phase") or ""}  # fmt: skip
    return index


def book_of(request: Request) -> UsageBook:
    """The server's usage book; an empty one on a server without agents."""
    hosts = getattr(request.app.state, "hosts", None)
    book = getattr(hosts, "usage", None)
    return book if isinstance(book, UsageBook) else UsageBook()


@router.get(
    "/teams/{team}/usage",
    summary="What a team's apps use now: CPU, memory, restarts, ready replicas (kled top apps)",
    responses=_items(_APP_ROW, "one row per app, the sum of its replicas"),
)
async def team_usage(
    request: Request, team: str, environment: str | None = None, user: UserInfo = User
) -> Response:
    authz.authorize(user, "list", kind_info("App"), team, f"team/{team}")
    services = await service_index(request, team)
    return JSONResponse({"items": book_of(request).apps(team, environment, services)})


@router.get(
    "/teams/{team}/usage/services",
    summary="What a team's managed services use now: their servers' CPU, memory, restarts, "
    "readiness (kled top services)",
    responses=_items(_SERVICE_ROW, "one row per managed service"),
)
async def team_service_usage(
    request: Request, team: str, environment: str | None = None, user: UserInfo = User
) -> Response:
    authz.authorize(user, "list", kind_info("ManagedService"), team, f"team/{team}")
    services = await service_index(request, team)
    return JSONResponse({"items": book_of(request).services(team, services, environment)})


@router.get(
    "/usage/nodes",
    summary="What each node uses now: CPU and memory of the whole host (kled top nodes)",
    responses=_items(_NODE_ROW, "one row per node that heartbeats"),
)
async def node_usage(request: Request, user: UserInfo = User) -> Response:
    authz.authorize(user, "list", kind_info("Node"), "", "nodes")
    return JSONResponse({"items": book_of(request).nodes()})


class UsageSeries:
    """The book's numbers as Prometheus families (of one team only, if given)."""

    def __init__(
        self, book: UsageBook, team: str | None = None, services: ServiceIndex | None = None
    ) -> None:
        self.book = book
        self.team = team
        self.services = services

    def collect(self) -> Iterator[Metric]:
        for name, samples in self.book.samples(self.team, self.services).items():
            if not samples:
                continue
            kind, documentation = FAMILIES[name]
            # prometheus_client names a counter family without its _total suffix
            family = Metric(name.removesuffix("_total") if kind == "counter" else name,
                            documentation, kind)  # fmt: skip
            for labels, value in samples:
                family.add_sample(name, labels, value)
            yield family

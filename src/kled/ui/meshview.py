"""The mesh page: the team's topology drawn (``topology.draw``) from what the service
layer knows (nodes, devices, apps, intercepts) and the handshakes the nodes last reported
in their heartbeats (kept in memory by the control plane, never stored)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kled.resources.registry import kind_info
from kled.ui import topology
from kled.ui.pages import render, service
from kled.ui.routes import _live, _team_page

router = APIRouter(prefix="/ui", include_in_schema=False)


def _handshakes(request: Request, team: str) -> Mapping[str, Mapping[str, datetime]]:
    usage = getattr(getattr(request.app.state, "hosts", None), "usage", None)
    return usage.handshakes(team) if usage is not None else {}


@router.get("/teams/{team}/mesh")
async def mesh_page(request: Request, team: str) -> Response:
    v = await _team_page(request, team)
    svc = service(request)
    nodes = await svc.list(v.user, kind_info("Node"), None, None)
    devices = await svc.list(v.user, kind_info("Device"), team, None)
    apps = await svc.list(v.user, kind_info("App"), team, None)
    intercepts = await svc.list(v.user, kind_info("Intercept"), team, None)
    drawing = topology.draw(
        team,
        nodes.items,
        devices.items,
        apps.items,
        intercepts.items,
        _handshakes(request, team),
        datetime.now(UTC),
    )
    revision = max(nodes.revision, devices.revision, apps.revision, intercepts.revision)
    return render(
        request,
        "mesh.html",
        v,
        team=team,
        drawing=drawing,
        live=_live(team, ("Node", "Device", "App", "Intercept"), revision),
    )

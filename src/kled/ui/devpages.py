"""Read-only pages of the dev loop: the team's workspaces (phase, node, source, how to get a
shell) and the apps that are in a ``kled dev`` session (whose, since when).

Both read what the service layer returns; a dev session is what its app's annotation
says (``control.devswap.session_of``), as ``kled dev`` and the control plane read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kled.control.devswap import session_of
from kled.ui.routes import list_page

router = APIRouter(prefix="/ui", include_in_schema=False)


def workspace_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    source = spec.get("source") or {}
    name = str((doc.get("metadata") or {}).get("name"))
    phase = str(status.get("phase") or "Pending")
    return {
        "name": name,
        "phase": phase,
        "node": status.get("node") or "—",
        "provider": spec.get("provider") or "container",
        "source": source.get("git") or source.get("path") or spec.get("image") or "—",
        "environment": spec.get("environment") or "—",
        "owner": spec.get("owner") or "—",
        "since": status.get("phaseChangedAt") or "—",
        "reason": status.get("reason") or "",
        "running": spec.get("running", True),
        "ssh": f"kled ws ssh {name}" if phase == "Running" else "",
    }


def session_rows(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for doc in apps:
        session = session_of(doc)
        if session is None:
            continue
        meta, status = doc.get("metadata") or {}, doc.get("status") or {}
        rows.append(
            {
                "app": meta.get("name"),
                "environment": meta.get("environment"),
                "user": session.user,
                "since": session.since,
                "phase": status.get("phase") or "Pending",
                "command": f"kled dev -e {meta.get('environment')}",
            }
        )
    return sorted(rows, key=lambda r: (str(r["environment"]), str(r["app"])))


@router.get("/teams/{team}/workspaces")
async def workspaces_page(request: Request, team: str) -> Response:
    def rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [workspace_row(d) for d in items]

    return await list_page(request, team, "Workspace", "workspaces.html", "workspaces", rows)


@router.get("/teams/{team}/dev")
async def dev_sessions_page(request: Request, team: str) -> Response:
    return await list_page(request, team, "App", "devsessions.html", "sessions", session_rows)

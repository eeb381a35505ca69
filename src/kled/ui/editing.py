"""Editing one resource in place, as ``kled edit`` would: its YAML in a form, sent back
through the service layer's update (admission, policies, the resourceVersion check).

A refused edit comes back with the same error the CLI prints and the line of the YAML
where the field at fault is written highlighted (``yamlpath.field_line``); the text the
user wrote is kept. The edit carries the resourceVersion it was read at, so a change by
someone else in between is refused (409) rather than overwritten. Secrets are not edited
here: their values are never shown in the console.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kled.errors import Conflict, InvalidInput, KledError
from kled.resources.registry import KindInfo, Scope, resolve_kind
from kled.store.objects import Key
from kled.ui import views
from kled.ui.pages import flash, form, may, redirect, render, service
from kled.ui.routes import _team_page
from kled.ui.yamlpath import field_line

#: how many times an edit is tried again when only the status moved on under it
STATUS_RACES = 5

router = APIRouter(prefix="/ui", include_in_schema=False)


def _key(team: str, plural: str, name: str, env: str | None) -> tuple[KindInfo, Key]:
    info = resolve_kind(plural)
    if info.kind == "Secret":
        raise InvalidInput(
            "secrets are not edited in the console (their values are never shown here): "
            "use kled apply",
            field="kind",
        )
    where_team = "" if info.scope is Scope.SERVER else team
    where_env = (env or "") if info.scope is Scope.ENVIRONMENT else ""
    if info.scope is Scope.ENVIRONMENT and not where_env:
        raise InvalidInput(f"{info.plural} live in an environment: add ?env=ENV", field="env")
    return info, Key(info.kind, where_team, where_env, name)


def editable(doc: dict[str, Any]) -> str:
    """The document as the form shows it: without ``status``, the system's part."""
    return views.to_yaml({k: v for k, v in doc.items() if k != "status"})


def fingerprint(doc: dict[str, Any]) -> str:
    """What of a resource its editor wrote: all but ``status`` and the resourceVersion.

    The form carries the fingerprint of what it showed; when the stored resource still has
    it, only the system's part moved on (a replica's status, a heartbeat) and the edit
    goes ahead on the current version. Anything else changed is someone's edit: 409.
    """
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k != "resourceVersion"}
    mine = {**{k: v for k, v in doc.items() if k != "status"}, "metadata": meta}
    text = json.dumps(mine, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _back(team: str, info: KindInfo, name: str, env: str | None) -> str:
    if info.kind == "App" and env:
        return f"/ui/teams/{team}/envs/{env}/apps/{name}"
    query = f"?env={env}" if env and info.scope is Scope.ENVIRONMENT else ""
    return f"/ui/teams/{team}/yaml/{info.plural}/{name}{query}"


@router.get("/teams/{team}/edit/{plural}/{name}")
async def edit_page(
    request: Request, team: str, plural: str, name: str, env: str | None = None
) -> Response:
    v = await _team_page(request, team)
    info, key = _key(team, plural, name, env)
    doc = await service(request).get(v.user, key)
    return render(
        request,
        "edit.html",
        v,
        team=team,
        info=info,
        name=name,
        env=env,
        text=editable(doc),
        base=fingerprint(doc),
        error=None,
        line=None,
        can_write=may(v.user, "update", info.kind, key.team),
        back=_back(team, info, name, env),
    )


@router.post("/teams/{team}/edit/{plural}/{name}")
async def edit(
    request: Request, team: str, plural: str, name: str, env: str | None = None
) -> Response:
    v = await _team_page(request, team)
    fields = await form(request, v)
    info, key = _key(team, plural, name, env)
    text = fields.get("yaml", "")
    try:
        docs = views.parse_documents(text)
        if len(docs) != 1:
            raise InvalidInput("edit one resource: remove the other documents", field="yaml")
        doc = docs[0]
        meta = doc.get("metadata")
        if doc.get("kind") != info.kind:
            raise InvalidInput(f"must stay {info.kind}", field="kind")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise InvalidInput(
                f"must stay {name} (a new name is a new resource: use Apply YAML)",
                field="metadata.name",
            )
        meta.setdefault("team", key.team or None)
        if key.environment:
            meta.setdefault("environment", key.environment)
        if (meta.get("team") or "") != key.team or (meta.get("environment") or "") != (
            key.environment
        ):
            raise InvalidInput(
                "a resource cannot move between teams or environments", field="metadata"
            )
        if not meta.get("resourceVersion"):
            raise InvalidInput(
                "keep the resourceVersion the form came with (it guards against "
                "overwriting someone else's change)",
                field="metadata.resourceVersion",
            )
        svc = service(request)
        for attempt in range(STATUS_RACES):
            current = await svc.get(v.user, key)
            moved = fields.get("base") == fingerprint(current)  # only the status moved on
            if moved:
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                outcome = await svc.update(v.user, doc)
                break
            except Conflict:
                # a controller wrote the status between the read and the write: read again
                # (a change of what the user edits is still refused, by the fingerprint)
                if not moved or attempt == STATUS_RACES - 1:
                    raise
    except KledError as error:
        return render(
            request,
            "edit.html",
            v,
            status=error.status,
            team=team,
            info=info,
            name=name,
            env=env,
            text=text,
            base=fields.get("base", ""),
            error=error,
            line=field_line(text, error.field),
            lines=text.splitlines(),
            can_write=True,
            back=_back(team, info, name, env),
        )
    warnings = "".join(f"; warning: {w}" for w in outcome.warnings)
    flash(v, f"{info.singular}/{name} {outcome.result}{warnings}")
    return redirect(_back(team, info, name, env))

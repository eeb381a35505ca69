"""The console's pages and actions at ``/ui``: thin translations onto the service layer.

Reading pages are plain ``GET``s with stable URLs (they work without JavaScript); every
action is a ``POST`` of a form carrying the session's CSRF token, answered with a redirect
back to the page it came from (Post/Redirect/Get, so the back button works). Whether an
action is allowed is decided by the service layer, as for the REST API: the templates only
leave out buttons a role could not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.rest import User
from kled.control.desired import RESTARTED_AT
from kled.errors import Conflict, Gone, InvalidInput, KledError, NotFound
from kled.resources.registry import Scope, kind_info, resolve_kind
from kled.store.objects import Event, Key
from kled.ui import views
from kled.ui.pages import (
    COOKIE,
    SIGNIN_COOKIE,
    Viewer,
    flash,
    form,
    may,
    redirect,
    render,
    safe_next,
    service,
    sessions,
    viewer,
)
from kled.ui.yamlpath import field_line

router = APIRouter(prefix="/ui", include_in_schema=False)
WRITE_TRIES = 20
#: the kinds a page follows live, by page
LIVE_KINDS = ("App", "Node", "Environment", "Device", "Intercept", "Policy", "Workspace")


def _cookie(response: Response, request: Request, name: str, value: str, path: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=path,
    )


# ---- signing in and out ------------------------------------------------------------------


@router.get("/signin")
async def signin_page(request: Request, next: str | None = None) -> Response:
    import secrets

    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "signin.html", None, csrf=token, next=safe_next(next), error=None)
    _cookie(response, request, SIGNIN_COOKIE, token, "/ui/signin")
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE) or ""
    fields = await form(request, None, expected=expected)
    target = safe_next(fields.get("next"))
    token = fields.get("token", "").strip()
    user = await service(request).authenticate(token) if token else None
    if user is None:
        return render(
            request,
            "signin.html",
            None,
            status=401,
            csrf=expected,
            next=target,
            error="token: unknown, expired or revoked (kled token create makes one)",
        )
    return _signed_in(request, token, target)


def _signed_in(request: Request, token: str, target: str) -> Response:
    session = sessions(request).open(token)
    response = redirect(target)
    _cookie(response, request, COOKIE, session.id, "/ui")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    v = await viewer(request)
    await form(request, v)
    sessions(request).close(v.session.id)
    response = redirect("/ui/signin")
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.post("/links")
async def make_link(request: Request, user: UserInfo = User) -> Response:
    """A one-time sign-in link for the bearer token's user (``kled ui``)."""
    auth = request.headers.get("authorization", "")
    code = sessions(request).link(auth[7:].strip())
    return JSONResponse({"path": f"/ui/link/{code}", "expiresInSeconds": 60})


@router.get("/link/{code}")
async def use_link(request: Request, code: str) -> Response:
    token = sessions(request).spend(code)
    if token is None or await service(request).authenticate(token) is None:
        return render(
            request,
            "signin.html",
            None,
            status=401,
            csrf="",
            next="/ui",
            error="this sign-in link is spent or expired: run kled ui again",
            no_form=True,
        )
    return _signed_in(request, token, "/ui")


# ---- reading -----------------------------------------------------------------------------


@router.get("")
async def home(request: Request) -> Response:
    v = await viewer(request)
    if v.user.team:
        return redirect(f"/ui/teams/{v.user.team}")
    return redirect("/ui/teams")


@router.get("/teams")
async def teams(request: Request) -> Response:
    v = await viewer(request)
    page = await service(request).list(v.user, kind_info("Team"), None, None)
    return render(request, "teams.html", v, teams=page.items, team=None)


async def _team_page(request: Request, team: str) -> Viewer:
    v = await viewer(request)
    authz.check_team(v.user, team, f"team {team}")
    if await service(request).store.find(Key("Team", "", "", team)) is None:
        raise NotFound(f"team {team} not found")
    return v


def _live(team: str, kinds: tuple[str, ...], revision: int, env: str | None = None) -> str:
    query = f"kinds={','.join(kinds)}&since={revision}" + (f"&env={env}" if env else "")
    return f"/ui/teams/{team}/watch?{query}"


async def list_page(
    request: Request,
    team: str,
    kind: str,
    template: str,
    name: str,
    rows: Callable[[list[dict[str, Any]]], Any] = list,
    extra: Callable[[Viewer], dict[str, Any]] = lambda v: {},
) -> Response:
    """A team page that lists one kind live: the items (shaped by ``rows``) go to the
    template as ``name``, with whatever ``extra`` adds for the viewer."""
    v = await _team_page(request, team)
    found = await service(request).list(v.user, kind_info(kind), team, None)
    values = {name: rows(found.items), **extra(v)}
    return render(
        request, template, v, team=team, live=_live(team, (kind,), found.revision), **values
    )


@router.get("/teams/{team}")
async def overview(request: Request, team: str) -> Response:
    v = await _team_page(request, team)
    svc = service(request)
    envs = await svc.list(v.user, kind_info("Environment"), team, None)
    apps = await svc.list(v.user, kind_info("App"), team, None)
    nodes = await svc.list(v.user, kind_info("Node"), None, None)
    devices = await svc.list(v.user, kind_info("Device"), team, None)
    intercepts = await svc.list(v.user, kind_info("Intercept"), team, None)
    per_env: dict[str, list[dict[str, Any]]] = {}
    for app in apps.items:
        per_env.setdefault(app["metadata"].get("environment") or "", []).append(views.app_row(app))
    revision = max(envs.revision, apps.revision, nodes.revision)
    return render(
        request,
        "overview.html",
        v,
        team=team,
        envs=envs.items,
        per_env=per_env,
        nodes=[views.node_row(n) for n in nodes.items],
        counts=views.counts(
            {
                "environments": envs.items,
                "apps": apps.items,
                "nodes": nodes.items,
                "devices": devices.items,
                "intercepts": intercepts.items,
            }
        ),
        events=views.recent_events(apps.items),
        live=_live(team, ("App", "Environment", "Node"), revision),
    )


@router.get("/teams/{team}/envs/{env}")
async def environment(request: Request, team: str, env: str) -> Response:
    v = await _team_page(request, team)
    svc = service(request)
    env_doc = await svc.get(v.user, Key("Environment", team, "", env))
    apps = await svc.list(v.user, kind_info("App"), team, env)
    configs = await svc.list(v.user, kind_info("Config"), team, env)
    secrets = await svc.list(v.user, kind_info("Secret"), team, env)
    return render(
        request,
        "environment.html",
        v,
        configs=configs.items,
        secrets=secrets.items,
        team=team,
        env=env,
        env_doc=env_doc,
        apps=[views.app_row(a) for a in apps.items],
        can_write=may(v.user, "update", "App", team),
        live=_live(team, ("App",), apps.revision, env),
    )


@router.get("/teams/{team}/envs/{env}/apps/{name}")
async def app_page(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    svc = service(request)
    doc = await svc.get(v.user, Key("App", team, env, name))
    devices = await svc.list(v.user, kind_info("Device"), team, None)
    intercepts = await svc.list(v.user, kind_info("Intercept"), team, env)
    mine = [i for i in intercepts.items if (i.get("spec") or {}).get("app") == name]
    return render(
        request,
        "app.html",
        v,
        team=team,
        env=env,
        app=views.app_row(doc),
        dev=views.dev_session(doc),
        devices=[d["metadata"]["name"] for d in devices.items],
        intercepts=mine,
        can_write=may(v.user, "update", "App", team),
        can_intercept=may(v.user, "create", "Intercept", team),
        live=_live(team, ("App", "Intercept"), int(doc["metadata"]["resourceVersion"]), env),
    )


@router.get("/teams/{team}/envs/{env}/secrets/{name}")
async def secret_page(
    request: Request, team: str, env: str, name: str, reveal: bool = False
) -> Response:
    """A secret's keys; its values only when asked, and only for an owner or admin (the
    service's ``reveal`` check: a member asking gets 403, as from the API)."""
    v = await _team_page(request, team)
    doc = await service(request).get(v.user, Key("Secret", team, env, name), reveal=reveal)
    return render(
        request,
        "secret.html",
        v,
        team=team,
        env=env,
        name=name,
        data=views.secret_entries(doc, reveal),
        revealed=reveal,
        can_reveal=may(v.user, "reveal", "Secret", team),
    )


@router.get("/teams/{team}/nodes")
async def nodes_page(request: Request, team: str) -> Response:
    v = await _team_page(request, team)
    nodes = await service(request).list(v.user, kind_info("Node"), None, None)
    return render(
        request,
        "nodes.html",
        v,
        team=team,
        nodes=[views.node_row(n) for n in nodes.items],
        can_manage=may(v.user, "update", "Node", ""),
        live=_live(team, ("Node",), nodes.revision),
    )


@router.post("/teams/{team}/nodes/{name}/{verb}")
async def node_action(request: Request, team: str, name: str, verb: str) -> Response:
    """Drain (no new replicas, the present ones move) or uncordon a node, as
    ``kled node drain|uncordon`` do: the server administrator's."""
    v = await _team_page(request, team)
    await form(request, v)
    if verb not in ("drain", "uncordon"):
        raise NotFound(f"no action {verb} on nodes")

    def mark(doc: dict[str, Any]) -> None:
        doc["spec"] = {**(doc.get("spec") or {}), "unschedulable": verb == "drain"}

    await _change(v, request, Key("Node", "", "", name), mark)
    flash(v, f"node/{name} {'drained' if verb == 'drain' else 'uncordoned'}")
    return redirect(f"/ui/teams/{team}/nodes")


@router.get("/teams/{team}/devices")
async def devices_page(request: Request, team: str) -> Response:
    return await list_page(
        request, team, "Device", "devices.html", "devices",
        extra=lambda v: {"can_revoke": may(v.user, "delete", "Device", team)},
    )  # fmt: skip


@router.get("/teams/{team}/intercepts")
async def intercepts_page(request: Request, team: str) -> Response:
    return await list_page(
        request, team, "Intercept", "intercepts.html", "intercepts",
        extra=lambda v: {"can_stop": may(v.user, "delete", "Intercept", team)},
    )  # fmt: skip


@router.get("/teams/{team}/policies")
async def policies_page(request: Request, team: str) -> Response:
    v = await _team_page(request, team)
    found = await service(request).list(v.user, kind_info("Policy"), team, None)
    sink = getattr(request.app.state, "violations", None)
    violations = await sink.log.list(team, None, 100) if sink is not None else []
    envs = await service(request).list(v.user, kind_info("Environment"), team, None)
    return render(
        request,
        "policies.html",
        v,
        team=team,
        envs=[e["metadata"]["name"] for e in envs.items],
        policies=found.items,
        violations=violations,
        live=_live(team, ("Policy",), found.revision),
    )


@router.get("/teams/{team}/yaml/{plural}/{name}")
async def yaml_view(
    request: Request, team: str, plural: str, name: str, env: str | None = None
) -> Response:
    """Any resource as ``kled get -o yaml`` prints it (secrets without their values)."""
    v = await _team_page(request, team)
    info = resolve_kind(plural)
    where_team = "" if info.scope is Scope.SERVER else team
    where_env = (env or "") if info.scope is Scope.ENVIRONMENT else ""
    if info.scope is Scope.ENVIRONMENT and not where_env:
        raise InvalidInput(f"{info.plural} live in an environment: add ?env=ENV", field="env")
    doc = await service(request).get(v.user, Key(info.kind, where_team, where_env, name))
    editable = info.kind != "Secret" and may(v.user, "update", info.kind, where_team)
    query = f"?env={where_env}" if where_env else ""
    return render(
        request,
        "yaml.html",
        v,
        team=team,
        title=f"{info.singular}/{name}",
        text=views.to_yaml(doc),
        edit=f"/ui/teams/{team}/edit/{info.plural}/{name}{query}" if editable else None,
    )


# ---- applying YAML -------------------------------------------------------------------------


@router.get("/teams/{team}/apply")
async def apply_page(request: Request, team: str, env: str | None = None) -> Response:
    v = await _team_page(request, team)
    envs = await service(request).list(v.user, kind_info("Environment"), team, None)
    return render(
        request,
        "apply.html",
        v,
        team=team,
        envs=[e["metadata"]["name"] for e in envs.items],
        chosen=env or "",
        text="",
        results=[],
        error=None,
    )


@router.post("/teams/{team}/apply")
async def apply(request: Request, team: str) -> Response:
    v = await _team_page(request, team)
    fields = await form(request, v)
    text, env = fields.get("yaml", ""), fields.get("env") or None
    dry_run = fields.get("dryRun") == "on"
    results: list[str] = []
    error: KledError | None = None
    failing: dict[str, Any] = {}
    svc = service(request)
    try:
        docs = views.parse_documents(text)
        for doc in docs:
            failing = doc
            views.place(doc, team, env)
        for doc in docs:
            failing = doc
            outcome = await svc.apply(v.user, doc, dry_run=dry_run)
            suffix = " (dry run)" if dry_run else ""
            results.append(f"{views.ref(doc)} {outcome.result}{suffix}")
            results.extend(f"warning: {w}" for w in outcome.warnings)
    except KledError as e:
        error = e
    envs = await svc.list(v.user, kind_info("Environment"), team, None)
    return render(
        request,
        "apply.html",
        v,
        status=error.status if error is not None else 200,
        team=team,
        envs=[e["metadata"]["name"] for e in envs.items],
        chosen=env or "",
        text=text,
        results=results,
        error=error,
        dry_run=dry_run,
        line=_line_of(text, error, failing),
        lines=text.splitlines(),
    )


def _line_of(text: str, error: KledError | None, doc: dict[str, Any]) -> int | None:
    """The line of the pasted text where the refused field of ``doc`` is written."""
    if error is None or not error.field or not doc:
        return None
    name = (
        (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    )
    return field_line(text, error.field, str(doc.get("kind")), str(name))


# ---- acting on apps, devices, intercepts -----------------------------------------------------


async def _change(v: Viewer, request: Request, key: Key, change: Any) -> None:
    """Read, change, write with the version read; again when someone wrote in between
    (a node's heartbeats rewrite it every few seconds, a colleague may edit an app)."""
    svc = service(request)
    for attempt in range(WRITE_TRIES):
        doc = await svc.get(v.user, key)
        change(doc)
        version = doc["metadata"].get("resourceVersion")
        try:
            await svc.update(v.user, doc, expected_version=version)
            return
        except Conflict:
            if attempt == WRITE_TRIES - 1:
                raise


@router.post("/teams/{team}/envs/{env}/apps/{name}/scale")
async def scale(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    fields = await form(request, v)
    text = fields.get("replicas", "").strip()
    if not text.isdigit() or not 0 <= int(text) <= 1000:
        raise InvalidInput("must be a whole number from 0 to 1000", field="replicas")
    replicas = int(text)

    def set_replicas(doc: dict[str, Any]) -> None:
        doc.setdefault("spec", {})["replicas"] = replicas

    await _change(v, request, Key("App", team, env, name), set_replicas)
    flash(v, f"app/{name} scaled to {replicas}")
    return redirect(f"/ui/teams/{team}/envs/{env}/apps/{name}")


@router.post("/teams/{team}/envs/{env}/apps/{name}/restart")
async def restart(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    await form(request, v)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def mark(doc: dict[str, Any]) -> None:
        meta = doc.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), RESTARTED_AT: now}

    await _change(v, request, Key("App", team, env, name), mark)
    flash(v, f"app/{name} restarted")
    return redirect(f"/ui/teams/{team}/envs/{env}/apps/{name}")


@router.post("/teams/{team}/envs/{env}/apps/{name}/delete")
async def delete_app(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    await form(request, v)
    outcome = await service(request).delete(v.user, Key("App", team, env, name))
    flash(v, f"app/{name} {outcome.result}")
    return redirect(f"/ui/teams/{team}/envs/{env}")


@router.post("/teams/{team}/devices/{name}/revoke")
async def revoke_device(request: Request, team: str, name: str) -> Response:
    v = await _team_page(request, team)
    await form(request, v)
    await service(request).delete(v.user, Key("Device", team, "", name))
    flash(v, f"device/{name} revoked: removed from every peer of team {team}")
    return redirect(f"/ui/teams/{team}/devices")


def intercept_name(app: str, device: str, header_value: str | None) -> str:
    """``<app>-<device>[-<header value>]`` as a DNS label (the name ``kled intercept``
    gives, so the CLI and the console find each other's intercepts)."""
    parts = [app, device] + ([header_value] if header_value else [])
    slug = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-+", "-", slug)[:63].rstrip("-")


def _ports(text: str) -> list[dict[str, int]]:
    ports = []
    for item in text.replace(",", " ").split():
        svc, sep, local = item.partition(":")
        if not svc.isdigit() or (sep and not local.isdigit()):
            raise InvalidInput(f"{item!r} is not PORT or PORT:LOCAL", field="ports")
        ports.append({"port": int(svc), "localPort": int(local if sep else svc)})
    return ports


@router.post("/teams/{team}/envs/{env}/apps/{name}/intercepts")
async def start_intercept(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    fields = await form(request, v)
    device = fields.get("device", "").strip()
    if not device:
        raise InvalidInput("choose the device that receives the traffic", field="device")
    spec: dict[str, Any] = {"app": name, "device": device, "ports": _ports(fields.get("ports", ""))}
    header_name, header_value = fields.get("headerName", "").strip(), fields.get("headerValue", "")
    if header_name or header_value.strip():
        if not header_name or not header_value.strip():
            raise InvalidInput("give both a header name and a value, or neither", field="header")
        spec["header"] = {"name": header_name, "value": header_value.strip()}
    chosen = intercept_name(name, device, spec.get("header", {}).get("value"))
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "Intercept",
        "metadata": {"name": chosen, "team": team, "environment": env},
        "spec": spec,
    }
    await service(request).create(v.user, doc)
    flash(v, f"intercept/{chosen} started: app/{name} → device/{device}")
    return redirect(f"/ui/teams/{team}/envs/{env}/apps/{name}")


@router.post("/teams/{team}/envs/{env}/intercepts/{name}/stop")
async def stop_intercept(request: Request, team: str, env: str, name: str) -> Response:
    v = await _team_page(request, team)
    fields = await form(request, v)
    await service(request).delete(v.user, Key("Intercept", team, env, name))
    flash(v, f"intercept/{name} stopped")
    back = fields.get("back")
    return redirect(safe_next(back) if back else f"/ui/teams/{team}/intercepts")


# ---- live updates --------------------------------------------------------------------------


@router.get("/teams/{team}/watch")
async def watch(
    request: Request,
    team: str,
    kinds: str = "App",
    env: str | None = None,
    since: int | None = None,
    last_event_id: str | None = Header(default=None),
) -> Response:
    """Server-Sent Events naming each change (not its content) to the page's kinds.

    A page re-reads itself when told; a browser that lost the stream resumes from the
    ``Last-Event-ID`` it was given, as the REST watch does.
    """
    v = await _team_page(request, team)
    if last_event_id and last_event_id.isdigit():
        since = int(last_event_id)
    chosen = [k for k in kinds.split(",") if k]
    if not chosen or any(k not in LIVE_KINDS for k in chosen):
        raise InvalidInput(f"must name kinds among {', '.join(LIVE_KINDS)}", field="kinds")
    svc = service(request)

    async def follow(since: int | None) -> list[AsyncIterator[Event]]:
        streams = []
        for kind in chosen:
            info = kind_info(kind)
            where_team = None if info.scope is Scope.SERVER else team
            environment = env if info.scope is Scope.ENVIRONMENT else None
            streams.append(await svc.watch(v.user, info, where_team, environment, since=since))
        return streams

    try:
        streams, resync = await follow(since), False
    except Gone:
        # the events since the page was drawn were compacted: follow from now and tell the
        # page to read itself again (a browser's EventSource would give up on a 410)
        streams, resync = await follow(None), True
    return StreamingResponse(
        _changes(streams, resync),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _changes(
    streams: list[AsyncIterator[Event]], resync: bool = False
) -> AsyncIterator[bytes]:
    """A ``change`` per event; ``RESYNC`` first when the page missed compacted events.

    A stream that falls behind compaction mid-way says ``RESYNC`` and ends: the browser
    comes back with its ``Last-Event-ID``, which gets a ``RESYNC`` from now on.
    """
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[Event]) -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except Gone:
            await queue.put(None)

    resynced = json.dumps({"type": "RESYNC", "kind": "", "name": ""})
    tasks = [asyncio.create_task(pump(s)) for s in streams]
    last = 0
    try:
        yield b": watching\n\n"
        if resync:
            yield f"event: change\ndata: {resynced}\n\n".encode()
        while True:
            got = await queue.get()
            if got is None:
                yield f"event: change\ndata: {resynced}\n\n".encode()
                return
            event = got
            last = max(last, event.seq)
            data = json.dumps({"type": event.type, "kind": event.kind, "name": event.name})
            yield f"id: {last}\nevent: change\ndata: {data}\n\n".encode()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

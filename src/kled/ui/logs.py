"""An app's log lines in the console: the path ``kled logs`` takes, from the Message Office.

Two views of the same read. ``/logs`` is a page of the latest lines, for reading with
JavaScript off. ``/logs/stream`` is a stream of Server-Sent Events, one ``line`` event per
log line (``{"replica", "stream", "line", "time"}``), that the app page follows live; a
browser that lost it resumes from the time of the last line it had (its event id).

Log lines are whatever the app printed: the page renders them through Jinja2's escaping,
and ``console.js`` puts the streamed ones in as text nodes, never as HTML.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from kled.api import authz
from kled.api.service import parse_duration
from kled.bus.office import MessageOffice
from kled.errors import InvalidInput, Unavailable
from kled.resources.hoststate import LogLine
from kled.resources.registry import kind_info
from kled.store.objects import Key
from kled.ui.pages import render, service
from kled.ui.routes import _team_page

router = APIRouter(prefix="/ui", include_in_schema=False)
#: how far back a page or a new stream starts
DEFAULT_SINCE = "1h"
#: the most lines the page without JavaScript shows (the newest)
PAGE_LINES = 1000


def entry(line: LogLine) -> dict[str, Any]:
    """One log line as the API's ``/logs`` gives it."""
    index = line.replica_id.rsplit(".", 1)[-1]
    return {
        "replica": int(index) if index.isdigit() else index,
        "stream": line.stream,
        "line": line.line,
        "time": line.time.isoformat().replace("+00:00", "Z"),
    }


def _office(request: Request) -> MessageOffice:
    hosts = getattr(request.app.state, "hosts", None)
    office: MessageOffice | None = getattr(hosts, "office", None)
    if office is None:
        raise Unavailable("this server has no Message Office: no logs to read")
    return office


async def _app_lines(
    request: Request, team: str, env: str, name: str, since: str, replica: int | None
) -> tuple[str, MessageOffice, datetime]:
    """The Message Office prefix of the app's lines, after the same checks as the API's."""
    v = await _team_page(request, team)
    authz.authorize(v.user, "get", kind_info("App"), team, f"app/{team}/{env}/{name}")
    await service(request).get(v.user, Key("App", team, env, name))
    if replica is not None and replica < 0:
        raise InvalidInput("must be 0 or more", field="replica")
    start = datetime.now(UTC) - parse_duration(since, "since")
    prefix = f"{team}.{env}.{name}" + (f".{replica}" if replica is not None else "")
    return prefix, _office(request), start


@router.get("/teams/{team}/envs/{env}/apps/{name}/logs")
async def logs_page(
    request: Request,
    team: str,
    env: str,
    name: str,
    since: str = DEFAULT_SINCE,
    replica: int | None = None,
) -> Response:
    """The newest lines as a page (no JavaScript needed), newest last."""
    prefix, office, start = await _app_lines(request, team, env, name, since, replica)
    kept: deque[dict[str, Any]] = deque(maxlen=PAGE_LINES)
    async for line in office.read_logs(prefix, since=start, follow=False):
        kept.append(entry(line))
    v = await _team_page(request, team)
    return render(
        request,
        "logs.html",
        v,
        team=team,
        env=env,
        name=name,
        since=since,
        lines=list(kept),
        most=PAGE_LINES,
    )


@router.get("/teams/{team}/envs/{env}/apps/{name}/logs/stream")
async def logs_stream(
    request: Request,
    team: str,
    env: str,
    name: str,
    since: str = DEFAULT_SINCE,
    replica: int | None = None,
    last_event_id: str | None = Header(default=None),
) -> Response:
    """Every line since ``since``, then each new one as it comes (``kled logs -f``)."""
    prefix, office, start = await _app_lines(request, team, env, name, since, replica)
    resume = _resume_from(last_event_id)
    if resume is not None:
        start = resume

    async def events() -> AsyncIterator[bytes]:
        yield b": following\n\n"
        async for line in office.read_logs(prefix, since=start, follow=True):
            if resume is not None and line.time <= resume:
                continue  # the browser had it before the connection dropped
            data = json.dumps(entry(line))
            yield f"id: {line.time.isoformat()}\nevent: line\ndata: {data}\n\n".encode()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _resume_from(last_event_id: str | None) -> datetime | None:
    """The time of the last line a reconnecting browser had, from its ``Last-Event-ID``."""
    if not last_event_id:
        return None
    try:
        when = datetime.fromisoformat(last_event_id)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when

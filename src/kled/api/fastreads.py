"""Reads of resources answered in front of FastAPI's router: the busiest requests.

A ``GET`` of one resource or of a page of a collection (not a watch) at its kind's own
path is matched here by splitting the path, not by trying the application's routes one
after the other, and answered without FastAPI's per-request dependency resolution. It runs
the same code as the routes of ``rest`` (authentication, the other-team 404, the team's
existence, ``Service.get``/``list``) and answers the same bytes, errors included.

Anything else — another method, a watch, a query parameter this does not know or cannot
read exactly as FastAPI would, an empty path segment — goes on to the application, which
answers it as before (a malformed ``limit`` gets FastAPI's own 422).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from kled.admission.request import UserInfo
from kled.api import rest
from kled.api.authz import check_team
from kled.api.errors import status_body
from kled.api.service import Service
from kled.errors import Forbidden, KledError
from kled.resources.registry import KINDS, KindInfo
from kled.resources.registry import Scope as KindScope
from kled.store.objects import Key

PREFIX = "/api/v1/"
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
_LIST_PARAMS = frozenset({"labelSelector", "limit", "continue", "resourceVersion", "watch"})


@dataclass(frozen=True)
class Matched:
    """What ``Measure`` labels a request with: the route's path template."""

    path: str


@dataclass(frozen=True)
class Read:
    """A read this layer answers: one object (``name``) or a collection page."""

    info: KindInfo
    route: Matched
    team: str = ""
    env: str = ""
    name: str | None = None


class ResourceReads:
    """Answer ``GET`` of resources and collections; pass everything else to ``app``."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # the FastAPI application's state: its ``service``
        self.kinds: dict[tuple[KindScope, str], KindInfo] = {
            (info.scope, info.plural): info for info in KINDS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        read = self.match(path) if path.startswith(PREFIX) else None
        query = _query(scope.get("query_string", b"")) if read is not None else None
        if read is None or query is None or not _plain(read, query):
            await self.app(scope, receive, send)
            return
        scope["route"] = read.route
        svc: Service = self.state.service
        try:
            status, body = 200, await self.answer(svc, read, query, _authorization(scope))
        except KledError as e:
            status, body = e.status, rest.encode(_status_of(e))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def match(self, path: str) -> Read | None:
        """The read ``path`` names, or None where it names none (or another route)."""
        parts = path[len(PREFIX) :].split("/")
        if "" in parts:
            return None
        n = len(parts)
        if n == 1 or (n == 2 and parts[0] != "teams"):
            info = self.kinds.get((KindScope.SERVER, parts[0]))
            if info is None:
                return None
            if n == 1:
                return Read(info, Matched(f"/api/v1/{info.plural}"))
            return Read(info, Matched(f"/api/v1/{info.plural}/{{name}}"), name=parts[1])
        if parts[0] != "teams":
            return None
        team = parts[1]
        if n == 2:
            teams = self.kinds[(KindScope.SERVER, "teams")]
            return Read(teams, Matched("/api/v1/teams/{team}"), name=team)
        plural = parts[2]
        info = self.kinds.get((KindScope.TEAM, plural))
        if n in (3, 4) and info is not None:
            where = f"/api/v1/teams/{{team}}/{plural}"
            if n == 3:
                return Read(info, Matched(where), team)
            return Read(info, Matched(f"{where}/{{name}}"), team, name=parts[3])
        if n == 3:
            info = self.kinds.get((KindScope.ENVIRONMENT, plural))
            if info is None:
                return None
            return Read(info, Matched(f"/api/v1/teams/{{team}}/{plural}"), team)
        if n not in (5, 6) or plural != "environments":
            return None
        info = self.kinds.get((KindScope.ENVIRONMENT, parts[4]))
        if info is None:
            return None
        where = f"/api/v1/teams/{{team}}/environments/{{env}}/{info.plural}"
        if n == 5:
            return Read(info, Matched(where), team, parts[3])
        return Read(info, Matched(f"{where}/{{name}}"), team, parts[3], parts[5])

    async def answer(
        self, svc: Service, read: Read, query: dict[str, str], authorization: str | None
    ) -> bytes:
        user: UserInfo = await rest.user_of(svc, authorization)
        # as ``rest.current_user``: another team's paths do not exist for this user
        team = read.team or (read.name if read.info.kind == "Team" else "")
        if team:
            check_team(user, team, f"team {team}")
        if read.name is not None:
            key = Key(read.info.kind, read.team, read.env, read.name)
            reveal = _BOOLS[query.get("reveal", "false")]
            return rest.encode(await svc.get(user, key, reveal=reveal))
        if read.team:
            await rest.require_team(svc, user, read.team)
        return await rest.list_body(
            svc,
            user,
            read.info,
            read.team or None,
            read.env or None,
            query.get("labelSelector"),
            int(query.get("limit", "0")),
            query.get("continue"),
        )


def _query(raw: bytes) -> dict[str, str] | None:
    """The query's parameters, or None if one is given twice (FastAPI's to read)."""
    if not raw:
        return {}
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    return query if len(query) == len(pairs) else None


def _plain(read: Read, query: dict[str, str]) -> bool:
    """Whether every parameter is one this layer reads exactly as the route would."""
    if read.name is not None:
        return query.keys() <= {"reveal"} and query.get("reveal", "false") in _BOOLS
    if not query.keys() <= _LIST_PARAMS or query.get("watch", "false") not in ("false", "0"):
        return False
    return query.get("limit", "0").isdigit() and query.get("limit", "0").isascii()


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            text: str = value.decode("latin-1")
            return text
    return None


def _status_of(e: KledError) -> dict[str, Any]:
    body = status_body(e.status, e.reason, str(e), e.field)
    if isinstance(e, Forbidden) and e.policy:
        body["policy"] = e.policy
    return body

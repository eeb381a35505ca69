"""kPolicy wired to the store: where the engine reads policies and resources, and keeps
violations; the task that feeds resource and policy changes to Controller policies; and the
report routes (``kled policy report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from kled.admission.policy import PolicyEngine, Violation
from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.rest import User, service
from kled.api.service import Service
from kled.errors import InvalidInput
from kled.resources.registry import kind_info, resolve_kind
from kled.resources.selectors import parse_selector
from kled.store.follow import follow_events
from kled.store.objects import Event, Key, Store
from kled.store.violations import ViolationLog

log = logging.getLogger(__name__)
REPORT_LIMIT = 100
#: Each policy keeps at most 100 violations; a team's whole list is capped at this.
MAX_REPORT_LIMIT = 1000
#: ``?limit=`` of the report routes: 422 outside 1..1000, rather than a silent empty list.
Limit = Annotated[int, Query(ge=1, le=MAX_REPORT_LIMIT)]


class StorePolicySource:
    """A team's Policy documents, cached until the event log says one changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, list[dict[str, Any]]] = {}

    async def policies(self, team: str) -> list[dict[str, Any]]:
        if self.store.cache is not None:
            # the store answers from memory, current to this process's last write; a copy
            # here would wait for the feed, and a policy applied just now would be missed
            return (await self.store.list("Policy", team)).items
        cached = self._cache.get(team)
        if cached is None:
            cached = (await self.store.list("Policy", team)).items
            self._cache[team] = cached
        return cached

    def forget(self, team: str | None = None) -> None:
        if team is None:
            self._cache.clear()
        else:
            self._cache.pop(team, None)


class StoreReader:
    """Read-only access for the scripts' ``get`` and ``list``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(
        self, kind: str, team: str, environment: str | None, name: str
    ) -> dict[str, Any] | None:
        info = resolve_kind(kind)
        meta = {"name": name, "team": team, "environment": environment}
        try:
            key = Key.of({"kind": info.kind, "metadata": meta})
        except InvalidInput:
            return None  # e.g. an App asked for without an environment: nothing to find
        doc = await self.store.find(key)
        return None if doc is None else Service.present(doc)

    async def list(
        self, kind: str, team: str, environment: str | None, label_selector: str | None
    ) -> list[dict[str, Any]]:
        info = resolve_kind(kind)
        matches = parse_selector(label_selector).matches if label_selector else None
        page = await self.store.list(info.kind, team, environment, matches=matches)
        return [Service.present(d) for d in page.items]


class DatabaseViolationSink:
    def __init__(self, log_: ViolationLog) -> None:
        self.log = log_

    async def record(self, v: Violation) -> None:
        await self.log.record(v.as_dict())

    async def list(self, team: str, policy: str | None, limit: int) -> list[Violation]:
        fields = {f.name for f in dataclasses.fields(Violation)}
        return [
            Violation(**{k: v for k, v in row.items() if k in fields})
            for row in await self.log.list(team, policy, limit)
        ]


#: What a status write changes besides ``status``: not a change a policy should see again.
_BOOKKEEPING = frozenset({"resourceVersion", "generation"})


def desired_fingerprint(doc: Mapping[str, Any]) -> str:
    """A digest of what a user wrote of ``doc`` (metadata, spec, data), not its status.

    Controllers write ``status`` all the time (an IP, a replica's phase); re-running
    Controller policies on each of those writes would add the same violation again and
    again, so the feed re-checks a resource only when this digest changes.
    """
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k not in _BOOKKEEPING}
    body = {k: v for k, v in doc.items() if k not in ("metadata", "status")}
    text = json.dumps([meta, body], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyFeed:
    """Follows the event log: refreshes cached policies, re-checks Controller policies
    when a resource's desired state (not just its status) changes."""

    def __init__(
        self,
        store: Store,
        engine: PolicyEngine,
        source: StorePolicySource,
        audits: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.engine = engine
        self.source = source
        #: whether this replica runs the Controller policies now (it holds the controllers'
        #: lease): every replica forgets a changed policy, only one records what they find
        self.audits = audits
        self._task: asyncio.Task[None] | None = None
        #: uid → fingerprint of the desired state last handed to the engine
        self._seen: dict[str, str] = {}

    async def start(self) -> None:
        after = await self.store.revision()
        self._task = asyncio.create_task(
            follow_events(
                self.store, after, self._on_event, what="policy feed", resync=self._resync
            ),
            name="policy-feed",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _resync(self) -> int:
        """After a compaction: forget every cached policy; go on from now."""
        self.source.forget()
        self._seen.clear()
        return await self.store.revision()

    def changed(self, event_type: str, doc: Mapping[str, Any]) -> bool:
        """Whether this event changes what the user asked for (always, for a deletion)."""
        uid = str((doc.get("metadata") or {}).get("uid") or "")
        if event_type == "DELETED":
            self._seen.pop(uid, None)
            return True
        fingerprint = desired_fingerprint(doc)
        if uid and self._seen.get(uid) == fingerprint:
            return False
        if uid:
            self._seen[uid] = fingerprint
        return True

    async def _on_event(self, event: Event) -> None:
        if event.kind == "Policy":
            self.source.forget(event.team)
            self.engine.forget(event.object)
        if not self.audits():
            self._seen.clear()  # whoever audits next starts from what it reads then
            return
        if event.team and self.changed(event.type, event.object):
            await self.engine.on_change(event.type, event.object)


router = APIRouter(prefix="/api/v1")


def _engine_sink(request: Request) -> DatabaseViolationSink:
    sink: DatabaseViolationSink = request.app.state.violations
    return sink


def _authorize_read(user: UserInfo, team: str, what: str) -> None:
    authz.authorize(user, "get", kind_info("Policy"), team, what)


@router.get("/teams/{team}/violations")
async def team_report(
    request: Request,
    team: str,
    user: UserInfo = User,
    policy: str | None = None,
    limit: Limit = REPORT_LIMIT,
) -> Response:
    _authorize_read(user, team, f"violations of team {team}")
    rows = await _engine_sink(request).log.list(team, policy, limit)
    return JSONResponse({"apiVersion": "kled.io/v1", "kind": "ViolationList", "items": rows})


@router.get("/teams/{team}/policies/{name}/report")
async def policy_report(
    request: Request, team: str, name: str, user: UserInfo = User, limit: Limit = REPORT_LIMIT
) -> Response:
    policy = await service(request).get(user, Key("Policy", team, "", name))
    rows = await _engine_sink(request).log.list(team, name, limit)
    return JSONResponse(
        {"apiVersion": "kled.io/v1", "kind": "PolicyReport", "policy": policy, "items": rows}
    )

"""Dev sessions on the control plane: swap an app for its dev replica, renew, restore.

``POST …/apps/{name}/dev`` starts a session (whoever may update the app: a viewer gets
403) and answers with its id and grace period; the CLI renews it with ``PUT`` well within
the grace, and ends it with ``DELETE`` (which restores the app). A session that is not
renewed in time — the laptop slept, crashed or lost its network — is restored by the
control plane itself (``DevSessions.sweep``). ``GET`` says whether the app is in one.
The swap itself and what is kept where are ``kled.control.devswap``'s.

A control plane that restarts finds the sessions in the apps' annotations and gives each
a fresh grace period: a CLI still running renews it, a vanished one lets it lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kled.admission.request import UserInfo
from kled.api import authz, openapi
from kled.api.rest import User, _body, service
from kled.api.service import ADMIN, Service
from kled.bus.dev_leases import BucketLeases, Leases, MemoryLeases
from kled.bus.office import MessageOffice
from kled.control.devswap import DevSession, lapsed, restored, session_of, swapped_in
from kled.errors import Conflict, InvalidInput, KledError, NotFound, Unavailable
from kled.resources.registry import kind_info
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
#: writes tried when the app's status changes between the read and the write
_RETRIES = 20


def _app_key(key: Key) -> str:
    """An app's lease key: ``team.env.app`` (a key of the leases bucket)."""
    return f"{key.team}.{key.environment}.{key.name}"


def _key_of(app: str) -> Key:
    team, env, name = app.split(".", 2)
    return Key("App", team, env, name)


class DevSessions:
    """The dev sessions' leases on this control plane, and their sweeper."""

    def __init__(
        self,
        svc: Service,
        grace: float,
        office: Callable[[], MessageOffice | None] | None = None,
    ) -> None:
        self.service = svc
        self.grace = grace
        #: the Message Office once connected (its bucket is shared by every replica)
        self._office = office or (lambda: None)
        self._memory = MemoryLeases()
        self._bucket: BucketLeases | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def leases(self) -> Leases:
        """The bucket of the Message Office when there is one, else this replica's memory."""
        office = self._office()
        if office is None:
            return self._memory
        if self._bucket is None or self._bucket.office is not office:
            self._bucket = BucketLeases(office)
        return self._bucket

    async def start(self) -> None:
        """Give each session the apps carry without a lease one (a fresh grace), then
        sweep until stopped."""
        known = await self.leases.all()
        token: str | None = None
        while True:
            page = await self.service.store.list("App", limit=500, continue_token=token)
            for doc in page.items:
                with contextlib.suppress(KledError):
                    found = session_of(doc)
                    app = _app_key(Key.of(doc))
                    if found is not None and known.get(app, ("", 0.0))[0] != found.session:
                        await self.leases.renew(app, found.session)
            token = page.continue_token
            if not token:
                break
        self._task = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, max(self.grace / 4, 0.1)))
            try:
                await self.sweep()
            except Exception:  # one bad app must not stop the restores of the others
                log.exception("dev session sweep failed")

    async def sweep(self) -> None:
        """Restore every app whose session's lease lapsed (on any replica: a second
        restore of the same app finds nothing to do)."""
        for app, session in lapsed(await self.leases.all(), time.time(), self.grace):
            log.warning("app/%s dev session %s lapsed; restoring the app", app, session[:8])
            try:
                await self.restore(ADMIN, _key_of(app), session)
            except NotFound:
                await self.leases.drop(app)

    # -- the operations --------------------------------------------------------------------
    async def begin(self, user: UserInfo, key: Key) -> dict[str, Any]:
        authz.authorize(user, "update", kind_info("App"), key.team, str(key))
        session = DevSession(
            session=secrets.token_hex(16),
            user=user.username,
            since=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            spec={},
        )
        async with self._lock:
            await _written(self.service, user, key, lambda doc: swapped_in(doc, session))
            await self.leases.renew(_app_key(key), session.session)
        log.info(
            "app/%s dev session %s begun by %s", _app_key(key), session.session[:8], user.username
        )
        return {"session": session.session, "graceSeconds": self.grace, "user": user.username}

    async def renew(self, user: UserInfo, key: Key, session: str) -> dict[str, Any]:
        authz.authorize(user, "update", kind_info("App"), key.team, str(key))
        found = session_of(await self.service.get(user, key))
        if found is None or found.session != session:
            raise NotFound(f"app {key.name} is not in dev session {session[:8]} any more")
        await self.leases.renew(_app_key(key), session)
        return {"session": session, "graceSeconds": self.grace}

    async def restore(self, user: UserInfo, key: Key, session: str | None) -> dict[str, Any]:
        """Put the app back as it was; ``session`` None: whatever session it is in."""
        authz.authorize(user, "update", kind_info("App"), key.team, str(key))
        ended: list[DevSession] = []

        def back(doc: dict[str, Any]) -> dict[str, Any]:
            found = session_of(doc)
            if found is None or (session is not None and found.session != session):
                raise NotFound(f"app {key.name} is in no dev session to end")
            ended.append(found)
            out = restored(doc)
            assert out is not None
            return out

        async with self._lock:
            await _written(self.service, user, key, back)
            await self.leases.drop(_app_key(key))
        found = ended[-1]
        log.info("app/%s restored after dev session %s", _app_key(key), found.session[:8])
        return {"restored": True, "session": found.session}

    async def describe(self, user: UserInfo, key: Key) -> dict[str, Any]:
        doc = await self.service.get(user, key)
        found = session_of(doc)
        if found is None:
            return {"active": False}
        return {"active": True, "session": found.session[:8], "user": found.user,
                "since": found.since, "graceSeconds": self.grace}  # fmt: skip


async def _written(
    svc: Service, user: UserInfo, key: Key, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Write ``change(app)`` over the app as read, again if its status moved in between."""
    for attempt in range(_RETRIES):
        doc = await svc.get(user, key)
        version = (doc.get("metadata") or {}).get("resourceVersion")
        try:
            await svc.update(user, change(doc), expected_version=version)
            return
        except Conflict:
            if attempt == _RETRIES - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


def _sessions(request: Request) -> DevSessions:
    sessions: DevSessions | None = getattr(request.app.state, "dev", None)
    if sessions is None:
        raise Unavailable("this server runs no dev sessions")
    return sessions


_PATH = "/teams/{team}/environments/{env}/apps/{name}/dev"
_SESSION_BODY = openapi.json_body(
    {"type": "object", "required": ["session"], "properties": {"session": {"type": "string"}}}
)


def _session_of(body: dict[str, Any]) -> str:
    session = body.get("session")
    if not isinstance(session, str) or not session:
        raise InvalidInput("session: the id `kled dev` was given", field="session")
    return session


@router.post(
    _PATH,
    tags=["App"],
    status_code=201,
    summary="Swap in the app's dev replica",
    openapi_extra=openapi.no_body(),
)
async def begin_dev(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    key = Key("App", team, env, name)
    return JSONResponse(await _sessions(request).begin(user, key), status_code=201)


@router.put(_PATH, tags=["App"], summary="Renew a dev session", openapi_extra=_SESSION_BODY)
async def renew_dev(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    session = _session_of(await _body(request))
    key = Key("App", team, env, name)
    return JSONResponse(await _sessions(request).renew(user, key, session))


@router.delete(_PATH, tags=["App"], summary="End a dev session: restore the app")
async def end_dev(
    request: Request,
    team: str,
    env: str,
    name: str,
    user: UserInfo = User,
    session: str | None = None,
) -> Response:
    key = Key("App", team, env, name)
    return JSONResponse(await _sessions(request).restore(user, key, session))


@router.get(_PATH, tags=["App"], summary="Whether the app is in a dev session, and whose")
async def get_dev(
    request: Request, team: str, env: str, name: str, user: UserInfo = User
) -> Response:
    svc = service(request)
    sessions: DevSessions | None = getattr(request.app.state, "dev", None)
    if sessions is None:
        doc = await svc.get(user, Key("App", team, env, name))
        return JSONResponse({"active": session_of(doc) is not None})
    return JSONResponse(await sessions.describe(user, Key("App", team, env, name)))

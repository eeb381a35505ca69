"""Console sessions, one-time sign-in links and CSRF tokens: who a browser is.

A session keeps the API token the browser signed in with on the server side; the cookie
carries only a random session id. Each request authenticates that token again through
the service layer, so a token revoked or a user demoted takes effect on the next page,
not when the session ends. A one-time link (``kled ui``) holds a token for a minute and is
spent by its first use. All of it lives in this process's memory: a restarted control
plane forgets its sessions and people sign in again.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 60.0
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    token: str
    csrf: str
    expires: float
    #: lines the next page shows once (after a Post/Redirect/Get)
    flash: list[str] = field(default_factory=list)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted secret (CSRF token, link code)."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


class Sessions:
    """Sessions by id and unspent links by code; expired ones are dropped as they are met."""

    def __init__(
        self,
        *,
        session_seconds: float = SESSION_SECONDS,
        link_seconds: float = LINK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_seconds = session_seconds
        self.link_seconds = link_seconds
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, tuple[str, float]] = {}

    def open(self, token: str) -> Session:
        self._sweep()
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires=self.clock() + self.session_seconds,
        )
        self._sessions[session.id] = session
        return session

    def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def link(self, token: str) -> str:
        """A code that signs its first user in as ``token``, within ``link_seconds``."""
        self._sweep()
        code = secrets.token_urlsafe(32)
        self._links[code] = (token, self.clock() + self.link_seconds)
        return code

    def spend(self, code: str) -> str | None:
        """The token behind ``code``, once; None when unknown, spent or expired."""
        entry = self._links.pop(code, None)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def _sweep(self) -> None:
        now = self.clock()
        if len(self._sessions) >= MAX_SESSIONS:
            for sid in [s.id for s in self._sessions.values() if s.expires <= now]:
                del self._sessions[sid]
            if len(self._sessions) >= MAX_SESSIONS:  # all alive: the oldest goes
                oldest = min(self._sessions.values(), key=lambda s: s.expires)
                del self._sessions[oldest.id]
        for code in [c for c, (_, until) in self._links.items() if until <= now]:
            del self._links[code]

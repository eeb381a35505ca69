"""Rendering console pages: the Jinja2 templates, the signed-in viewer, CSRF-checked forms.

Every value a user controls reaches the browser through Jinja2 with autoescape on; the
pages carry a Content-Security-Policy without ``'unsafe-inline'``, so even a value that
slipped through could not run as a script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.service import Service
from kled.errors import Forbidden, KledError
from kled.resources.registry import kind_info
from kled.ui.session import Session, Sessions, same_secret

HERE = Path(__file__).parent
COOKIE = "kled_session"
SIGNIN_COOKIE = "kled_signin"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass
class Viewer:
    """The signed-in person of a request: their API identity and their console session."""

    user: UserInfo
    session: Session
    flash: list[str] = field(default_factory=list)

    @property
    def role(self) -> str:
        return "server administrator" if self.user.server_admin else str(self.user.role)


class SignInFirst(Exception):
    """No session (or its token stopped working): the page sends the browser to sign in."""


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.ui_sessions
    return found


async def viewer(request: Request) -> Viewer:
    session = sessions(request).find(request.cookies.get(COOKIE))
    if session is None:
        raise SignInFirst()
    user = await service(request).authenticate(session.token)
    if user is None:  # revoked or expired since: the session ends with it
        sessions(request).close(session.id)
        raise SignInFirst()
    shown, session.flash = session.flash, []
    return Viewer(user, session, shown)


def may(user: UserInfo, verb: str, kind: str, team: str) -> bool:
    """Whether ``user`` may ``verb`` a ``kind`` in ``team``: the API's rule, asked quietly
    (deciding which buttons to draw is not a denial worth a log line)."""
    logger = authz.log
    was = logger.disabled
    logger.disabled = True
    try:
        authz.authorize(user, verb, kind_info(kind), team, kind)
        return True
    except KledError:
        return False
    finally:
        logger.disabled = was


def flash(v: Viewer, message: str) -> None:
    """A line the next page shows once (after a Post/Redirect/Get)."""
    v.session.flash.append(message)


async def form(request: Request, v: Viewer | None, expected: str | None = None) -> dict[str, str]:
    """The fields of a posted form, refused unless it carries the right CSRF token."""
    body = (await request.body()).decode("utf-8", "replace")
    fields = {k: vs[-1] for k, vs in parse_qs(body, keep_blank_values=True).items()}
    want = expected if expected is not None else (v.session.csrf if v else "")
    if not want or not same_secret(fields.get("csrf"), want):
        raise Forbidden(
            "the form's CSRF token is missing or stale: reload the page and try again",
            field="csrf",
        )
    return fields


def render(
    request: Request, template: str, v: Viewer | None, /, status: int = 200, **context: Any
) -> HTMLResponse:
    html = templates.get_template(template).render(
        viewer=v,
        csrf=v.session.csrf if v else context.pop("csrf", ""),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def to_signin(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/ui/signin?next={quote(target, safe='')}")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"

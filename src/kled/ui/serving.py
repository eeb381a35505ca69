"""Mounting the console on the control plane's app: its routes, its static files, its
security headers, and errors shown as pages rather than JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kled.errors import KledError
from kled.ui import devpages, editing, logs, meshview, routes
from kled.ui.pages import HERE, SECURITY_HEADERS, SignInFirst, render, to_signin
from kled.ui.session import Sessions

Handler = Callable[[Request, Any], Awaitable[Response]]


def install(app: FastAPI) -> None:
    app.state.ui_sessions = Sessions()
    app.include_router(routes.router)
    app.include_router(logs.router)
    app.include_router(meshview.router)
    app.include_router(editing.router)
    app.include_router(devpages.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_exception_handler(SignInFirst, _sign_in_first)
    previous: Handler | None = app.exception_handlers.get(KledError)  # type: ignore[assignment]

    async def kled_error(request: Request, exc: Any) -> Response:
        if _is_console(request) and request.url.path != "/ui/links":
            return await _error_page(request, exc)
        assert previous is not None
        return await previous(request, exc)

    app.add_exception_handler(KledError, kled_error)

    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """The console's headers (CSP and friends) on every ``/ui`` response, static files and
    errors included. Pure ASGI, and a no-op for API paths, which it passes straight on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers") or []}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            await send(message)

        await self.app(scope, receive, sending)


def _is_console(request: Request) -> bool:
    path = request.url.path
    return path == "/ui" or path.startswith("/ui/")


async def _sign_in_first(request: Request, exc: Any) -> Response:
    if request.method == "GET":
        return to_signin(request)
    return render(
        request, "error.html", None, status=401, message="sign in first", team=None, csrf=""
    )


async def _error_page(request: Request, exc: KledError) -> Response:
    from kled.ui.pages import viewer

    try:
        v = await viewer(request)
    except SignInFirst:
        v = None
    status = exc.status
    return render(
        request,
        "error.html",
        v,
        status=status,
        message=exc.message,
        field=exc.field,
        team=v.user.team if v else None,
    )

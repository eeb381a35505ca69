"""The ASGI application: routes, error handling, body limits, metrics, GraphQL."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import kled
from kled.admission.request import UserInfo
from kled.api import batch, observability, openapi, rest
from kled.api.errors import (
    allowed_methods,
    http_error_handler,
    kled_error_handler,
    status_body,
    validation_error_handler,
)
from kled.api.fastreads import ResourceReads
from kled.api.rest import User, _outcome, service
from kled.api.service import Service
from kled.errors import InvalidInput, KledError
from kled.resources import bounds

DEFAULT_MAX_BODY = 1024 * 1024

extra = APIRouter(prefix="/api/v1")


@extra.get(
    "/whoami",
    summary="Who the token is",
    responses={
        200: {
            "description": "the token's user",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["username", "role", "serverAdmin"],
                        "properties": {
                            "username": {"type": "string"},
                            "team": {"type": ["string", "null"]},
                            "role": {"type": ["string", "null"]},
                            "serverAdmin": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def whoami(user: UserInfo = User) -> Response:
    return JSONResponse(
        {
            "username": user.username,
            "team": user.team,
            "role": user.role,
            "serverAdmin": user.server_admin,
        }
    )


@extra.post(
    "/apply",
    summary=(
        "Create or update a resource of any kind (201 when created), or each of a List "
        "(one result each)"
    ),
    responses={**openapi.responses(200, "Outcome"), **openapi.responses(201, "Outcome")},
    openapi_extra=openapi.write_body(None),
)
async def apply(
    request: Request, user: UserInfo = User, dryRun: bool = False, continueOnError: bool = False
) -> Response:
    """One document, or a ``List`` of them answered one result each (``api/batch.py``)."""
    doc = bounds.loads(await request.body() or b"null")
    many = batch.documents(doc)
    if many is not None:
        results = await batch.apply_all(
            service(request), user, many, dry_run=dryRun, keep_going=continueOnError
        )
        return JSONResponse(results)
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be one resource as a JSON object")
    outcome = await service(request).apply(user, doc, dry_run=dryRun)
    return _outcome(outcome, 201 if outcome.result == "created" else 200)


class Options:
    """Answer ``OPTIONS`` on any route with 204 and the ``Allow`` of its path."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        allowed = allowed_methods(self.app.router.routes, scope)
        if allowed:
            response = Response(status_code=204, headers={"Allow": ", ".join(allowed)})
        else:
            message = f"OPTIONS {scope['path']}: Not Found"
            response = JSONResponse(status_body(404, "NotFound", message), status_code=404)
        await response(scope, receive, send)


class Measure:
    """Count every request and time it to its first byte, by method, route and status.

    Pure ASGI, as every layer here: Starlette's ``BaseHTTPMiddleware`` runs each request
    in a task of its own with streams between, which cost more than a cached read itself.
    The route is the one the router matched (it leaves it in the scope); a streamed
    response (a watch) is timed to its first byte, not to its end.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                observe(scope, time.perf_counter() - start, status)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if status == 0:  # failed before answering: the server answers 500
                observe(scope, time.perf_counter() - start, 500)


def observe(scope: Scope, seconds: float, status: int) -> None:
    path = getattr(scope.get("route"), "path", "unmatched")
    method = scope["method"]
    observability.LATENCY.labels(method, path).observe(seconds)
    observability.REQUESTS.labels(method, path, str(status)).inc()


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed.

    A body is read whole (it is at most ``limit``) before the application sees any of it,
    so a chunked body that grows past the limit is refused before any route ran, rather
    than failing halfway inside one.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        if declared is None and scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            # no body announced: streaming responses (watches) keep their live receive
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)

    async def _refuse(self, send: Send) -> None:
        body = JSONResponse(
            status_body(413, "RequestEntityTooLarge", f"the body is over {self.limit} bytes"),
            status_code=413,
        )
        await body({"type": "http"}, _no_receive, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive that gives ``messages`` first, then waits on ``then`` (a disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(
    svc: Service,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    extra_routers: Any = (),
    state: dict[str, Any] | None = None,
) -> Any:
    app = FastAPI(
        title="Kled API",
        version=kled.__version__,
        description="The control plane of Kled: resources of teams, environments and apps.",
    )
    app.state.service = svc
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    app.add_exception_handler(KledError, kled_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.include_router(observability.router)
    # Routes are matched in order, one after the other: the resources' own routes, the
    # busiest, come first; the catch-alls that would hide other routers' paths come last.
    app.include_router(rest.router)
    app.include_router(extra)
    for router in extra_routers:
        app.include_router(router)
    from kled.api.graphql import graphql_router

    app.include_router(graphql_router(), prefix="/graphql")
    app.include_router(rest.misplaced_router)
    from kled.kube.routes import router as kube_router

    app.include_router(kube_router)  # Kled Clusters: the Kubernetes API at /k8s/{team}/{cluster}
    from kled.kube.execs import router as kube_exec_router

    app.include_router(kube_exec_router)  # kubectl exec (WebSocket)
    from kled.kube.portforward import router as kube_portforward_router

    app.include_router(kube_portforward_router)  # kubectl port-forward (SPDY in a WebSocket)
    from kled.ui import serving as console

    console.install(app)  # the web console at /ui, on this same service layer
    openapi.install(app)
    # resource reads are answered in front of the router (same code, same answers)
    return BodyLimit(Measure(ResourceReads(Options(app), app.state)), max_body)

"""Errors as the API answers them: a JSON ``Status``, as Kubernetes does."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import Scope

from kled.errors import Forbidden, KledError


def status_body(code: int, reason: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "field": field,
    }


async def kled_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KledError)
    body = status_body(exc.status, exc.reason, str(exc), exc.field)
    if isinstance(exc, Forbidden) and exc.policy:
        body["policy"] = exc.policy
    return JSONResponse(body, status_code=exc.status)


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse(
        status_body(422, "Invalid", f"{where}: {first.get('msg')}", where or None),
        status_code=422,
    )


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such path, a method the path has not) as a Status."""
    assert isinstance(exc, HTTPException)
    code = exc.status_code
    headers = dict(exc.headers or {})
    if code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    try:
        reason = HTTPStatus(code).phrase.title().replace(" ", "")
    except ValueError:
        reason = "Error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(status_body(code, reason, message), status_code=code, headers=headers)


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes at ``scope``'s path, OPTIONS included ([] if none).

    The documented routes answer for a path when one matches; the catch-alls that only say
    where a kind lives (hidden from the document) count only where nothing else matches.
    """
    path = scope["path"]
    shown: set[str] = set()
    hidden: set[str] = set()
    # FastAPI keeps an included router as one route: iterate what it holds.
    for route in iter_route_contexts(routes):
        regex = getattr(route, "path_regex", None)
        methods = route.methods
        if not methods or regex is None or not regex.match(path):
            continue
        (shown if getattr(route, "include_in_schema", True) else hidden).update(methods)
    found = shown or hidden
    return sorted(found | {"OPTIONS"}) if found else []

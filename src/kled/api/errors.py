"""Errors as the API answers them: a JSON ``Status``, as Kubernetes does."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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

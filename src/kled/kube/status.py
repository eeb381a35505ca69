"""Errors as Kubernetes clients read them: ``Status`` objects with reasons, codes and causes.

kubectl prints ``Error from server (Reason): message`` from these, and client libraries
decide on retries and re-lists (``410 Expired``) by ``code`` and ``reason``: Kled's own
errors are translated here, once.
"""

from __future__ import annotations

from typing import Any

from kled.errors import Conflict, Gone, KledError, NotFound
from kled.resources.meta import SchemaError


class KubeError(Exception):
    """An answer other than success, as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "code": code,
    }
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = details
    return body


def not_found(plural: str, name: str, group: str = "") -> KubeError:
    what = f"{plural}.{group}" if group else plural
    return KubeError(
        404,
        "NotFound",
        f'{what} "{name}" not found',
        details={"name": name, "group": group, "kind": plural},
    )


def already_exists(plural: str, name: str, group: str = "") -> KubeError:
    what = f"{plural}.{group}" if group else plural
    return KubeError(
        409,
        "AlreadyExists",
        f'{what} "{name}" already exists',
        details={"name": name, "group": group, "kind": plural},
    )


#: causes already worded as the API server words them, and their reasons
_REASONS = {
    "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported",
    "Required value": "FieldValueRequired",
    "Duplicate value": "FieldValueDuplicate",
}


def _cause(message: str) -> dict[str, str]:
    reason = _REASONS.get(message.split(":")[0])
    if reason is None:
        return {"reason": "FieldValueInvalid", "message": f"Invalid value: {message}"}
    return {"reason": reason, "message": message}


def invalid(kind: str, name: str, causes: list[tuple[str, str]], group: str = "") -> KubeError:
    """``422 Invalid`` naming each field at fault, as the API server words it."""
    text = "; ".join(f"{field}: {message}" for field, message in causes)
    return KubeError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{**_cause(message), "field": f} for f, message in causes],
        },
    )


def bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message)


def forbidden(user: str, verb: str, plural: str, group: str, namespace: str | None) -> KubeError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return KubeError(
        403,
        "Forbidden",
        f'{plural} is forbidden: User "{user}" cannot {verb} resource "{plural}" '
        f'in API group "{group}"{where}',
        details={"group": group, "kind": plural},
    )


def from_kled(error: KledError, plural: str, name: str, group: str = "") -> KubeError:
    """A Kled error from the store or admission, as the Kubernetes answer of the same sense."""
    if isinstance(error, NotFound):
        return not_found(plural, name, group)
    if isinstance(error, Gone):
        return KubeError(410, "Expired", f"too old resource version: {error.message}")
    if isinstance(error, Conflict):
        what = f"{plural}.{group}" if group else plural
        return KubeError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            details={"name": name, "group": group, "kind": plural},
        )
    if isinstance(error, SchemaError):
        return invalid(plural, name, [(f or "<root>", m) for f, m in error.problems], group)
    if error.status == 422:
        return invalid(plural, name, [(error.field or "<root>", error.message)], group)
    return KubeError(error.status, error.reason, error.message)

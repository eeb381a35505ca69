"""``POST /api/v1/apply`` of many documents in one request: each answered on its own.

The body is a ``List`` (``{"kind": "List", "items": [...]}``, as ``kubectl`` sends one)
or a JSON array. The documents are applied in the order given, each in a transaction of
its own, exactly as a request of its own would be (admission, authorisation, ``unchanged``
without a write); the answer holds one result per document, in that order:

- ``{"result": "created" | "configured" | "unchanged", "object": …, "warnings": […]}``;
- ``{"error": Status}`` for a refused one (the message it would have had alone): nothing of
  that document is stored;
- ``{"result": "skipped"}`` for those after a refusal, unless ``continueOnError=true``,
  which applies them all.
"""

from __future__ import annotations

from typing import Any

from kled.admission.request import UserInfo
from kled.api.errors import status_body
from kled.api.service import Service
from kled.errors import Forbidden, InvalidInput, KledError
from kled.resources.registry import API_VERSION

MAX_DOCUMENTS = 1000


def documents(body: Any) -> list[Any] | None:
    """The documents of a batch body, or None if it is one document."""
    if isinstance(body, list):
        items: Any = body
    elif isinstance(body, dict) and body.get("kind") == "List" and "metadata" not in body:
        items = body.get("items")
        if not isinstance(items, list):
            raise InvalidInput("must be a list of resources", field="items")
    else:
        return None
    if len(items) > MAX_DOCUMENTS:
        raise InvalidInput(f"at most {MAX_DOCUMENTS} documents in one apply", field="items")
    return list(items)


async def apply_all(
    svc: Service,
    user: UserInfo,
    docs: list[Any],
    *,
    dry_run: bool = False,
    keep_going: bool = False,
) -> dict[str, Any]:
    """Apply ``docs`` in order, one transaction each; the answer's body."""
    results: list[dict[str, Any]] = []
    failed = False
    for i, doc in enumerate(docs):
        if failed and not keep_going:
            results.append({"result": "skipped"})
            continue
        try:
            if not isinstance(doc, dict):
                raise InvalidInput("must be one resource as a JSON object", field=f"items[{i}]")
            outcome = await svc.apply(user, doc, dry_run=dry_run)
        except KledError as e:
            failed = True
            error = status_body(e.status, e.reason, str(e), e.field)
            if isinstance(e, Forbidden) and e.policy:
                error["policy"] = e.policy
            results.append({"error": error})
            continue
        result: dict[str, Any] = {
            "result": outcome.result,
            "object": outcome.object,
            "warnings": outcome.warnings,
        }
        if outcome.token:
            result["token"] = outcome.token
        results.append(result)
    return {"apiVersion": API_VERSION, "kind": "ApplyResults", "results": results}

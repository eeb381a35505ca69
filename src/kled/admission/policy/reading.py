"""What a policy script reads: its ``get``/``list``/``sleep`` calls answered from the
server's ``ResourceReader``, and resources shaped the way scripts expect to see them.

Scripts written for jsPolicy ask for Kubernetes kinds (``Pod``, ``Namespace``) by
``namespace/name``; here those become Kled's kinds and environments. A kind Kled does
not have is never found rather than an error, as jsPolicy answers for what is not there.
Stored Secrets are shown with their keys only.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kled.admission.policy.matching import Selector, kled_kind, labels_of
from kled.errors import KledError, NotFound
from kled.resources.registry import Scope, resolve_kind

if TYPE_CHECKING:
    from kled.admission.policy.engine import ResourceReader


async def answer(
    reader: ResourceReader,
    need: Mapping[str, Any],
    team: str,
    request: Mapping[str, Any],
    deadline: float,
) -> dict[str, Any]:
    """The answer to one host call of a script: ``{value}`` or ``{error}``."""
    remaining = max(0.0, deadline - asyncio.get_running_loop().time())
    fn, args = str(need.get("fn")), list(need.get("args") or [])
    try:
        if fn == "sleep":
            await asyncio.sleep(min(max(0.0, float(args[0]) / 1000), remaining))
            return {"value": None}
        kind = kled_kind(str(args[0]))
        if kind is None:
            # Nothing of a kind Kled does not have can exist: as in jsPolicy, a get
            # of what is not there is undefined, and a list is empty.
            return {"value": None if fn == "get" else []}
        if fn == "get":
            value: Any = await asyncio.wait_for(
                _get(reader, kind, team, str(args[2]), request), remaining
            )
        elif fn == "list":
            value = await asyncio.wait_for(_list(reader, kind, team, args[2], args[3]), remaining)
        else:
            return {"error": f"unknown host call {fn}"}
        return {"value": value}
    except TimeoutError:
        return {"error": f"{fn}() ran out of the policy's time"}
    except NotFound:
        return {"value": None}
    except KledError as exc:
        return {"error": f"{fn}(): {exc}"}


async def _get(
    reader: ResourceReader, kind: str, team: str, name: str, request: Mapping[str, Any]
) -> dict[str, Any] | None:
    info = resolve_kind(kind)
    environment: str | None = None
    if info.scope is Scope.ENVIRONMENT:
        environment, _, name = name.rpartition("/")
        environment = environment or str(request.get("namespace") or "") or None
        if environment is None:
            return None
    else:
        name = name.rpartition("/")[2]
    return for_script(await reader.get(kind, team, environment, name), stored=True)


async def _list(
    reader: ResourceReader, kind: str, team: str, namespace: Any, selector: Any
) -> list[dict[str, Any]]:
    info = resolve_kind(kind)
    environment = str(namespace) if namespace and info.scope is Scope.ENVIRONMENT else None
    wanted = Selector.parse(str(selector) if selector else None)
    found = await reader.list(kind, team, environment, str(selector) if selector else None)
    return [
        doc
        for doc in (for_script(d, stored=True) for d in found)
        if doc is not None and wanted.matches(labels_of(doc))
    ]


def for_script(doc: dict[str, Any] | None, *, stored: bool = False) -> dict[str, Any] | None:
    """A resource as a script sees it: ``metadata.namespace`` set to its environment (so
    jsPolicy scripts written for Kubernetes read it where they expect); a ``stored``
    Secret (read with get/list, not the one being written) shows its keys, not values."""
    if doc is None:
        return None
    shown = copy.deepcopy(doc)
    meta = shown.get("metadata")
    if isinstance(meta, dict) and meta.get("environment") and "namespace" not in meta:
        meta["namespace"] = meta["environment"]
    if stored and shown.get("kind") == "Secret":
        for key in ("data", "stringData"):
            if isinstance(shown.get(key), dict):
                shown[key] = {k: "" for k in shown[key]}
    return shown


def from_script(doc: Any) -> Any:
    """A mutated object back in Kled's form: the ``metadata.namespace`` alias dropped."""
    if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
        meta = doc["metadata"]
        if "namespace" in meta and meta.get("namespace") == meta.get("environment"):
            doc = {**doc, "metadata": {k: v for k, v in meta.items() if k != "namespace"}}
    return doc

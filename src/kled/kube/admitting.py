"""kPolicy on a Kled Cluster's writes: what policies are told and what they may read.

Each write passes the team's admission chain as its stored ``KubeObject`` document, with a
``KubeRequest`` beside it (``kled.admission.kube``): the Kubernetes object, its group,
kind, resource and namespace, its Namespace's labels and a ``ClusterReader`` for the
scripts' ``get``/``list`` of this cluster's objects. A policy's refusal comes back as the
``Status`` kubectl prints; its mutation is checked again as any write is.
"""

from __future__ import annotations

import copy
from typing import Any

from kled.admission.kube import KubeRequest
from kled.errors import KledError
from kled.kube import lifecycle
from kled.kube.objects import ClusterObjects
from kled.kube.served import SERVED, Served
from kled.kube.status import KubeError
from kled.resources.selectors import parse_selector

#: the reason of a policy's refusal, by its HTTP code, as Kubernetes names them
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}


def _served(kind: str, api_version: str) -> Served | None:
    """The served kind a script means: ``Pod``/``pods``, with ``v1`` or ``apps/v1``."""
    word = kind.lower()
    for served in SERVED:
        if word not in (served.kind.lower(), served.plural):
            continue
        if api_version and api_version != served.group_version:
            continue
        return served
    return None


def _shown(served: Served, obj: dict[str, Any]) -> dict[str, Any]:
    """What a script may read of an object: a Secret's keys, never its values."""
    if served.kind != "Secret":
        return obj
    out = copy.deepcopy(obj)
    for key in ("data", "stringData"):
        if isinstance(out.get(key), dict):
            out[key] = {k: "" for k in out[key]}
    (out.get("metadata") or {}).pop("annotations", None)
    return out


class ClusterReader:
    """The scripts' ``get``/``list``, over one cluster's objects only."""

    def __init__(self, objects: ClusterObjects) -> None:
        self.objects = objects

    async def get(
        self, kind: str, api_version: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        served = _served(kind, api_version)
        if served is None:
            return None
        found = await self.objects.find(served, namespace if served.namespaced else "", name)
        return None if found is None else _shown(served, found)

    async def list(
        self, kind: str, api_version: str, namespace: str | None, label_selector: str | None
    ) -> list[dict[str, Any]]:
        served = _served(kind, api_version)
        if served is None:
            return []
        matches = parse_selector(label_selector).matches if label_selector else None
        items, _ = await self.objects.list(
            served, namespace if served.namespaced else None, labels=matches
        )
        return [_shown(served, i) for i in items]


async def kube_request(
    objects: ClusterObjects,
    served: Served,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None,
) -> KubeRequest:
    subject = obj or old or {}
    meta = subject.get("metadata") or {}
    namespace = str(meta.get("namespace") or "") if served.namespaced else ""
    labels: dict[str, str] = {}
    if served.kind == "Namespace":
        labels = dict(meta.get("labels") or {})
    elif namespace:
        found = await objects.find(lifecycle.NAMESPACE, "", namespace)
        labels = dict(((found or {}).get("metadata") or {}).get("labels") or {})
    return KubeRequest(
        group=served.group,
        version=served.version,
        kind=served.kind,
        resource=served.plural,
        cluster=objects.cluster,
        namespace=namespace,
        name=str(meta.get("name") or ""),
        object=copy.deepcopy(obj),
        old_object=copy.deepcopy(old),
        reader=ClusterReader(objects),
        namespace_labels=labels,
    )


def refusal(error: KledError) -> KubeError | None:
    """A policy's refusal as the ``Status`` kubectl prints, e.g. ``Error from server
    (Forbidden): error when creating "web.yaml": policy no-latest denied the request: …``;
    None for other errors."""
    policy = getattr(error, "policy", None)
    if not policy:
        return None
    message = error.message
    prefix = f"denied (policy {policy}): "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    code = error.status if 400 <= error.status < 600 else 403
    reason = _REASONS.get(code, "Forbidden" if code < 500 else "InternalError")
    return KubeError(code, reason, f"policy {policy} denied the request: {message}")

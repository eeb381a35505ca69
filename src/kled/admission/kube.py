"""A write to a Kled Cluster's Kubernetes object, as admission sees it.

Such a write reaches the admission chain as the stored ``KubeObject`` document (the
object under ``spec.object``); ``kled.kube`` adds a ``KubeRequest`` beside it with what a
Kubernetes admission webhook would be told: the object's group, version, kind, resource,
namespace and name, the Kubernetes objects themselves, the labels of its Namespace (for
``namespaceSelector``) and a ``KubeReader`` over the cluster (for a script's ``get`` and
``list``). So a policy can be written for the Kubernetes kind itself, as for jsPolicy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol


class KubeReader(Protocol):
    """Read-only access to one cluster's objects, by Kubernetes kind (``Pod``, ``pods``)."""

    async def get(
        self, kind: str, api_version: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...

    async def list(
        self, kind: str, api_version: str, namespace: str | None, label_selector: str | None
    ) -> list[dict[str, Any]]: ...


@dataclass
class KubeRequest:
    group: str
    version: str
    kind: str
    resource: str  # the plural
    cluster: str
    namespace: str  # "" for cluster-scoped kinds
    name: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    reader: KubeReader | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def rewrapped(wrapper: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The stored document ``wrapper`` holding ``obj`` (a mutated object) instead."""
    out = copy.deepcopy(wrapper)
    out.setdefault("spec", {})["object"] = copy.deepcopy(obj)
    labels = (obj.get("metadata") or {}).get("labels") or {}
    out.setdefault("metadata", {})["labels"] = {str(k): str(v) for k, v in labels.items()}
    return out


def identity_change(before: dict[str, Any], after: Any) -> str | None:
    """Why a policy's mutation of a Kubernetes object is refused, or None."""
    if not isinstance(after, dict):
        return "mutate() needs an object"
    for key in ("apiVersion", "kind"):
        if after.get(key) != before.get(key):
            return f"mutate() may not change {key}"
    old, new = before.get("metadata") or {}, after.get("metadata") or {}
    for key in ("name", "namespace", "uid"):
        if old.get(key) != new.get(key):
            return f"mutate() may not change metadata.{key}"
    return None

"""Policies and resources held in memory, for running policies with no server.

``kled policy test`` evaluates a policy file against a resource file on a laptop or in
a CI pipeline; it needs the engine's seams filled from files rather than a database.
These are those fillings (the tests use them too): a fixed list of Policy documents,
and a read-only set of resources answering ``get``/``list`` like the server's store.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from kled.admission.policy.matching import Selector, labels_of
from kled.resources.registry import Scope, kind_info


class StaticPolicySource:
    """The same Policy documents for every team (each is filtered by its own team)."""

    def __init__(self, docs: Iterable[dict[str, Any]] = ()) -> None:
        self.docs = list(docs)

    async def policies(self, team: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if (d.get("metadata") or {}).get("team") in (None, team)]


class MemoryResources:
    """Resources by (kind, team, environment, name), read-only to policies."""

    def __init__(self, docs: Iterable[dict[str, Any]] = ()) -> None:
        self._docs: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        for doc in docs:
            self.put(doc)

    def put(self, doc: dict[str, Any]) -> None:
        meta = doc.get("metadata") or {}
        kind = str(doc.get("kind"))
        environment = meta.get("environment")
        if kind_info(kind).scope is not Scope.ENVIRONMENT:
            environment = None
        key = (kind, str(meta.get("team") or ""), environment, str(meta.get("name")))
        self._docs[key] = copy.deepcopy(doc)

    def delete(self, doc: dict[str, Any]) -> None:
        meta = doc.get("metadata") or {}
        self._docs = {
            k: v
            for k, v in self._docs.items()
            if not (
                k[0] == doc.get("kind") and k[1] == meta.get("team") and k[3] == meta.get("name")
            )
        }

    async def get(
        self, kind: str, team: str, environment: str | None, name: str
    ) -> dict[str, Any] | None:
        found = self._docs.get((kind, team, environment, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(
        self, kind: str, team: str, environment: str | None, label_selector: str | None
    ) -> list[dict[str, Any]]:
        selector = Selector.parse(label_selector)
        return [
            copy.deepcopy(doc)
            for (k, t, e, _), doc in sorted(self._docs.items(), key=lambda i: str(i[0]))
            if k == kind
            and t == team
            and (environment is None or e == environment)
            and selector.matches(labels_of(doc))
        ]

"""The objects of one Kled Cluster in Kled's store.

Each Kubernetes object is one ``KubeObject`` document of the team, in the environment
column named after the cluster, so that a cluster's objects are one range of the store
(listed, watched and deleted together) and every write is a store transaction with its
event: ``resourceVersion`` is the store's revision, a watch is the store's event log, and a
compacted revision is ``410 Expired``. The store's name of a document is a digest of
(group, kind, namespace, name), since Kubernetes names outgrow the store's 63 characters;
the object's own identity is in ``spec.object``. Labels are the document's labels, so the
store (and its watch cache) applies label selectors.

A Secret's ``data`` (and its annotations, where ``kubectl apply`` keeps a copy of the
manifest) is sealed with the store's key before it is written, as a Kled Secret's is:
the database, the event log and the watch cache hold one encrypted blob
(``spec.object.encryptedData``), and only these reads open it — after the route has
checked that the caller may read secrets.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kled.kube.served import Served, by_kind
from kled.resources.registry import API_VERSION
from kled.store.cipher import ENCRYPTED_FIELD, SecretCipher
from kled.store.objects import Docs, Key, Store

WRAPPER = "KubeObject"
WATCH_POLL_SECONDS = 1.0
#: what the store owns of an object's metadata
SYSTEM = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")

Matcher = Callable[[dict[str, Any]], bool]


def store_name(served: Served, namespace: str, name: str) -> str:
    ident = f"{served.group}/{served.kind}/{namespace}/{name}"
    return "k" + hashlib.sha256(ident.encode()).hexdigest()[:40]


def served_of(stored: dict[str, Any]) -> Served | None:
    obj = (stored.get("spec") or {}).get("object") or {}
    return by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))


def sealed(served: Served, stored: dict[str, Any], cipher: SecretCipher) -> dict[str, Any]:
    """The document as written: a Secret's ``data`` and its annotations (``kubectl
    apply`` copies the whole manifest, values included, into one) in one encrypted blob."""
    if served.kind != "Secret":
        return stored
    # a client's own ``encryptedData`` is not a Kubernetes field: it is dropped, never
    # taken for a sealed blob (which would leave ``data`` in clear)
    obj = {k: v for k, v in stored["spec"]["object"].items() if k != ENCRYPTED_FIELD}
    meta = dict(obj.get("metadata") or {})
    secret = {"data": obj.pop("data", None) or {}, "annotations": meta.pop("annotations", {})}
    obj["metadata"] = meta
    blob = cipher.seal({"data": secret})[ENCRYPTED_FIELD]
    out = dict(stored)
    out["spec"] = {**stored["spec"], "object": {**obj, ENCRYPTED_FIELD: blob}}
    return out


def unwrap(stored: dict[str, Any], cipher: SecretCipher | None = None) -> dict[str, Any]:
    """The Kubernetes object a stored document holds, with the store's metadata; a Secret's
    values opened with ``cipher`` (without one they stay sealed)."""
    obj = copy.deepcopy((stored.get("spec") or {}).get("object") or {})
    if cipher is not None and ENCRYPTED_FIELD in obj:
        secret = cipher.open({ENCRYPTED_FIELD: obj.pop(ENCRYPTED_FIELD)})["data"]
        if secret.get("data"):
            obj["data"] = secret["data"]
        if secret.get("annotations"):
            obj.setdefault("metadata", {})["annotations"] = secret["annotations"]
    meta = obj.setdefault("metadata", {})
    outer = stored["metadata"]
    for field in SYSTEM:
        if outer.get(field) is not None:
            meta[field] = outer[field]
    meta["resourceVersion"] = str(meta.get("resourceVersion", ""))
    status = stored.get("status")
    if status:
        obj["status"] = copy.deepcopy(status)
    return obj


@dataclass
class Change:
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]
    revision: int


class ClusterObjects:
    """Reads and writes of one cluster's objects; callers check access and admission."""

    def __init__(self, store: Store, team: str, cluster: str) -> None:
        self.store = store
        self.team = team
        self.cluster = cluster
        self.cipher = store.cipher

    def _open(self, stored: dict[str, Any]) -> dict[str, Any]:
        return unwrap(stored, self.cipher)

    def key(self, served: Served, namespace: str, name: str) -> Key:
        return Key(WRAPPER, self.team, self.cluster, store_name(served, namespace, name))

    def wrap(self, served: Served, obj: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(obj)
        body.pop("status", None)
        meta = body.setdefault("metadata", {})
        for field in (*SYSTEM, "managedFields", "selfLink"):
            meta.pop(field, None)
        namespace = str(meta.get("namespace") or "") if served.namespaced else ""
        return {
            "apiVersion": API_VERSION,
            "kind": WRAPPER,
            "metadata": {
                "name": store_name(served, namespace, str(meta["name"])),
                "team": self.team,
                "environment": self.cluster,
                "labels": dict(meta.get("labels") or {}),
            },
            "spec": {"object": body},
        }

    async def find(self, served: Served, namespace: str, name: str) -> dict[str, Any] | None:
        stored = await self.store.find(self.key(served, namespace, name))
        return None if stored is None else self._open(stored)

    async def list(
        self,
        served: Served,
        namespace: str | None,
        *,
        labels: Callable[[dict[str, str]], bool] | None = None,
        fields: Matcher | None = None,
    ) -> tuple[Docs, int]:
        page = await self.store.list(WRAPPER, self.team, self.cluster, matches=labels)
        items: Docs = []
        for stored in page.items:
            if served_of(stored) is not served:
                continue
            obj = self._open(stored)
            if namespace and obj["metadata"].get("namespace") != namespace:
                continue
            if fields is not None and not fields(obj):
                continue
            items.append(obj)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, page.revision

    async def everything(self) -> Docs:
        return (await self.store.list(WRAPPER, self.team, self.cluster)).items

    async def create(
        self, served: Served, obj: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        stored = sealed(served, self.wrap(served, obj), self.cipher)
        if obj.get("status"):
            stored["status"] = copy.deepcopy(obj["status"])
        created = await self.store.create(stored, dry_run=dry_run)
        if obj.get("status"):
            created["status"] = copy.deepcopy(obj["status"])
        return self._open(created)

    async def update(
        self,
        served: Served,
        obj: dict[str, Any],
        *,
        expected_version: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        written = await self.store.update(
            sealed(served, self.wrap(served, obj), self.cipher),
            expected_version=expected_version or None,
            dry_run=dry_run,
        )
        return self._open(written.object)

    async def update_status(
        self,
        served: Served,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        expected_version: str | None = None,
    ) -> dict[str, Any]:
        written = await self.store.update_status(
            self.key(served, namespace, name), status, expected_version=expected_version or None
        )
        return self._open(written)

    async def delete(
        self, served: Served, namespace: str, name: str, *, dry_run: bool = False
    ) -> dict[str, Any]:
        written = await self.store.delete(self.key(served, namespace, name), dry_run=dry_run)
        return self._open(written.object)

    async def changes(
        self, since: int, served: Served | tuple[Served, ...]
    ) -> AsyncIterator[Change]:
        """Every change to ``served`` objects (of one kind or several) of this cluster
        after revision ``since``, and a ``BOOKMARK`` of how far the log was read when a
        read found none (the caller may send it while idle)."""
        async for found, last in self.batches(since, served):
            for change in found:
                yield change
            if not found:
                yield Change("BOOKMARK", {}, last)

    async def batches(
        self, since: int, served: Served | tuple[Served, ...]
    ) -> AsyncIterator[tuple[builtins.list[Change], int]]:
        """The same changes a read of the event log at a time, each with how far that read
        went: a burst of changes is one batch (a computed view is made again once for it)."""
        kinds = served if isinstance(served, tuple) else (served,)
        last = since
        while True:
            batch = await self.store.events_after(last)
            found: builtins.list[Change] = []
            for event in batch:
                last = event.seq
                if (event.kind, event.team, event.environment) != (
                    WRAPPER,
                    self.team,
                    self.cluster,
                ):
                    continue
                if served_of(event.object) not in kinds:
                    continue
                found.append(Change(event.type, self._open(event.object), event.seq))
            yield found, last
            if len(batch) < 500:
                await self.store.wait_for_change(WATCH_POLL_SECONDS)

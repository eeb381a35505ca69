"""The resources host networks are built from, kept in memory from the event log.

Host networks depend on a few fields of six kinds: a team's block and zone, a node's
addresses in each team, an app's ports, service IP, pod IPs and running (and ready) replicas, a
device's mesh IP, an intercept's spec. Most writes touch none of them: every heartbeat
rewrites ``Node.status`` (its time, its gateways' handshakes), and a replica's restart
count changes an App's status. ``NetworkDocs`` keeps the latest document of each resource
of those kinds and tells, for each event, whether a field that matters changed, so the
host networks are recomputed only then, from memory, without reading the store again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kled.resources import clusterservices
from kled.store.objects import Event

KINDS = ("Team", "Node", "App", "ManagedService", "Device", "Intercept")

Doc = dict[str, Any]
_Id = tuple[str, str, str]


def _ident(doc: Doc) -> _Id:
    meta = doc.get("metadata") or {}
    return (str(meta.get("team") or ""), str(meta.get("environment") or ""), str(meta["name"]))


def relevant(kind: str, doc: Doc | None) -> Any:
    """The part of ``doc`` that host networks depend on (equal parts: nothing to do)."""
    if doc is None:
        return None
    meta = doc.get("metadata") or {}
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    deleting = bool(meta.get("deletionTimestamp"))
    if kind == "Team":
        return (deleting, status.get("block"), status.get("zone"))
    if kind == "Node":
        mesh = status.get("mesh") or {}
        addresses = sorted(
            (team, entry.get("ip"), entry.get("podSubnet")) for team, entry in mesh.items()
        )
        return (deleting, spec.get("address"), addresses)
    if kind in ("App", "ManagedService"):
        running = sorted(
            (int(r["index"]), r.get("state"), r.get("ready"))
            for r in status.get("replicas") or []
            if "index" in r
        )
        return (
            deleting,
            spec.get("ports"),
            status.get("ip"),
            status.get("podIPs"),
            running,
            "replicas" in status,
            status.get("app"),  # a ManagedService's server app and its ports
            status.get("ports"),
            # a Kled Cluster's Services leading to the app, exported or not, and its cluster
            (meta.get("annotations") or {}).get(clusterservices.ANNOTATION),
            (meta.get("labels") or {}).get(clusterservices.CLUSTER_LABEL),
        )
    if kind == "Device":
        return (deleting, status.get("ip"))
    return (deleting, spec)


class NetworkDocs:
    """The latest document of every resource of ``KINDS``."""

    def __init__(self) -> None:
        self._docs: dict[str, dict[_Id, Doc]] = {kind: {} for kind in KINDS}

    def load(self, kind: str, docs: Iterable[Doc]) -> None:
        self._docs[kind] = {_ident(d): d for d in docs}

    def items(self, *kinds: str) -> list[Doc]:
        return [doc for kind in kinds for doc in self._docs[kind].values()]

    def apply(self, event: Event) -> bool:
        """Take one event; True if a host network may have changed."""
        docs = self._docs.get(event.kind)
        if docs is None:
            return False
        ident = (event.team, event.environment, event.name)
        before = docs.get(ident)
        if event.type == "DELETED":
            docs.pop(ident, None)
            return before is not None
        docs[ident] = event.object
        return bool(relevant(event.kind, before) != relevant(event.kind, event.object))

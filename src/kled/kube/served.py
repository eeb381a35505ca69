"""The Kubernetes kinds a Kled Cluster serves: group, version, plural, scope, verbs.

Every part of ``kled.kube`` that turns a URL segment or a manifest's ``apiVersion``/``kind``
into a kind asks here, so discovery, OpenAPI, routing and storage cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True)
class Served:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()
    #: subresources served (``status``)
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def writable(self) -> bool:
        return "create" in self.verbs

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The API path of a collection or an object, without the cluster's prefix."""
        root = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        if self.namespaced and namespace:
            root += f"/namespaces/{namespace}"
        root += f"/{self.plural}"
        return f"{root}/{name}" if name else root


SERVED: tuple[Served, ...] = (
    Served("", "v1", "Namespace", "namespaces", False, ("ns",), subresources=("status",)),
    Served("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    Served("", "v1", "Secret", "secrets", True),
    Served("", "v1", "Service", "services", True, ("svc",), categories=("all",)),
    Served(
        "",
        "v1",
        "Pod",
        "pods",
        True,
        ("po",),
        categories=("all",),
        subresources=("status", "log"),
    ),
    Served("", "v1", "Event", "events", True, ("ev",)),
    Served("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",)),
    Served("", "v1", "Node", "nodes", False, ("no",), READ_VERBS),
    Served("", "v1", "ResourceQuota", "resourcequotas", True, ("quota",), READ_VERBS),
    Served("", "v1", "Endpoints", "endpoints", True, ("ep",), READ_VERBS),
    Served(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        True,
        ("deploy",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    Served(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        True,
        ("rs",),
        READ_VERBS,
        categories=("all",),
    ),
    Served("batch", "v1", "Job", "jobs", True, categories=("all",), subresources=("status",)),
    Served(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        True,
        ("cj",),
        categories=("all",),
        subresources=("status",),
    ),
    Served("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True, (), READ_VERBS),
)

GROUPS: dict[str, tuple[str, ...]] = {
    "apps": ("v1",),
    "batch": ("v1",),
    "discovery.k8s.io": ("v1",),
}


def by_path(group: str, version: str, plural: str) -> Served | None:
    for served in SERVED:
        if (served.group, served.version, served.plural) == (group, version, plural):
            return served
    return None


def by_kind(api_version: str, kind: str) -> Served | None:
    for served in SERVED:
        if (served.group_version, served.kind) == (api_version, kind):
            return served
    return None


def in_group_version(group: str, version: str) -> tuple[Served, ...]:
    return tuple(s for s in SERVED if (s.group, s.version) == (group, version))

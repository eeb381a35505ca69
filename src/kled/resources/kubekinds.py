"""The Kubernetes resources a Kled Cluster's objects can be, as policies name them.

A kPolicy may match a Kled Cluster's Kubernetes objects by resource (``deployments``, as
jsPolicy's ``resources`` does) or by kind (``Deployment``), with ``apiGroups``. Both the
Policy schema (which refuses a word that names nothing) and the engine (which matches a
write against these names) read this one table. It lists what Kled Clusters serve or are
about to serve; a word outside it is refused, so a typo is one line at apply time rather
than a policy that silently never runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KubeResource:
    group: str  # "" for the core group
    kind: str
    plural: str


KUBE_RESOURCES: tuple[KubeResource, ...] = (
    KubeResource("", "Namespace", "namespaces"),
    KubeResource("", "ConfigMap", "configmaps"),
    KubeResource("", "Secret", "secrets"),
    KubeResource("", "Service", "services"),
    KubeResource("", "Pod", "pods"),
    KubeResource("", "Event", "events"),
    KubeResource("", "ServiceAccount", "serviceaccounts"),
    KubeResource("", "Endpoints", "endpoints"),
    KubeResource("apps", "Deployment", "deployments"),
    KubeResource("apps", "ReplicaSet", "replicasets"),
    KubeResource("apps", "StatefulSet", "statefulsets"),
    KubeResource("apps", "DaemonSet", "daemonsets"),
    KubeResource("batch", "Job", "jobs"),
    KubeResource("batch", "CronJob", "cronjobs"),
)


def kube_resource(word: str) -> KubeResource | None:
    """The resource ``word`` names: its plural (``deployments``), its kind
    (``Deployment``) or its singular (``deployment``); a ``/subresource`` is ignored."""
    base = word.split("/")[0].lower()
    for found in KUBE_RESOURCES:
        if base in (found.plural, found.kind.lower()):
            return found
    return None


def kube_kind(word: str) -> KubeResource | None:
    """The resource of the kind ``word`` (``Deployment``), exactly as manifests spell it."""
    for found in KUBE_RESOURCES:
        if found.kind == word:
            return found
    return None

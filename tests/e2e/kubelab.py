"""Kled Clusters on a lab mesh: kubectl run on a lab host with a cluster's kubeconfig.

The kube e2e suites share this: a kubeconfig made by the cluster API's own token endpoint
(as ``kled cluster kubeconfig`` makes it), kubectl (the one on the PATH, or ``kubectl.1.NN``
beside it) run in lab host 2 so it reaches the control plane over the underlay, and the
pods as kubectl lists them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agentlab import Mesh

from kled.cli.clusters import render
from kubekit import Kubectl, kubectl_binary


def create_cluster(mesh: Mesh, name: str = "c1", users: dict[str, str] | None = None) -> None:
    """Team a's cluster ``name``, with ``users`` (name → role) made team members first."""
    for user in users or {}:
        mesh.api("POST", "/api/v1/teams/a/users", {"metadata": {"name": user}, "spec": {}})
    listed = [{"name": u, "role": role} for u, role in (users or {}).items()]
    cluster = {"kind": "Cluster", "metadata": {"name": name}, "spec": {"users": listed}}
    mesh.api("POST", "/api/v1/teams/a/clusters", cluster)


def cluster_kubectl(
    mesh: Mesh,
    home: Path,
    *,
    cluster: str = "c1",
    user: str | None = None,
    version: str | None = None,
    binary: Path | None = None,
) -> Kubectl:
    """kubectl (``version`` beside the PATH's, or ``binary``) as ``user`` of team a's
    ``cluster`` (its admin when None), with ``home`` its HOME and kubeconfig's folder.
    Skips the test when that kubectl is not installed."""
    binary = binary or kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version or ''} is not installed (on the PATH or beside it)")
    answer = mesh.api("POST", f"/k8s/a/{cluster}/kled/token", {"user": user} if user else {})
    home.mkdir(parents=True, exist_ok=True)
    config = home / "kubeconfig"
    config.write_text(
        render(answer["server"], "a", cluster, answer["user"], answer["token"],
               answer["certificateAuthorityData"])
    )  # fmt: skip
    return Kubectl(binary, config, home, netns=mesh.lab.host(2))


def pods(k: Kubectl, *selector: str) -> list[dict[str, Any]]:
    """The pods kubectl lists (``selector``: e.g. ``"-l", "app=web"``)."""
    items: list[dict[str, Any]] = json.loads(k.ok("get", "pods", *selector, "-o", "json"))["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    """Whether a pod's Ready condition is True."""
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

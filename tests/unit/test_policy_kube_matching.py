"""Which policies match a Kled Cluster's write, and as what they see it: Kubernetes
resources and kinds, API groups, namespaces and selectors read from a Policy, the schema
refusing a word that names nothing, and a mutation of the Kubernetes object kept in the
stored document."""

from __future__ import annotations

from typing import Any

import pytest

from kled.admission.kube import KubeRequest, identity_change, rewrapped
from kled.admission.policy.kubeview import kube_matches, sees_kube
from kled.admission.policy.matching import PolicyDef, read_policy
from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.errors import InvalidInput
from kled.resources.loading import load_documents


def policy(**spec: Any) -> PolicyDef:
    return read_policy(
        {"metadata": {"name": "p", "team": "acme"}, "spec": {"javascript": "1", **spec}}
    )


def deployment(namespace: str = "shop", labels: dict[str, str] | None = None) -> KubeRequest:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace, "labels": labels or {}},
    }
    return KubeRequest(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "dev",
        namespace,
        "web",
        obj,
        None,
        namespace_labels={"stage": "prod"} if namespace == "shop" else {},
    )


def configmap() -> KubeRequest:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"}}
    return KubeRequest("", "v1", "ConfigMap", "configmaps", "dev", "shop", "c", obj, None)


def write(kube: KubeRequest) -> AdmissionRequest:
    return AdmissionRequest(
        Operation.CREATE, "KubeObject", "k1", "acme", "dev", {}, None, UserInfo("ana"), kube=kube
    )


def test_resources_kinds_and_groups_pick_kubernetes_objects() -> None:
    by_plural = policy(resources=["deployments"])
    by_kind = policy(kinds=["Deployment"])
    core_only = policy(resources=["deployments", "configmaps"], apiGroups=[""])
    for p in (by_plural, by_kind):
        assert kube_matches(p, deployment()) and not kube_matches(p, configmap())
        assert not p.applies_to_kind("App")  # Kled's own Apps are not Deployments
    assert not kube_matches(core_only, deployment()) and kube_matches(core_only, configmap())
    everything = policy()
    assert kube_matches(everything, deployment()) and everything.applies_to_kind("App")
    # Kled kinds and Kubernetes resources side by side
    both = policy(resources=["apps", "pods"])
    assert both.applies_to_kind("App") and both.kube_resources == {"pods"}


def test_namespaces_and_selectors_are_the_kubernetes_ones() -> None:
    in_shop = policy(kinds=["Deployment"], namespaces=["sh*"])
    assert kube_matches(in_shop, deployment()) and not kube_matches(in_shop, deployment("other"))
    labelled = policy(kinds=["Deployment"], objectSelector={"matchLabels": {"tier": "web"}})
    assert kube_matches(labelled, deployment(labels={"tier": "web"}))
    assert not kube_matches(labelled, deployment())
    prod = policy(kinds=["Deployment"], namespaceSelector={"matchLabels": {"stage": "prod"}})
    assert kube_matches(prod, deployment()) and not kube_matches(prod, deployment("other"))
    namespace = KubeRequest(
        "", "v1", "Namespace", "namespaces", "dev", "", "shop", {}, None,
        namespace_labels={"stage": "dev"},
    )  # fmt: skip
    prod_namespaces = policy(
        resources=["namespaces"], namespaceSelector={"matchLabels": {"stage": "prod"}}
    )
    assert not kube_matches(prod_namespaces, namespace)  # a Namespace by its own labels
    namespace.namespace_labels = {"stage": "prod"}
    assert kube_matches(prod_namespaces, namespace)


def test_a_policy_naming_kubeobject_sees_the_stored_document() -> None:
    req = write(deployment())
    assert sees_kube(policy(kinds=["Deployment"]), req)
    assert sees_kube(policy(), req)
    assert not sees_kube(policy(resources=["KubeObject"]), req)


def test_the_schema_refuses_words_that_name_nothing() -> None:
    def load(spec: str) -> None:
        text = (
            f"kind: Policy\nmetadata: {{name: p, team: acme}}\nspec: {{javascript: '1', {spec}}}\n"
        )
        load_documents(text, "p.yaml")

    load("resources: [deployments, apps]")
    load("kinds: [Deployment, Pod], apiGroups: ['', apps], namespaces: [prod]")
    with pytest.raises(InvalidInput, match=r"spec.kinds\[0\].*unknown Kubernetes kind 'Deploy'"):
        load("kinds: [Deploy]")
    with pytest.raises(InvalidInput, match=r"spec.resources\[0\].*unknown resource type 'deploys'"):
        load("resources: [deploys]")


def test_a_mutation_keeps_identity_and_the_stored_labels() -> None:
    before = deployment().object
    assert before is not None
    after = {**before, "metadata": {**before["metadata"], "labels": {"a": "b"}}}
    assert identity_change(before, after) is None
    moved = {**before, "metadata": {**before["metadata"], "namespace": "x"}}
    assert identity_change(before, moved) == "mutate() may not change metadata.namespace"
    wrapper = {"kind": "KubeObject", "metadata": {"name": "k1", "labels": {}}, "spec": {}}
    stored = rewrapped(wrapper, after)
    assert stored["metadata"]["labels"] == {"a": "b"} and stored["spec"]["object"] == after

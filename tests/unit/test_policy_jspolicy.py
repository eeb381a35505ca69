"""jsPolicy manifests, as jsPolicy's documentation writes them, load as Kled Policies and
run unchanged in the engine (real QuickJS, real worker processes)."""

# The manifests below are quoted verbatim, long lines included.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import kled.admission.policy  # noqa: F401  (registers the JsPolicy translator)
from kled.admission.policy import InMemoryViolationSink, PolicyEngine, translate_jspolicy
from kled.admission.policy.local import MemoryResources, StaticPolicySource
from kled.admission.policy.pool import WorkerPool
from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.errors import InvalidInput
from kled.resources.loading import load_documents

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEAM = "acme"

# From jsPolicy's docs (quickstart, functions/deny, functions/allow, functions/mutate,
# functions/warn, functions/exit, functions/list, examples/by-feature/*), verbatim.
QUICKSTART = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "deny-default-namespace.company.tld"
spec:
  operations: ["CREATE"]
  resources: ["*"]
  scope: Namespaced
  javascript: |
    if (request.namespace === "default") {
      deny("Creation of resources within the default namespace is not allowed!");
    }
"""

DENY = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "deny.resource.example"
spec:
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    // deny kube-system namespace
    if (request.namespace === "kube-system") {
      deny("No new pod allowed in kube-system");
    }

    // deny default namespace with reason and code
    if (request.namespace === "default") {
      deny("No new pod allowed in default", "BadRequest", 400);
    }
"""

ALLOW = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "allow.resource.example"
spec:
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    if (request.namespace !== "default") {
      allow(); // allow request and exit
    }

    deny("Do not create pods in the default namespace");
"""

MUTATE = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "set-annotation.example.com"
spec:
  type: Mutating
  operations: ["CREATE", "UPDATE"]
  resources: ["pods"]
  javascript: |
    // This policy will set a required annotation on a pod during CREATE or UPDATE
    if (request.object.metadata.annotations?.["required-annotation"] !== "is-required") {
      // set annotation required-annotation=is-required
      request.object.metadata.annotations = {...request.object.metadata.annotations, 'required-annotation': 'is-required'};

      // tell jspolicy to calc the patch and exit
      mutate(request.object);
    }

    // if execution reaches here, request is allowed and nothing happens
"""

WARN = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "warn.example.com"
spec:
  operations: ["CREATE", "UPDATE"]
  resources: ["configmaps"]
  javascript: |
    warn(`Hello This Is A Warning for ConfigMap ${request.object.metadata.namespace}/${request.object.metadata.name}`);

    // print another warning to the client
    warn("Hello This Is Another Warning");
"""

EXIT = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "env.example.com"
spec:
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    exit();

    // this is never reached
    deny("I'm not executed");
"""

LIST = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "list.resource.example"
spec:
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    const pods = list("Pod", "v1", {
      namespace: request.namespace
    })
    if (pods.length >= 10) {
      deny("No more pods allowed in namespace " + request.namespace);
    }

    // list all pods in cluster with label selector from cache
    const myLabelPods = list("Pod", "v1", {
      labelSelector: "my-label=my-value"
    })
    if (myLabelPods.length > 0) {
      print("Found pod with my-label=my-value");
    }

    // deny if there is an ubuntu pod in the namespace
    pods.forEach(pod => pod.metadata.name === "ubuntu" && deny("there is an ubuntu pod in the namespace"));
"""

VIOLATION_WARN = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "violation-policy.resource.example"
spec:
  violationPolicy: Warn
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    if (request.namespace === "default") {
      deny("Do not create pods in the default namespace");
    }
"""

REGEX = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "pod-policy.example.com"
spec:
  operations: ["CREATE"]
  resources: ["pods"]
  apiVersions: ["*"]
  apiGroups: ["*"]
  javascript: |
    // all javascript regexes work here
    const re = /^ubuntu$/;
    if (request.object.metadata.name.match(re)) {
      deny("name ubuntu not allowed");
    }
"""

NAMESPACE_SELECTOR = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "namespace-selector.resource.example"
spec:
  namespaceSelector:
    matchLabels:
      test: test
  operations: ["CREATE"]
  resources: ["pods"]
  javascript: |
    deny("no pods are allowed in this namespace");
"""


def load(text: str) -> dict[str, Any]:
    [doc] = load_documents(text, "jspolicy.yaml")
    doc["metadata"].update(team=TEAM, uid="uid-" + doc["metadata"]["name"], resourceVersion="1")
    return doc


def app(name: str = "web", env: str = "dev") -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": TEAM, "environment": env, "labels": {}},
        "spec": {"command": ["sleep", "1"]},
    }


def create(obj: dict[str, Any]) -> AdmissionRequest:
    meta = obj["metadata"]
    return AdmissionRequest(
        Operation.CREATE,
        obj["kind"],
        meta["name"],
        TEAM,
        meta.get("environment"),
        obj,
        None,
        UserInfo("alice", TEAM, "member"),
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[WorkerPool]:
    shared = WorkerPool(size=2)
    await shared.start()
    yield shared
    await shared.close()


def engine(pool: WorkerPool, *texts: str, resources: MemoryResources | None = None) -> PolicyEngine:
    source = StaticPolicySource([load(t) for t in texts])
    return PolicyEngine(source, resources or MemoryResources(), InMemoryViolationSink(), pool=pool)


async def test_translation_maps_the_manifest() -> None:
    doc = load(NAMESPACE_SELECTOR)
    assert doc["apiVersion"] == "kled.io/v1" and doc["kind"] == "Policy"
    assert doc["metadata"]["name"] == "namespace-selector-resource-example"
    # apps for Kled's Apps, pods for a Kled Cluster's Pods
    assert doc["spec"]["resources"] == ["apps", "pods"]
    assert doc["spec"]["namespaceSelector"]["matchLabels"] == {"test": "test"}
    quick = load(QUICKSTART)["spec"]["resources"]
    assert {"apps", "configs", "secrets", "intercepts"} <= set(quick)
    assert load(VIOLATION_WARN)["spec"]["violationPolicy"] == "Warn"


async def test_translation_refuses_what_kled_cannot_run() -> None:
    with pytest.raises(InvalidInput, match="none of the resources"):
        translate_jspolicy(
            {"metadata": {"name": "x"}, "spec": {"resources": ["ingresses"], "javascript": "1"}}
        )
    with pytest.raises(InvalidInput, match="inline"):
        translate_jspolicy({"metadata": {"name": "x"}, "spec": {"resources": ["pods"]}})
    partly = translate_jspolicy(
        {"metadata": {"name": "x"}, "spec": {"resources": ["pods", "ingresses"], "javascript": "1"}}
    )
    assert partly["spec"]["resources"] == ["apps", "pods"]
    assert partly["metadata"]["annotations"]["kled.io/jspolicy-unmapped-resources"] == "ingresses"


async def test_quickstart_denies_the_default_environment(pool: WorkerPool) -> None:
    e = engine(pool, QUICKSTART)
    denied = await e.validating_hook(create(app(env="default")))
    assert not denied.allowed
    assert denied.message == "Creation of resources within the default namespace is not allowed!"
    assert (await e.validating_hook(create(app(env="dev")))).allowed


async def test_deny_allow_exit_regex_examples(pool: WorkerPool) -> None:
    e = engine(pool, DENY)
    result = await e.validating_hook(create(app(env="default")))
    assert (result.allowed, result.code, result.reason) == (False, 400, "BadRequest")
    assert (await engine(pool, DENY).validating_hook(create(app(env="kube-system")))).message == (
        "No new pod allowed in kube-system"
    )
    allow = engine(pool, ALLOW)
    assert (await allow.validating_hook(create(app(env="dev")))).allowed
    assert not (await allow.validating_hook(create(app(env="default")))).allowed
    assert (await engine(pool, EXIT).validating_hook(create(app(env="default")))).allowed
    regex = engine(pool, REGEX)
    assert not (await regex.validating_hook(create(app("ubuntu")))).allowed
    assert (await regex.validating_hook(create(app("ubuntu2")))).allowed


async def test_mutate_example_sets_the_annotation(pool: WorkerPool) -> None:
    result = await engine(pool, MUTATE).mutating_hook(create(app()))
    assert result.object is not None
    assert result.object["metadata"]["annotations"] == {"required-annotation": "is-required"}
    assert "namespace" not in result.object["metadata"]


async def test_warn_example_reads_the_namespace_as_environment(pool: WorkerPool) -> None:
    config = {
        "apiVersion": "kled.io/v1",
        "kind": "Config",
        "metadata": {"name": "my-configmap", "team": TEAM, "environment": "default"},
        "data": {"a": "b"},
    }
    result = await engine(pool, WARN).validating_hook(create(config))
    assert result.allowed
    assert result.warnings == [
        "[warn-example-com] Hello This Is A Warning for ConfigMap default/my-configmap",
        "[warn-example-com] Hello This Is Another Warning",
    ]


async def test_list_example_counts_apps_as_pods(pool: WorkerPool) -> None:
    resources = MemoryResources([app("ubuntu", env="dev")])
    e = engine(pool, LIST, resources=resources)
    denied = await e.validating_hook(create(app("new", env="dev")))
    assert denied.message == "there is an ubuntu pod in the namespace"
    assert (await e.validating_hook(create(app("new", env="prod")))).allowed
    for i in range(10):
        resources.put(app(f"p{i}", env="crowded"))
    crowded = await e.validating_hook(create(app("one-more", env="crowded")))
    assert crowded.message == "No more pods allowed in namespace crowded"


async def test_violation_policy_and_namespace_selector_examples(pool: WorkerPool) -> None:
    warned = await engine(pool, VIOLATION_WARN).validating_hook(create(app(env="default")))
    assert warned.allowed
    assert warned.warnings == [
        "[violation-policy-resource-example] Do not create pods in the default namespace"
    ]
    resources = MemoryResources(
        [
            {
                "kind": "Environment",
                "metadata": {"name": "t", "team": TEAM, "labels": {"test": "test"}},
            }
        ]
    )
    e = engine(pool, NAMESPACE_SELECTOR, resources=resources)
    assert not (await e.validating_hook(create(app(env="t")))).allowed
    assert (await e.validating_hook(create(app(env="dev")))).allowed

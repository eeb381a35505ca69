"""jsPolicy's ``JsPolicy`` manifests, read as Kled ``Policy`` resources.

So that a jsPolicy user's policies run unchanged, a ``policy.jspolicy.com/v1beta1``
``JsPolicy`` is translated on load: its trigger settings map onto the Policy's, and the
Kubernetes resources it names onto Kled's kinds (pods and deployments are apps,
namespaces are environments, configmaps are configs) and kept as Kubernetes resources too,
so the policy also applies to the objects of the team's Kled Clusters (there the script
sees the Kubernetes object itself). The script itself is not touched;
``get``/``list`` in the engine understand the Kubernetes kind names too. Team and
environment come from the CLI's context at apply time and may be absent here.
"""

from __future__ import annotations

import logging
from typing import Any

from kled.admission.policy.matching import K8S_KINDS, kled_kind
from kled.errors import InvalidInput
from kled.resources.kubekinds import kube_resource
from kled.resources.registry import API_VERSION, KINDS, Scope

log = logging.getLogger(__name__)

JSPOLICY_API_VERSION = "policy.jspolicy.com/v1beta1"
JSPOLICY_KIND = "JsPolicy"
UNMAPPED_ANNOTATION = "kled.io/jspolicy-unmapped-resources"

#: Kubernetes resources with a Kled kind, by plural (jsPolicy names resources by plural).
_RESOURCES = {
    "pods": "apps",
    "deployments": "apps",
    "statefulsets": "apps",
    "daemonsets": "apps",
    "replicasets": "apps",
    "namespaces": "environments",
    "configmaps": "configs",
    "secrets": "secrets",
}
_CAPITALISED = {
    "violationPolicy": ("Deny", "Warn", "Dry"),
    "failurePolicy": ("Fail", "Ignore"),
    "auditPolicy": ("Log", "Skip"),
    "type": ("Validating", "Mutating", "Controller"),
}
#: jsPolicy settings that mean nothing in Kled (admission is not a webhook here).
_DROPPED = ("apiVersions", "matchPolicy", "reinvocationPolicy", "auditLogSize")


def _resources(words: list[Any], scope: str) -> tuple[list[str], list[str]]:
    """Kled plurals for jsPolicy's resources, and the names with no Kled equivalent."""
    mapped: list[str] = []
    unmapped: list[str] = []
    for raw in words:
        word = str(raw).split("/")[0]  # "pods/status" and such: the resource itself
        if word == "*":
            wanted = {"Namespaced": Scope.ENVIRONMENT, "Cluster": Scope.TEAM}.get(scope)
            if wanted is None:
                return ["*"], unmapped
            plurals = [k.plural for k in KINDS if k.scope is wanted]
        elif word.lower() in _RESOURCES:
            # the Kled kind and the Kubernetes resource of a Kled Cluster's objects
            plurals = [_RESOURCES[word.lower()], word.lower()]
        elif kube_resource(word) is not None:
            plurals = [word.lower()]
        elif kled_kind(word) is not None and word.lower().rstrip("s") not in K8S_KINDS:
            plurals = [word]
        else:
            unmapped.append(word)
            continue
        for plural in plurals:
            if plural not in mapped:
                mapped.append(plural)
    return mapped, unmapped


def translate_jspolicy(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``JsPolicy`` document as a Kled ``Policy`` document; raises InvalidInput."""
    spec = dict(doc.get("spec") or {})
    meta = dict(doc.get("metadata") or {})
    if not meta.get("name"):
        raise InvalidInput("a JsPolicy needs a name", field="metadata.name")
    javascript = spec.get("javascript")
    if not isinstance(javascript, str) or not javascript.strip():
        raise InvalidInput(
            "Kled runs inline policies only: set spec.javascript (JsPolicyBundle and "
            "dependencies are not supported)",
            field="spec.javascript",
        )
    scope = str(spec.get("scope") or "*")
    resources, unmapped = _resources(list(spec.get("resources") or ["*"]), scope)
    if not resources:
        raise InvalidInput(
            f"none of the resources {unmapped} has a Kled equivalent "
            f"(known: {', '.join(sorted(_RESOURCES))} and Kled's own kinds)",
            field="spec.resources",
        )
    out: dict[str, Any] = {
        "type": "Validating",
        "operations": [str(o).upper() for o in spec.get("operations") or ["CREATE", "UPDATE"]],
        "resources": resources,
        "javascript": javascript,
    }
    if "*" in out["operations"]:
        out["operations"] = ["CREATE", "UPDATE", "DELETE"]
    out["operations"] = [o for o in out["operations"] if o != "CONNECT"] or ["CREATE"]
    for name, choices in _CAPITALISED.items():
        value = spec.get(name)
        if value in (None, ""):
            continue
        match = [c for c in choices if c.lower() == str(value).lower()]
        if not match:
            raise InvalidInput(f"must be one of {', '.join(choices)}", field=f"spec.{name}")
        out[name] = match[0]
    if spec.get("apiGroups"):  # they narrow the matching of Kled Clusters' objects
        out["apiGroups"] = [str(g) for g in spec["apiGroups"]]
    for name in ("objectSelector", "namespaceSelector"):
        selector = spec.get(name)
        if selector:  # jsPolicy writes {} for "everything"
            out[name] = selector
    if spec.get("timeoutSeconds") is not None:
        out["timeoutSeconds"] = spec["timeoutSeconds"]
    if spec.get("dependencies"):
        raise InvalidInput("npm dependencies are not supported", field="spec.dependencies")
    ignored = [k for k in _DROPPED if k in spec]
    if ignored:
        log.info("JsPolicy %s: ignoring %s", meta.get("name"), ", ".join(ignored))
    annotations = dict(meta.get("annotations") or {})
    if unmapped:
        annotations[UNMAPPED_ANNOTATION] = ",".join(unmapped)
    metadata: dict[str, Any] = {"name": _kled_name(str(meta["name"]))}
    for key in ("team", "labels"):
        if meta.get(key):
            metadata[key] = meta[key]
    if annotations:
        metadata["annotations"] = annotations
    if metadata["name"] != meta["name"]:
        metadata.setdefault("annotations", {})["kled.io/jspolicy-name"] = meta["name"]
    return {"apiVersion": API_VERSION, "kind": "Policy", "metadata": metadata, "spec": out}


def _kled_name(name: str) -> str:
    """jsPolicy names look like domains (``deny-default.company.tld``); Kled names are DNS
    labels, so the dots become dashes."""
    return name.lower().replace(".", "-")


def register() -> None:
    """Teach ``kled.resources.loading`` to read JsPolicy manifests, when it can."""
    try:
        from kled.resources import loading
    except ImportError:
        return
    if hasattr(loading, "register_translator"):
        loading.register_translator(JSPOLICY_API_VERSION, JSPOLICY_KIND, translate_jspolicy)

"""Which policies apply to a request: a Policy document read into a ``PolicyDef``, and
the matching rules of jsPolicy (operations, resources, environments, object and
namespace selectors) with an environment playing the namespace's part.

Label selectors come in two forms, as in Kubernetes: the structured one of a policy
(``{matchLabels, matchExpressions}``) and the string one of ``list()``
(``tier=web,env!=prod,team in (a,b),!legacy``); both are read here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kled.errors import InvalidInput
from kled.resources.kubekinds import kube_kind, kube_resource
from kled.resources.registry import KINDS, resolve_kind

OPERATIONS = ("CREATE", "UPDATE", "DELETE")
TYPES = ("Validating", "Mutating", "Controller")
_CHOICES = {
    "failurePolicy": ("Fail", "Ignore"),
    "violationPolicy": ("Deny", "Warn", "Dry"),
    "auditPolicy": ("Log", "Skip"),
}


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return labels.get(self.key) not in self.values  # NotIn


@dataclass(frozen=True)
class Selector:
    """Every requirement must hold; an empty selector selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        found = labels or {}
        return all(r.holds(found) for r in self.requirements)

    @classmethod
    def from_spec(cls, spec: Any, where: str) -> Selector | None:
        """``{matchLabels, matchExpressions}`` → Selector; None when absent."""
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise InvalidInput("must be a label selector", field=where)
        requirements = [
            Requirement(str(k), "In", (str(v),)) for k, v in (spec.get("matchLabels") or {}).items()
        ]
        for index, item in enumerate(spec.get("matchExpressions") or []):
            operator = item.get("operator") if isinstance(item, Mapping) else None
            if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise InvalidInput(
                    "operator must be In, NotIn, Exists or DoesNotExist",
                    field=f"{where}.matchExpressions[{index}].operator",
                )
            values = tuple(str(v) for v in item.get("values") or [])
            requirements.append(Requirement(str(item.get("key", "")), operator, values))
        return cls(tuple(requirements))

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        """The string form: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
        ``a`` (exists) and ``!a`` (does not exist), joined by commas."""
        if not text or not text.strip():
            return cls()
        requirements = []
        for term in _split_terms(text):
            found = _SET_TERM.fullmatch(term)
            if found:
                key, op, values = found.groups()
                vals = tuple(v.strip() for v in values.split(",") if v.strip())
                requirements.append(Requirement(key, "In" if op == "in" else "NotIn", vals))
                continue
            found = _EQ_TERM.fullmatch(term)
            if found:
                key, op, value = found.groups()
                requirements.append(Requirement(key, "NotIn" if op == "!=" else "In", (value,)))
                continue
            found = _KEY_TERM.fullmatch(term)
            if found:
                bang, key = found.groups()
                requirements.append(Requirement(key, "DoesNotExist" if bang else "Exists"))
                continue
            raise InvalidInput(f"cannot read label selector term {term!r}", field="labelSelector")
        return cls(tuple(requirements))


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_TERM = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*")
_EQ_TERM = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)\s*")
_KEY_TERM = re.compile(rf"\s*(!?)\s*({_KEY})\s*")


def _split_terms(text: str) -> list[str]:
    """Split on the commas that are not inside ``in (...)``."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t for t in terms if t.strip()]


@dataclass(frozen=True)
class PolicyDef:
    """A Policy document read once; what the engine needs to match and run it."""

    name: str
    team: str
    uid: str
    resource_version: str
    type: str
    operations: frozenset[str]
    kinds: frozenset[str] | None  # None: every kind
    environments: tuple[str, ...]  # empty: every environment
    object_selector: Selector | None
    namespace_selector: Selector | None
    javascript: str
    timeout_seconds: int
    failure_policy: str
    violation_policy: str
    audit_policy: str
    priority: int
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Kubernetes resources (plurals) of Kled Clusters matched; None: every one
    kube_resources: frozenset[str] | None = frozenset()
    api_groups: frozenset[str] | None = None  # None: every group
    namespaces: tuple[str, ...] = ()  # Kubernetes namespaces (globs); empty: all

    @cached_property
    def key(self) -> str:
        """Identifies this version of the policy's code in the workers' caches (the
        script's digest too: documents without a uid or resourceVersion exist, in tests
        and in ``kled policy test``)."""
        digest = hashlib.sha256(self.javascript.encode()).hexdigest()[:16]
        return f"{self.team}/{self.name}/{self.uid}/{self.resource_version}/{digest}"

    @property
    def label(self) -> str:
        """How logs and metrics name the policy: ``team/name``."""
        return f"{self.team}/{self.name}"

    def applies_to_kind(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def applies_to_environment(self, environment: str | None) -> bool:
        if not self.environments or environment is None:
            return True
        return any(fnmatch.fnmatchcase(environment, p) for p in self.environments)


def _choice(spec: Mapping[str, Any], name: str, default: str) -> str:
    value = spec.get(name)
    if value in (None, ""):
        return default
    for choice in _CHOICES[name]:
        if str(value).lower() == choice.lower():
            return choice
    raise InvalidInput(f"must be one of {', '.join(_CHOICES[name])}", field=f"spec.{name}")


def read_policy(doc: Mapping[str, Any]) -> PolicyDef:
    """Read a Policy document, filling jsPolicy's defaults; raises InvalidInput."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidInput("must be a mapping", field="spec")
    kind_type = str(spec.get("type") or "Validating")
    match = [t for t in TYPES if t.lower() == kind_type.lower()]
    if not match:
        raise InvalidInput("must be Validating, Mutating or Controller", field="spec.type")
    operations = [str(o).upper() for o in spec.get("operations") or OPERATIONS]
    if "*" in operations:
        operations = list(OPERATIONS)
    for index, op in enumerate(operations):
        if op not in OPERATIONS:
            raise InvalidInput(
                "must be CREATE, UPDATE or DELETE", field=f"spec.operations[{index}]"
            )
    kube_kinds = [str(k) for k in spec.get("kinds") or []]
    words = [str(w) for w in spec.get("resources") or ([] if kube_kinds else ["*"])]
    kinds: set[str] | None = None if "*" in words else set()
    kube: set[str] | None = None if "*" in words or "*" in kube_kinds else set()
    for index, word in enumerate(words):
        if kinds is None or kube is None:
            break
        found = kube_resource(word)
        if found is not None:
            kube.add(found.plural)
        try:
            kinds.add(resolve_kind(word).kind)
        except InvalidInput as exc:
            if found is None:
                raise InvalidInput(exc.message, field=f"spec.resources[{index}]") from exc
    for index, word in enumerate(kube_kinds):
        resource = kube_kind(word)
        if resource is None and word != "*":
            raise InvalidInput(f"unknown Kubernetes kind {word!r}", field=f"spec.kinds[{index}]")
        if resource is not None and kube is not None:
            kube.add(resource.plural)
    groups = [str(g) for g in spec.get("apiGroups") or []]
    namespaces = [str(n) for n in spec.get("namespaces") or []]
    environments = tuple(str(e) for e in spec.get("environments") or [] if e != "*")
    if "*" in (spec.get("environments") or []):
        environments = ()
    javascript = spec.get("javascript")
    if not isinstance(javascript, str) or not javascript.strip():
        raise InvalidInput("must be a non-empty script", field="spec.javascript")
    timeout = spec.get("timeoutSeconds", 10)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 30:
        raise InvalidInput(
            "must be a whole number of seconds from 1 to 30", field="spec.timeoutSeconds"
        )
    priority = spec.get("priority")
    return PolicyDef(
        name=str(meta.get("name") or ""),
        team=str(meta.get("team") or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        type=match[0],
        operations=frozenset(operations),
        kinds=frozenset(kinds) if kinds is not None else None,
        environments=environments,
        object_selector=Selector.from_spec(spec.get("objectSelector"), "spec.objectSelector"),
        namespace_selector=Selector.from_spec(
            spec.get("namespaceSelector"), "spec.namespaceSelector"
        ),
        javascript=javascript,
        timeout_seconds=timeout,
        failure_policy=_choice(spec, "failurePolicy", "Fail"),
        violation_policy=_choice(spec, "violationPolicy", "Deny"),
        audit_policy=_choice(spec, "auditPolicy", "Log"),
        priority=int(priority) if isinstance(priority, int) else 0,
        labels=dict(meta.get("labels") or {}),
        kube_resources=frozenset(kube) if kube is not None else None,
        api_groups=None if not groups or "*" in groups else frozenset(groups),
        namespaces=() if "*" in namespaces else tuple(namespaces),
    )


def labels_of(doc: Mapping[str, Any] | None) -> dict[str, str]:
    if not doc:
        return {}
    return dict((doc.get("metadata") or {}).get("labels") or {})


def object_selected(
    policy: PolicyDef, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> bool:
    """As Kubernetes does: an update matches when the new or the old object matches."""
    if policy.object_selector is None:
        return True
    candidates = [d for d in (obj, old) if d is not None] or [{}]
    return any(policy.object_selector.matches(labels_of(d)) for d in candidates)


#: Kubernetes resource names and kinds a jsPolicy script may use, and Kled's kinds for them.
K8S_KINDS = {
    "pod": "App",
    "deployment": "App",
    "statefulset": "App",
    "daemonset": "App",
    "replicaset": "App",
    "namespace": "Environment",
    "configmap": "Config",
    "secret": "Secret",
}


def kled_kind(word: str) -> str | None:
    """The Kled kind a script means by ``word`` (``App``, ``apps``, ``Pod``), or None."""
    try:
        return resolve_kind(word).kind
    except InvalidInput:
        pass
    singular = word.lower()
    if singular.endswith("s") and singular[:-1] in K8S_KINDS:
        singular = singular[:-1]
    return K8S_KINDS.get(singular)


def all_kinds() -> list[str]:
    """Every team kind a ``*`` policy can audit (not Team or Node, which are server-wide)."""
    return [k.kind for k in KINDS if k.scope.value != "server"]

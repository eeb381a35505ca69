"""The kPolicy engine: the team's policies run against every write, as two admission hooks.

The server hands the engine three small seams (``PolicySource``, ``ResourceReader``,
``ViolationSink``) and registers ``mutating_hook`` and ``validating_hook`` on the
admission chain. For a write the engine picks the team's policies that match it, runs
their scripts in the worker pool (``pool.py``), answers their ``get``/``list`` calls from
the reader, and turns what they decided into one ``HookResult``: mutating policies one
after the other by (priority, name), each seeing the object the previous one made;
validating ones side by side, the first denial by name winning. Policies follow their
``violationPolicy`` (Deny/Warn/Dry) and ``failurePolicy`` (Fail/Ignore), and every
refusal, warning or dry-run refusal is kept as a Violation. Controller policies, run on
existing resources, are in ``controller.py``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kled.admission.kube import KubeRequest, identity_change, rewrapped
from kled.admission.policy import metrics
from kled.admission.policy.controller import AuditReport, PolicyController
from kled.admission.policy.kubeview import answer_kube, kube_document, kube_matches, sees_kube
from kled.admission.policy.matching import PolicyDef, labels_of, object_selected, read_policy
from kled.admission.policy.pool import WorkerPool
from kled.admission.policy.reading import answer, for_script, from_script
from kled.admission.policy.runtime import Limits, Outcome, compile_check
from kled.admission.policy.violations import Violation, ViolationSink
from kled.admission.request import AdmissionRequest, HookResult
from kled.errors import InvalidInput, KledError
from kled.resources.registry import resolve_kind

log = logging.getLogger(__name__)

_IDENTITY = ("name", "team", "environment", "uid")


class PolicySource(Protocol):
    async def policies(self, team: str) -> list[dict[str, Any]]:
        """The team's Policy documents."""
        ...


class ResourceReader(Protocol):
    """Read-only access to a team's resources, for the scripts' ``get`` and ``list``."""

    async def get(
        self, kind: str, team: str, environment: str | None, name: str
    ) -> dict[str, Any] | None: ...

    async def list(
        self, kind: str, team: str, environment: str | None, label_selector: str | None
    ) -> list[dict[str, Any]]: ...


@dataclass
class EngineSettings:
    """Operator settings of the engine."""

    workers: int | None = None
    """Worker processes (default: one per core, 2 to 8)."""
    memory_bytes: int = 32 * 1024 * 1024
    """Memory one run of a policy may allocate."""
    env: dict[str, str] = field(default_factory=dict)
    """What ``env(name)`` shows scripts: only variables the operator chose."""
    max_host_calls: int = 32
    """Distinct ``get``/``list``/``sleep`` calls one run may make."""


@dataclass
class Decision:
    """What came of one policy on one request."""

    policy: PolicyDef
    allowed: bool = True
    message: str = ""
    reason: str = ""
    code: int = 403
    warnings: list[str] = field(default_factory=list)
    object: dict[str, Any] | None = None
    result: str = "allow"
    violation: str | None = None  # deny | warn | dry, when a Violation is due
    requeue: bool = False


@dataclass
class _Entry:
    policy: PolicyDef | None
    problem: str | None = None


def request_document(req: AdmissionRequest) -> dict[str, Any]:
    """What a script sees as ``request``, in the shape of a Kubernetes AdmissionRequest."""
    try:
        plural = resolve_kind(req.kind).plural
    except InvalidInput:
        plural = req.kind.lower() + "s"
    kind = {"group": "kled.io", "version": "v1", "kind": req.kind}
    resource = {"group": "kled.io", "version": "v1", "resource": plural}
    return {
        "uid": req.uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": req.name,
        "namespace": req.environment or "",
        "team": req.team,
        "operation": req.operation.value,
        "userInfo": req.user.as_dict(),
        "object": for_script(req.object),
        "oldObject": for_script(req.old_object),
        "dryRun": req.dry_run,
    }


class PolicyEngine:
    """Runs a team's policies; ``close()`` stops its worker processes."""

    def __init__(
        self,
        source: PolicySource,
        reader: ResourceReader,
        sink: ViolationSink,
        *,
        settings: EngineSettings | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self.source = source
        self.reader = reader
        self.sink = sink
        self.settings = settings or EngineSettings()
        self._owns_pool = pool is None
        self.pool = pool or WorkerPool(self.settings.workers, self.settings.env)
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._team_keys: dict[str, set[tuple[str, str]]] = {}
        self.controller = PolicyController(self)

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.controller.close()
        if self._owns_pool:
            await self.pool.close()

    async def audit(self, team: str, policy_doc: Mapping[str, Any] | None = None) -> AuditReport:
        """Run Controller policies on existing resources (see ``controller.py``)."""
        return await self.controller.audit(team, policy_doc)

    async def on_change(self, event_type: str, doc: Mapping[str, Any]) -> AuditReport:
        """A resource or policy changed (``ADDED``/``MODIFIED``/``DELETED``)."""
        return await self.controller.on_change(event_type, doc)

    # --- policies ------------------------------------------------------------------------

    async def team_policies(self, team: str) -> list[tuple[PolicyDef, str | None]]:
        """The team's readable policies with the problem that keeps each from running."""
        docs = await self.source.policies(team)
        seen: set[tuple[str, str]] = set()
        found: list[tuple[PolicyDef, str | None]] = []
        for doc in docs:
            entry = self._entry(doc)
            meta = doc.get("metadata") or {}
            seen.add((str(meta.get("uid") or meta.get("name")), str(meta.get("resourceVersion"))))
            if entry.policy is None:
                continue
            if entry.policy.team and entry.policy.team != team:
                continue  # a policy only ever applies within its own team
            found.append((entry.policy, entry.problem))
        for stale in self._team_keys.get(team, set()) - seen:
            self._cache.pop(stale, None)
        self._team_keys[team] = seen
        return found

    def read(self, doc: Mapping[str, Any]) -> tuple[PolicyDef | None, str | None]:
        """A Policy document read, and what keeps it from running (a syntax error)."""
        entry = self._entry(doc)
        return entry.policy, entry.problem

    def _entry(self, doc: Mapping[str, Any]) -> _Entry:
        """The policy read and syntax-checked once per (uid, resourceVersion)."""
        meta = doc.get("metadata") or {}
        key = (str(meta.get("uid") or meta.get("name")), str(meta.get("resourceVersion")))
        entry = self._cache.get(key)
        if entry is None:
            try:
                policy = read_policy(doc)
            except InvalidInput as exc:
                log.warning(
                    "policy %s/%s cannot be read: %s", meta.get("team"), meta.get("name"), exc
                )
                entry = _Entry(None, str(exc))
            else:
                try:
                    compile_check(policy.javascript)
                    entry = _Entry(policy)
                except InvalidInput as exc:
                    entry = _Entry(policy, str(exc))
            self._cache[key] = entry
        return entry

    def forget(self, doc: Mapping[str, Any]) -> None:
        """Drop what is cached of a policy (every version), e.g. when it is deleted."""
        meta = doc.get("metadata") or {}
        uid = str(meta.get("uid") or meta.get("name"))
        for key in [k for k in self._cache if k[0] == uid]:
            del self._cache[key]

    async def matches(
        self, policy: PolicyDef, req: AdmissionRequest, env_labels: dict[str, dict[str, str]]
    ) -> bool:
        if req.kube is not None and sees_kube(policy, req):
            return (
                req.operation.value in policy.operations
                and policy.applies_to_environment(req.environment)
                and kube_matches(policy, req.kube)
            )
        if req.operation.value not in policy.operations or not policy.applies_to_kind(req.kind):
            return False
        if not policy.applies_to_environment(req.environment):
            return False
        if not object_selected(policy, req.object, req.old_object):
            return False
        if policy.namespace_selector is None:
            return True
        if req.kind == "Environment":
            labels = labels_of(req.object or req.old_object)
        elif req.environment and req.team:
            if req.environment not in env_labels:
                env = await self.reader.get("Environment", req.team, None, req.environment)
                env_labels[req.environment] = labels_of(env)
            labels = env_labels[req.environment]
        else:
            return True  # as in Kubernetes: no namespace, nothing for the selector to refuse
        return policy.namespace_selector.matches(labels)

    # --- the hooks -----------------------------------------------------------------------

    async def mutating_hook(self, req: AdmissionRequest) -> HookResult:
        if req.team is None:
            return HookResult()
        policies = await self.team_policies(req.team)
        ordered = sorted(
            (p for p in policies if p[0].type == "Mutating"),
            key=lambda p: (p[0].priority, p[0].name),
        )
        warnings: list[str] = []
        changed = False
        env_labels: dict[str, dict[str, str]] = {}
        for policy, problem in ordered:
            if not await self.matches(policy, req, env_labels):
                continue
            decision = await self.decide(policy, problem, req, mutating=True)
            warnings.extend(decision.warnings)
            await self._record(decision, req)
            if not decision.allowed:
                return self._denied(decision, warnings)
            if decision.object is not None:
                _apply_mutation(req, decision.object, kube=sees_kube(policy, req))
                changed = True
        return HookResult(warnings=warnings, object=req.object if changed else None)

    async def validating_hook(self, req: AdmissionRequest) -> HookResult:
        if req.kind == "Policy" and req.object is not None:
            script = (req.object.get("spec") or {}).get("javascript")
            if isinstance(script, str):
                try:
                    compile_check(script)
                except InvalidInput as exc:
                    return HookResult(allowed=False, message=str(exc), reason="Invalid", code=422)
        if req.team is None:
            return HookResult()
        env_labels: dict[str, dict[str, str]] = {}
        chosen = [
            (policy, problem)
            for policy, problem in sorted(
                await self.team_policies(req.team), key=lambda p: p[0].name
            )
            if policy.type == "Validating" and await self.matches(policy, req, env_labels)
        ]
        decisions = await self._decide_all(chosen, req)
        warnings = [w for d in decisions for w in d.warnings]
        for decision in decisions:
            await self._record(decision, req)
        for decision in decisions:
            if not decision.allowed:
                return self._denied(decision, warnings)
        return HookResult(warnings=warnings)

    @staticmethod
    def _denied(decision: Decision, warnings: list[str]) -> HookResult:
        return HookResult(
            allowed=False,
            message=decision.message,
            reason=decision.reason or "Forbidden",
            code=decision.code,
            policy=decision.policy.name,
            warnings=warnings,
        )

    # --- running one policy --------------------------------------------------------------

    async def decide(
        self, policy: PolicyDef, problem: str | None, req: AdmissionRequest, *, mutating: bool
    ) -> Decision:
        """Run ``policy`` on ``req`` and apply its violation and failure policies."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        kube = req.kube if sees_kube(policy, req) else None
        if problem is not None:
            outcome = Outcome(error=f"cannot run: {problem}")
        else:
            document = request_document(req) if kube is None else kube_document(req)
            outcome = await self.run(policy, document, req.team or policy.team, kube)
        original = req.object if kube is None else kube.object
        decision = self._judge(policy, outcome, original, mutating=mutating, kube=kube is not None)
        metrics.observe(policy.label, decision.result, loop.time() - started)
        return decision

    async def _decide_all(
        self, chosen: list[tuple[PolicyDef, str | None]], req: AdmissionRequest
    ) -> list[Decision]:
        """The validating decisions of every chosen policy. Those that can run as they
        are (they read, no Kubernetes view) go to one worker in one round trip; the rest,
        a run that asked for a host call, and a batch that failed as a whole (no worker,
        a crash) are decided one by one, as before."""
        together = [
            i for i, (p, problem) in enumerate(chosen) if problem is None and not sees_kube(p, req)
        ]
        if len(together) < 2:
            return list(
                await asyncio.gather(
                    *(self.decide(p, problem, req, mutating=False) for p, problem in chosen)
                )
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        document = request_document(req)
        policies = [chosen[i][0] for i in together]
        outcomes = await self.pool.run_many(
            [(p.key, p.javascript, self._limits(p)) for p in policies],
            document,
            sum(2 * p.timeout_seconds + 1 for p in policies),
        )
        decided: dict[int, Decision] = {}
        if isinstance(outcomes, list):
            for i, policy, outcome in zip(together, policies, outcomes, strict=True):
                if outcome.need is not None:
                    continue  # a host call: run it alone, answering its calls
                for line in outcome.prints:
                    log.info("policy/%s/%s: %s", policy.team, policy.name, line)
                decided[i] = self._judge(policy, outcome, req.object, mutating=False)
                metrics.observe(policy.label, decided[i].result, loop.time() - started)
        rest = [i for i in range(len(chosen)) if i not in decided]
        alone = await asyncio.gather(
            *(self.decide(chosen[i][0], chosen[i][1], req, mutating=False) for i in rest)
        )
        decided.update(zip(rest, alone, strict=True))
        return [decided[i] for i in range(len(chosen))]

    def _limits(self, policy: PolicyDef) -> Limits:
        return Limits(seconds=policy.timeout_seconds, memory_bytes=self.settings.memory_bytes)

    async def run(
        self,
        policy: PolicyDef,
        request: dict[str, Any],
        team: str,
        kube: KubeRequest | None = None,
    ) -> Outcome:
        """Run a script to its end, answering its host calls (from the cluster's objects
        for a Kubernetes view, ``kube``); never raises for the script."""
        loop = asyncio.get_running_loop()
        # The CPU limit is the worker's; the wall budget also covers host calls and a
        # worker that is not scheduled at once on a busy host.
        deadline = loop.time() + 2 * policy.timeout_seconds + 1
        limits = Limits(seconds=policy.timeout_seconds, memory_bytes=self.settings.memory_bytes)
        answers: dict[str, Any] = {}
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Outcome(limit="time")
            outcome = await self.pool.run(
                policy.key, policy.javascript, request, limits, answers, remaining
            )
            if outcome.need is None:
                break
            if len(answers) >= self.settings.max_host_calls:
                limit = self.settings.max_host_calls
                return Outcome(error=f"made more than {limit} get()/list()/sleep() calls")
            need = outcome.need
            if kube is not None:
                found = await answer_kube(kube.reader, need, request, deadline)
            else:
                found = await answer(self.reader, need, team, request, deadline)
            answers[str(need["key"])] = found
        for line in outcome.prints:
            log.info("policy/%s/%s: %s", policy.team, policy.name, line)
        return outcome

    def _judge(
        self,
        policy: PolicyDef,
        outcome: Outcome,
        original: dict[str, Any] | None,
        *,
        mutating: bool,
        kube: bool = False,
    ) -> Decision:
        decision = Decision(policy)
        decision.warnings = [f"[{policy.name}] {w}" for w in outcome.warnings]
        if outcome.action == "mutate" and outcome.error is None and outcome.limit is None:
            if not kube:
                outcome.object = from_script(outcome.object)
            if not mutating:
                log.warning(
                    "policy/%s/%s: mutate() ignored in a %s policy",
                    policy.team,
                    policy.name,
                    policy.type,
                )
            elif original is not None and outcome.object != original:
                check = identity_change if kube else _identity_change
                problem = check(original, outcome.object)
                if problem:
                    outcome = Outcome(error=problem, warnings=outcome.warnings)
                else:
                    decision.object = outcome.object
                    decision.result = "mutate"
        if outcome.limit is not None or outcome.error is not None:
            return self._failed(decision, outcome)
        if outcome.action == "requeue":
            decision.result = "requeue"
            decision.requeue = True
            decision.message = outcome.message
        if outcome.action != "deny":
            return decision
        message = outcome.message or "denied"
        decision.reason = outcome.reason
        decision.message = message
        if policy.violation_policy == "Deny":
            decision.allowed = False
            decision.code = outcome.code if 400 <= outcome.code < 600 else 403
            decision.result = decision.violation = "deny"
        elif policy.violation_policy == "Warn":
            decision.warnings.append(f"[{policy.name}] {message}")
            decision.result = decision.violation = "warn"
        else:
            decision.result = decision.violation = "dry"
        return decision

    def _failed(self, decision: Decision, outcome: Outcome) -> Decision:
        policy = decision.policy
        if outcome.limit == "time":
            what, reason, result = (
                f"exceeded its time limit of {policy.timeout_seconds}s (timeoutSeconds)",
                "Timeout",
                "timeout",
            )
        elif outcome.limit in ("memory", "stack"):
            mib = self.settings.memory_bytes // (1024 * 1024)
            limit = f"memory limit of {mib} MiB" if outcome.limit == "memory" else "stack limit"
            what, reason, result = f"exceeded its {limit}", "MemoryLimit", "memory"
        else:
            what, reason, result = f"failed: {outcome.error}", "PolicyError", "error"
        decision.object = None
        decision.result = result
        if policy.failure_policy == "Ignore":
            log.warning(
                "policy/%s/%s %s; ignored (failurePolicy Ignore)", policy.team, policy.name, what
            )
            return decision
        log.warning(
            "policy/%s/%s %s; refusing (failurePolicy Fail)", policy.team, policy.name, what
        )
        decision.allowed = False
        decision.message = f"policy {policy.name} {what}"
        decision.reason = reason
        decision.code = 403
        decision.violation = "deny"
        return decision

    async def _record(self, decision: Decision, req: AdmissionRequest) -> None:
        if decision.violation is None or decision.policy.audit_policy == "Skip" or req.dry_run:
            return
        await self.record(
            decision,
            req.kind,
            req.name,
            req.environment,
            req.operation.value,
            req.user.username,
            req.uid,
        )

    async def record(
        self,
        decision: Decision,
        kind: str,
        name: str,
        environment: str | None,
        operation: str,
        user: str,
        request_uid: str = "",
    ) -> None:
        policy = decision.policy
        violation = Violation(
            team=policy.team,
            policy=policy.name,
            action=decision.violation or "deny",
            message=decision.message,
            reason=decision.reason,
            code=decision.code,
            kind=kind,
            name=name,
            environment=environment,
            operation=operation,
            user=user,
            request_uid=request_uid,
        )
        try:
            await self.sink.record(violation)
        except KledError:
            log.exception("policy/%s/%s: cannot record a violation", policy.team, policy.name)


def _apply_mutation(req: AdmissionRequest, obj: dict[str, Any], *, kube: bool) -> None:
    """A policy's mutation becomes the request's object; for a cluster's write the stored
    document and the Kubernetes object are kept the same object."""
    if req.kube is None:
        req.object = obj
    elif kube:
        req.kube.object = obj
        if req.object is not None:
            req.object = rewrapped(req.object, obj)
    else:
        req.object = obj
        req.kube.object = copy.deepcopy((obj.get("spec") or {}).get("object"))


def _identity_change(before: Mapping[str, Any], after: Any) -> str | None:
    """Why a mutation is refused: it is not an object, or it changed what the object is."""
    if not isinstance(after, Mapping):
        return "mutate() needs an object"
    for key in ("apiVersion", "kind"):
        if after.get(key) != before.get(key):
            return f"mutate() may not change {key}"
    old, new = before.get("metadata") or {}, after.get("metadata") or {}
    for key in _IDENTITY:
        if old.get(key) != new.get(key):
            return f"mutate() may not change metadata.{key}"
    return None


__all__ = [
    "Decision",
    "EngineSettings",
    "PolicyEngine",
    "PolicySource",
    "ResourceReader",
    "request_document",
]

"""Controller policies: policies run on resources that already exist.

A ``Controller`` policy is not part of admission. It runs on every matching resource of
its team when the policy is created or changed (an audit), and on a resource each time
that resource changes; the server calls ``on_change`` for every resource and policy
event. What it denies is recorded as a Violation (nothing is refused: the resource is
already there). ``requeue(message)`` runs it again on that resource later, with a
growing delay, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kled.admission.policy.matching import PolicyDef, all_kinds
from kled.admission.policy.violations import Violation
from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.errors import KledError

if TYPE_CHECKING:
    from kled.admission.policy.engine import PolicyEngine

log = logging.getLogger(__name__)

#: Who a controller run acts as, in ``request.userInfo`` and in violations.
CONTROLLER_USER = UserInfo(username="kled:policy-controller", server_admin=True)
_DELETED = {"DELETED", "DELETE", "REMOVED"}
_MAX_REQUEUES = 8
_MAX_DELAY = 60.0


@dataclass
class AuditReport:
    """What an audit found: resources looked at, violations recorded, failures."""

    evaluated: int = 0
    violations: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requeued: int = 0


class PolicyController:
    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self._requeues: dict[tuple[str, str, str, str | None, str], asyncio.Task[None]] = {}
        self._attempts: dict[tuple[str, str, str, str | None, str], int] = {}

    async def close(self) -> None:
        tasks = list(self._requeues.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._requeues.clear()

    async def audit(self, team: str, policy_doc: Mapping[str, Any] | None = None) -> AuditReport:
        """Run the team's Controller policies (or just ``policy_doc``) on every existing
        resource they match; record what they deny."""
        report = AuditReport()
        policies: list[tuple[PolicyDef, str | None]]
        if policy_doc is not None:
            self.engine.forget(policy_doc)
            policy, problem = self.engine.read(policy_doc)
            if policy is None:
                report.errors.append(problem or "unreadable policy")
                return report
            policies = [(policy, problem)]
        else:
            policies = [
                (p, problem)
                for p, problem in await self.engine.team_policies(team)
                if p.type == "Controller"
            ]
        for policy, problem in policies:
            if policy.team and policy.team != team:
                continue
            for kind in sorted(policy.kinds) if policy.kinds is not None else all_kinds():
                try:
                    existing = await self.engine.reader.list(kind, team, None, None)
                except KledError as exc:
                    report.errors.append(f"cannot list {kind} of team {team}: {exc}")
                    continue
                for doc in existing:
                    await self._check(policy, problem, team, "CREATE", doc, report)
        return report

    async def on_change(self, event_type: str, doc: Mapping[str, Any]) -> AuditReport:
        """A resource or a policy changed: re-check what depends on it."""
        report = AuditReport()
        meta = doc.get("metadata") or {}
        team = meta.get("team")
        deleted = event_type.upper() in _DELETED
        if doc.get("kind") == "Policy":
            self.engine.forget(doc)
            spec = doc.get("spec") or {}
            if team and not deleted and str(spec.get("type", "")).lower() == "controller":
                return await self.audit(str(team), doc)
            return report
        if not team:
            return report
        for policy, problem in await self.engine.team_policies(str(team)):
            if policy.type == "Controller":
                operation = "DELETE" if deleted else "CREATE"
                await self._check(policy, problem, str(team), operation, doc, report)
        return report

    async def _check(
        self,
        policy: PolicyDef,
        problem: str | None,
        team: str,
        operation: str,
        doc: Mapping[str, Any],
        report: AuditReport,
    ) -> None:
        meta = doc.get("metadata") or {}
        obj = dict(doc)
        req = AdmissionRequest(
            operation=Operation(operation),
            kind=str(doc.get("kind") or ""),
            name=str(meta.get("name") or ""),
            team=team,
            environment=meta.get("environment"),
            object=None if operation == "DELETE" else obj,
            old_object=obj if operation == "DELETE" else None,
            user=CONTROLLER_USER,
        )
        if not await self.engine.matches(policy, req, {}):
            return
        report.evaluated += 1
        decision = await self.engine.decide(policy, problem, req, mutating=False)
        key = (policy.team, policy.name, req.kind, req.environment, req.name)
        if decision.result in ("timeout", "memory", "error"):
            report.errors.append(
                f"{policy.name} on {req.kind}/{team}/{req.name}: {decision.message}"
            )
        if decision.violation is not None and policy.audit_policy == "Log":
            await self.engine.record(
                decision, req.kind, req.name, req.environment, operation, CONTROLLER_USER.username
            )
            report.violations.append(
                Violation(
                    team=policy.team,
                    policy=policy.name,
                    action=decision.violation,
                    message=decision.message,
                    reason=decision.reason,
                    code=decision.code,
                    kind=req.kind,
                    name=req.name,
                    environment=req.environment,
                    operation=operation,
                    user=CONTROLLER_USER.username,
                )
            )
        if decision.requeue:
            report.requeued += 1
            self._requeue(key, policy, problem, team, operation, doc, decision.message)
        else:
            self._attempts.pop(key, None)

    def _requeue(
        self,
        key: tuple[str, str, str, str | None, str],
        policy: PolicyDef,
        problem: str | None,
        team: str,
        operation: str,
        doc: Mapping[str, Any],
        message: str,
    ) -> None:
        attempt = self._attempts.get(key, 0) + 1
        if attempt > _MAX_REQUEUES:
            log.warning(
                "policy/%s/%s gave up requeueing %s/%s/%s: %s",
                policy.team,
                policy.name,
                key[2],
                team,
                key[4],
                message,
            )
            self._attempts.pop(key, None)
            return
        self._attempts[key] = attempt
        delay = min(_MAX_DELAY, 0.5 * 2 ** (attempt - 1))
        log.info(
            "policy/%s/%s requeues %s/%s/%s in %.1fs: %s",
            policy.team,
            policy.name,
            key[2],
            team,
            key[4],
            delay,
            message,
        )
        previous = self._requeues.pop(key, None)
        if previous is not None:
            previous.cancel()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._requeues.pop(key, None)
            await self._check(policy, problem, team, operation, doc, AuditReport())

        self._requeues[key] = asyncio.get_running_loop().create_task(later())

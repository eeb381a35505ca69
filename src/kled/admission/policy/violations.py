"""Violations: what a policy said no (or would have said no) to, kept for reports.

Every deny, warn-instead-of-deny and dry-run deny of a policy is a ``Violation``; a
``ViolationSink`` keeps them. The server stores them in its database (same Protocol);
``InMemoryViolationSink`` keeps the newest few per policy for tests and
``kled policy test``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Violation:
    """``action`` is ``deny`` (refused), ``warn`` (allowed with a warning) or ``dry``
    (allowed, only recorded); ``reason`` is the script's or ``Timeout``/``MemoryLimit``/
    ``PolicyError`` when the policy itself failed and its failurePolicy refused."""

    team: str
    policy: str
    action: str
    message: str
    reason: str = ""
    code: int = 403
    kind: str = ""
    name: str = ""
    environment: str | None = None
    operation: str = ""
    user: str = ""
    request_uid: str = ""
    time: str = field(default_factory=_now)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ViolationSink(Protocol):
    async def record(self, v: Violation) -> None: ...

    async def list(self, team: str, policy: str | None, limit: int) -> list[Violation]: ...


class InMemoryViolationSink:
    """Keeps the newest ``per_policy`` violations of each policy, newest first on list."""

    def __init__(self, per_policy: int = 100) -> None:
        self.per_policy = per_policy
        self._kept: dict[tuple[str, str], deque[Violation]] = {}

    async def record(self, v: Violation) -> None:
        kept = self._kept.setdefault((v.team, v.policy), deque(maxlen=self.per_policy))
        kept.append(v)

    async def list(self, team: str, policy: str | None, limit: int) -> list[Violation]:
        found = [
            v
            for (t, p), kept in self._kept.items()
            if t == team and (policy is None or p == policy)
            for v in kept
        ]
        found.sort(key=lambda v: v.time, reverse=True)
        return found[: max(0, limit)]

"""How many replicas an autoscaled app should run, from the CPU its replicas use.

The rule is the HorizontalPodAutoscaler's: with ``u`` the mean CPU of the measured ready
replicas as a percentage of their ``resources.cpu`` and ``t`` the target, the app wants
``ceil(measured * u / t)`` replicas, clamped to ``[minReplicas, maxReplicas]``; within 10 %
of the target nothing changes. A scale-up is taken at once; a scale-down takes the highest
recommendation of the last ``scaleDownStabilizationSeconds`` (default 300), so a dip in
load does not remove replicas that the next minute needs again.

The workloads controller feeds this from the usage the agents send with their heartbeats
(``usage``) and keeps the decision in ``App.status.autoscale.desiredReplicas``; that count,
not ``spec.replicas``, is then what the rollout planner places (:func:`wanted_replicas`).

Pure: the clock comes in as an argument, the history of recommendations is a value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: within this share of the target, the replica count stays as it is
TOLERANCE = 0.1


@dataclass(frozen=True)
class Target:
    """``spec.autoscale`` and the CPU each replica asks for."""

    min_replicas: int
    max_replicas: int
    cpu_percent: int
    request_millicores: int
    window_seconds: int = 300
    #: with ``min_replicas`` 0: no new connection for this long means no replica
    idle_seconds: int = 300
    #: new connections per second per replica; None: CPU only
    requests_per_second: int | None = None


@dataclass
class History:
    """The recommendations of the last window: (time, replicas), oldest first."""

    entries: list[tuple[float, int]] = field(default_factory=list)


def target_of(app: Mapping[str, Any], request_millicores: int) -> Target | None:
    """The app's autoscale target; None when it is not autoscaled (or asks for no CPU)."""
    doc = (app.get("spec") or {}).get("autoscale")
    if not doc or request_millicores <= 0:
        return None
    return Target(
        min_replicas=int(doc.get("minReplicas", 1)),
        max_replicas=int(doc["maxReplicas"]),
        cpu_percent=int(doc.get("targetCPUUtilizationPercentage") or 80),
        request_millicores=request_millicores,
        window_seconds=int(doc.get("scaleDownStabilizationSeconds", 300)),
        idle_seconds=int(doc.get("scaleToZeroAfterSeconds", 300)),
        requests_per_second=doc.get("targetRequestsPerSecond"),
    )


def clamp(replicas: int, target: Target) -> int:
    return max(target.min_replicas, min(target.max_replicas, replicas))


def wanted_replicas(app: Mapping[str, Any]) -> int:
    """How many replicas ``app`` should run: the autoscaler's decision when autoscaled
    (``spec.replicas`` within the bounds before the first one), else ``spec.replicas``."""
    spec = app.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    bounds = spec.get("autoscale")
    if not bounds:
        return replicas
    low, high = int(bounds.get("minReplicas", 1)), int(bounds["maxReplicas"])
    decided = ((app.get("status") or {}).get("autoscale") or {}).get("desiredReplicas")
    value = int(decided) if isinstance(decided, int) else replicas
    return max(low, min(high, value))


def utilization(cpu_millicores: Sequence[int], request_millicores: int) -> int | None:
    """Mean CPU of the samples as a percentage of the request; None without samples."""
    if not cpu_millicores or request_millicores <= 0:
        return None
    return round(100 * sum(cpu_millicores) / (len(cpu_millicores) * request_millicores))


def recommend(current: int, cpu_millicores: Sequence[int], target: Target) -> int:
    """The replica count the samples ask for (``current`` when they say nothing). CPU never
    asks for 0: only idleness does (:func:`idle`)."""
    used = utilization(cpu_millicores, target.request_millicores)
    if used is None:
        return clamp(current, target)
    ratio = used / target.cpu_percent
    if abs(ratio - 1) <= TOLERANCE:
        return clamp(current, target)
    return clamp(max(1, math.ceil(len(cpu_millicores) * ratio)), target)


def recommend_for_rate(current: int, rate: float | None, target: Target) -> int | None:
    """The replica count a rate of new connections per second asks for (the HPA's
    average-value rule: ``ceil(rate / target)``); None when there is no rate target or
    no measurement. Within 10 % of the target for ``current`` replicas: ``current``."""
    if target.requests_per_second is None or rate is None:
        return None
    if current > 0 and abs(rate / (current * target.requests_per_second) - 1) <= TOLERANCE:
        return clamp(current, target)
    return clamp(max(1, math.ceil(rate / target.requests_per_second)), target)


def rate_reason(before: int, after: int, rate: float, target: Target) -> str:
    where = "above" if after > before else "below"
    return (
        f"new size {after} (was {before}): {rate:.1f} new connections/s, {where} the target "
        f"{target.requests_per_second}/s per replica"
    )


def idle(target: Target, last_active: float | None, since: float, now: float) -> bool:
    """Whether an app that may scale to zero has had no new connection for its window:
    since its last one (``last_active``), or since ``since`` (when the controller began
    to watch it) when it had none."""
    if target.min_replicas > 0:
        return False
    quiet_from = max(since, last_active) if last_active is not None else since
    return now - quiet_from >= target.idle_seconds


def wake_reason() -> str:
    return "new size 1 (was 0): a request is waiting at a gateway"


def idle_reason(before: int, target: Target) -> str:
    return (
        f"new size 0 (was {before}): no new connection for {target.idle_seconds}s "
        "(scaleToZeroAfterSeconds)"
    )


def decide(
    current: int, proposal: int, history: History, now: float, target: Target
) -> tuple[int, History]:
    """The count to run now, with the window's recommendations (``proposal`` added)."""
    kept = [(t, n) for t, n in history.entries if now - t < target.window_seconds]
    kept.append((now, proposal))
    if proposal >= current:
        return proposal, History(kept)
    return min(current, max(n for _, n in kept)), History(kept)


def reason(before: int, after: int, used: int | None, target: Target) -> str:
    where = "above" if after > before else "below"
    return (
        f"new size {after} (was {before}): CPU {used}% of request, {where} the target "
        f"{target.cpu_percent}%"
    )

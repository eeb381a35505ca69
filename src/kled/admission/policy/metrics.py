"""Prometheus metrics of policy runs, on the default registry the server exposes.

``kled_policy_executions_total{policy,result}`` counts runs by what came of them
(allow, deny, warn, dry, mutate, requeue, error, timeout, memory); the histogram
``kled_policy_duration_seconds{policy}`` times them, host calls included. ``policy`` is
``team/name``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EXECUTIONS = Counter(
    "kled_policy_executions_total",
    "Policy runs, by policy (team/name) and result.",
    ["policy", "result"],
)

DURATION = Histogram(
    "kled_policy_duration_seconds",
    "Time a policy run took, host calls (get/list) included.",
    ["policy"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def observe(policy: str, result: str, seconds: float) -> None:
    EXECUTIONS.labels(policy=policy, result=result).inc()
    DURATION.labels(policy=policy).observe(seconds)

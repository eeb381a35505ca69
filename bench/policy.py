"""kPolicy speed: evaluations per second of one policy in the engine alone.

Two numbers, printed as one JSON document on stdout:

- ``sandbox``: one compiled policy run back to back in this process (QuickJS alone,
  no IPC, no matching) — the ceiling of one core;
- ``pool``: the same policy through ``PolicyEngine.validating_hook`` with its worker
  processes, at concurrency 1 and 16 — what admission pays per policy.

Admission latency of ``kled apply`` with 0, 1 and 16 policies (issue 6) needs a running
server; it belongs in its own section beside these, next to Kyverno's published
end-to-end p99 (``KYVERNO_P99_MS``).

    python bench/policy.py [--seconds 2] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from kled.admission.policy import EngineSettings, InMemoryViolationSink, PolicyEngine
from kled.admission.policy.local import MemoryResources, StaticPolicySource
from kled.admission.policy.runtime import Limits, Sandbox
from kled.admission.request import AdmissionRequest, Operation, UserInfo

#: Kyverno v1.18.1's perf summary: end-to-end admission p99 at 10 virtual users.
KYVERNO_P99_MS = {"min": 80, "max": 144, "virtual_users": 10}

POLICY = """
const labels = request.object.metadata.labels || {};
if (!labels.owner) {
  deny(`app ${request.name} has no owner label`);
}
"""


def policy_doc() -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Policy",
        "metadata": {"name": "require-owner", "team": "bench", "uid": "u1", "resourceVersion": "1"},
        "spec": {"resources": ["apps"], "javascript": POLICY},
    }


def app_request(i: int) -> AdmissionRequest:
    obj = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": f"app-{i}",
            "team": "bench",
            "environment": "dev",
            "labels": {"owner": "alice"} if i % 2 else {},
        },
        "spec": {"runtime": "process", "command": ["sleep", "1"], "replicas": 1},
    }
    return AdmissionRequest(
        Operation.CREATE, "App", f"app-{i}", "bench", "dev", obj, None, UserInfo("alice")
    )


def bench_sandbox(seconds: float) -> dict[str, Any]:
    box = Sandbox()
    limits = Limits(seconds=10)
    request = {"name": "app-1", "object": app_request(1).object}
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        box.run("k", POLICY, request, limits)
        count += 1
    elapsed = time.perf_counter() - started
    return {"evaluations": count, "evaluations_per_second": round(count / elapsed)}


async def bench_pool(seconds: float, workers: int | None) -> dict[str, Any]:
    engine = PolicyEngine(
        StaticPolicySource([policy_doc()]),
        MemoryResources(),
        InMemoryViolationSink(),
        settings=EngineSettings(workers=workers),
    )
    await engine.start()
    await engine.validating_hook(app_request(0))  # warm: compiled in a worker
    results: dict[str, Any] = {"workers": engine.pool.size}
    try:
        for concurrency in (1, 16):
            results[f"concurrency_{concurrency}"] = await _drive(engine, concurrency, seconds)
    finally:
        await engine.close()
    return results


async def _drive(engine: PolicyEngine, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients sending admission requests back to back for ``seconds``."""
    count = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal count
        i = offset
        while time.perf_counter() < stop:
            await engine.validating_hook(app_request(i))
            count += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"evaluations": count, "evaluations_per_second": round(count / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    report = {
        "benchmark": "policy",
        "cpus": os.cpu_count(),
        "policy": "require-owner (one label check; half the requests denied)",
        "sandbox": bench_sandbox(args.seconds),
        "pool": asyncio.run(bench_pool(args.seconds, args.workers)),
        "kyverno_admission_p99_ms": KYVERNO_P99_MS,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

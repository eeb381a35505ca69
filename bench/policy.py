"""kPolicy speed: the engine alone, and what policies add to a write through the API.

Three parts, printed as one JSON document on stdout:

- ``sandbox``: one compiled policy run back to back in this process (QuickJS alone,
  no IPC, no matching) — the ceiling of one core;
- ``pool``: the same policy through ``PolicyEngine.validating_hook`` with its worker
  processes, at concurrency 1 and 16 — what admission pays per policy — and
  ``pool_16_policies``, 16 such policies all matching (requests/s, p50/p99 of a
  request's whole admission);
- ``admission``: p50/p99 of ``POST /api/v1/apply`` (what ``kled apply`` sends) against a
  real control plane in a subprocess (SQLite), with 0, 1 and 16 matching policies, at
  concurrency 1 and 16 — beside Kyverno's published end-to-end admission p99
  (``KYVERNO_P99_MS``, its v1.18.1 performance summary, at 10 virtual users). Kyverno's
  figure is measured on a Kubernetes cluster, API server included, on other hardware:
  a reference point, not a like-for-like race.

    python bench/policy.py [--seconds 2] [--workers N] [--admission-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from kled.admission.policy import EngineSettings, InMemoryViolationSink, PolicyEngine
from kled.admission.policy.local import MemoryResources, StaticPolicySource
from kled.admission.policy.runtime import Limits, Sandbox
from kled.admission.request import AdmissionRequest, Operation, UserInfo

#: Kyverno v1.18.1's perf summary: end-to-end admission p99 at 10 virtual users.
KYVERNO_P99_MS = {
    "min": 80,
    "max": 144,
    "virtual_users": 10,
    "source": "Kyverno's published figure (v1.18.1 performance summary), not measured here",
}

POLICY = """
const labels = request.object.metadata.labels || {};
if (!labels.owner) {
  deny(`app ${request.name} has no owner label`);
}
"""


def policy_doc(n: int = 0) -> dict[str, Any]:
    name = "require-owner" if n == 0 else f"require-owner-{n}"
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "team": "bench", "uid": f"u{n + 1}", "resourceVersion": "1"},
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


async def bench_pool(seconds: float, workers: int | None, policies: int = 1) -> dict[str, Any]:
    engine = PolicyEngine(
        StaticPolicySource([policy_doc(n) for n in range(policies)]),
        MemoryResources(),
        InMemoryViolationSink(),
        settings=EngineSettings(workers=workers),
    )
    await engine.start()
    for i in range(engine.pool.size * 2):  # warm: compiled in every worker
        await engine.validating_hook(app_request(i))
    results: dict[str, Any] = {"workers": engine.pool.size, "policies": policies}
    try:
        for concurrency in (1, 16):
            results[f"concurrency_{concurrency}"] = await _drive(engine, concurrency, seconds)
    finally:
        await engine.close()
    return results


async def _drive(engine: PolicyEngine, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients sending admission requests back to back for ``seconds``:
    requests/s and each request's admission time (every matching policy run)."""
    times: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await engine.validating_hook(app_request(i))
            times.append(time.perf_counter() - began)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    times.sort()
    return {
        "requests": len(times),
        "requests_per_second": round(len(times) / elapsed),
        "p50_ms": round(times[len(times) // 2] * 1000, 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 2),
    }


# ---- admission through a real server ---------------------------------------------------


def _bench_api() -> ModuleType:
    """bench/api.py, whose ``--serve`` runs a control plane and whose ``drive`` times
    requests: reused rather than copied, so the two benches measure the same way."""
    path = Path(__file__).resolve().parent / "api.py"
    spec = importlib.util.spec_from_file_location("kled_bench_api", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def owned_app(name: str, replicas: int) -> dict[str, Any]:
    """An App every policy of the bench allows: the cost measured is of running them."""
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": name,
            "team": "bench",
            "environment": "dev",
            "labels": {"owner": "alice", "tier": "backend"},
        },
        "spec": {"runtime": "process", "command": ["sleep", "1"], "replicas": replicas},
    }


def bench_policy(n: int) -> dict[str, Any]:
    """The n-th policy of the bench: a label check on apps, as the library's are."""
    doc = policy_doc()
    doc["metadata"] = {"name": f"require-owner-{n:02d}", "team": "bench"}
    return doc


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become ready")


def bench_admission(requests: int) -> dict[str, Any]:
    api = _bench_api()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        port = api.free_port()
        env = {
            **os.environ,
            "KLED_DATA_DIR": str(data),
            "KLED_DATABASE": f"sqlite:///{data / 'kled.db'}",
            "KLED_LISTEN": f"127.0.0.1:{port}",
        }
        proc = subprocess.Popen(
            [sys.executable, str(api.__file__), "--serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc)
            token = (data / "admin.token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                c.post("/api/v1/teams", json={"metadata": {"name": "bench"}}).raise_for_status()
                c.post(
                    "/api/v1/teams/bench/environments", json={"metadata": {"name": "dev"}}
                ).raise_for_status()
                present = 0
                for policies in (0, 1, 16):
                    while present < policies:
                        c.post("/api/v1/apply", json=bench_policy(present)).raise_for_status()
                        present += 1
                    for concurrency in (1, 16):
                        # Half new apps (CREATE), half updates of them (UPDATE).
                        prefix = f"p{policies}-c{concurrency}"
                        half = max(requests // 2, 1)

                        def make(i: int, prefix: str = prefix, half: int = half) -> Any:
                            doc = owned_app(f"{prefix}-{i % half}", 1 + i // half)
                            return "POST", "/api/v1/apply", doc

                        # One apply first, so that the workers have compiled the policies.
                        c.post("/api/v1/apply", json=owned_app(f"{prefix}-warm", 1))
                        result = asyncio.run(api.drive(url, token, requests, concurrency, make))
                        runs.append({"policies": policies, "concurrency": concurrency, **result})
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    return {
        "what": "POST /api/v1/apply of an App, as `kled apply` sends it; every policy matches "
        "and allows; server in a subprocess on SQLite",
        "requests_per_run": requests,
        "runs": runs,
        "kyverno_published_p99_ms": KYVERNO_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--admission-requests",
        type=int,
        default=200,
        help="applies per (policies, concurrency) run; 0 skips the admission part",
    )
    args = parser.parse_args()
    report = {
        "benchmark": "policy",
        "cpus": os.cpu_count(),
        # Other work on the machine moves every number here: say how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "policy": "require-owner (one label check; half the requests denied)",
        "sandbox": bench_sandbox(args.seconds),
        "pool": asyncio.run(bench_pool(args.seconds, args.workers)),
        # the goal of issue 15: admission p99 < 20 ms with 16 policies at 16 concurrent
        "pool_16_policies": asyncio.run(bench_pool(args.seconds, args.workers, policies=16)),
    }
    if args.admission_requests > 0:
        report["admission"] = bench_admission(args.admission_requests)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

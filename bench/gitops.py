"""GitOps speed: commit → applied, by webhook and by polling, and a 500-resource sync.

A real control plane (SQLite, in this process on a thread of its own) keeps real git
repositories (bare, over file://) applied. Printed as one JSON document on stdout:

- ``webhook``: p50/p99 of push → the app carries the commit, when a signed GitHub push
  webhook is sent right after the push (the source's interval is an hour);
- ``polling``: the same with no webhook and ``interval: 5s``, each push at a random point
  of the interval — on average half the interval, at worst all of it;
- ``sync500``: a repository of 500 apps (one file each): the first sync (all created) and
  an unchanged one, each timed through ``POST …/sync``, with the store writes the unchanged
  one made (the revision's change: goal 0).

Goals (issue 18): webhook to applied < 1 s; an unchanged 500-resource sync < 1 s, no writes.

    python bench/gitops.py [--commits 20] [--resources 500]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gitkit import Origin, app_yaml
from servers import RunningServer

TEAM = "bench"


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def apply(c: httpx.Client, doc: dict[str, Any]) -> None:
    r = c.post("/api/v1/apply", json=doc)
    r.raise_for_status()


def source(name: str, url: str, env: str, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "GitSource",
        "metadata": {"name": name, "team": TEAM},
        "spec": {"url": url, "environment": env, "interval": "1h", **spec},
    }


def applied_commit(c: httpx.Client, env: str, name: str) -> str | None:
    r = c.get(f"/api/v1/teams/{TEAM}/environments/{env}/apps/{name}")
    if r.status_code != 200:
        return None
    annotations = r.json()["metadata"].get("annotations") or {}
    value = annotations.get("kled.io/gitcommit")
    return str(value) if value else None


def wait_applied(c: httpx.Client, env: str, name: str, commit: str, give_up: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < give_up:
        if applied_commit(c, env, name) == commit:
            return time.perf_counter()
        time.sleep(0.005)
    sources = c.get(f"/api/v1/teams/{TEAM}/gitsources").json()["items"]
    told = {d["metadata"]["name"]: d.get("status") for d in sources}
    raise SystemExit(f"commit {commit[:12]} not applied in {give_up} s: {told}")


def bench_webhook(c: httpx.Client, root: Path, url: str, commits: int) -> dict[str, Any]:
    origin = Origin(root / "hooked")
    head = origin.commit({"api.yaml": app_yaml("api", "hooked")})
    apply(c, {"kind": "Environment", "metadata": {"name": "hooked", "team": TEAM}})
    apply(
        c,
        {
            "kind": "Secret",
            "metadata": {"name": "hook", "team": TEAM, "environment": "hooked"},
            "stringData": {"secret": "s3cret"},
        },
    )
    secret = {"environment": "hooked", "name": "hook"}
    apply(c, source("hooked", origin.url, "hooked", webhookSecret=secret))
    wait_applied(c, "hooked", "api", head, 60)
    hook = httpx.Client(base_url=url, timeout=30)
    samples = []
    for i in range(commits):
        head = origin.commit({"api.yaml": app_yaml("api", "hooked", replicas=2 + i % 3)})
        start = time.perf_counter()
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        mac = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        r = hook.post(
            f"/api/v1/teams/{TEAM}/gitsources/hooked/webhook",
            content=body,
            headers={"X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Event": "push"},
        )
        r.raise_for_status()
        samples.append(wait_applied(c, "hooked", "api", head, 60) - start)
    hook.close()
    return quantiles(samples)


def bench_polling(c: httpx.Client, root: Path, commits: int) -> dict[str, Any]:
    origin = Origin(root / "polled")
    head = origin.commit({"api.yaml": app_yaml("api", "polled")})
    apply(c, {"kind": "Environment", "metadata": {"name": "polled", "team": TEAM}})
    apply(c, source("polled", origin.url, "polled", interval="5s"))
    wait_applied(c, "polled", "api", head, 60)
    samples = []
    pace = random.Random(18)
    for i in range(commits):
        # pushes land at any point of the interval, not just after a poll
        time.sleep(pace.uniform(0, 5))
        head = origin.commit({"api.yaml": app_yaml("api", "polled", replicas=2 + i % 3)})
        start = time.perf_counter()
        samples.append(wait_applied(c, "polled", "api", head, 60) - start)
    return {**quantiles(samples), "interval_s": 5}


def revision(c: httpx.Client) -> int:
    r = c.get(f"/api/v1/teams/{TEAM}/apps", params={"limit": 1})
    r.raise_for_status()
    return int(r.json()["metadata"]["resourceVersion"])


def bench_sync(c: httpx.Client, root: Path, resources: int) -> dict[str, Any]:
    origin = Origin(root / "big")
    origin.commit(
        {f"apps/app{i:04d}.yaml": app_yaml(f"app{i:04d}", "big") for i in range(resources)}
    )
    apply(c, {"kind": "Environment", "metadata": {"name": "big", "team": TEAM}})
    apply(c, source("big", origin.url, "big", suspend=True))  # synced by hand only
    start = time.perf_counter()
    first = c.post(f"/api/v1/teams/{TEAM}/gitsources/big/sync", json={}, timeout=600).json()
    first_s = time.perf_counter() - start
    created = sum(1 for i in first.get("resources") or [] if i["result"] == "created")
    # IPAM gives each new app a service IP (a status write of its own): let it finish
    for _ in range(1200):
        apps = c.get(f"/api/v1/teams/{TEAM}/environments/big/apps", params={"limit": 1000})
        if all((a.get("status") or {}).get("ip") for a in apps.json()["items"]):
            break
        time.sleep(0.1)
    before = revision(c)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        r = c.post(f"/api/v1/teams/{TEAM}/gitsources/big/sync", json={}, timeout=600)
        r.raise_for_status()
        samples.append(time.perf_counter() - start)
    return {
        "resources": resources,
        "first_sync_s": round(first_s, 3),
        "first_created": created,
        "unchanged_sync": quantiles(samples),
        "unchanged_writes": revision(c) - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--resources", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kled-bench-gitops-") as tmp:
        root = Path(tmp)
        server = RunningServer(root / "data", None).start()
        try:
            with server.client() as c:
                apply(c, {"kind": "Team", "metadata": {"name": TEAM}})
                result = {
                    "webhook": bench_webhook(c, root, server.url, args.commits),
                    "polling": bench_polling(c, root, args.commits),
                    "sync500": bench_sync(c, root, args.resources),
                    "goals": {"webhook_p99_ms": 1000, "unchanged_sync_ms": 1000, "writes": 0},
                }
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

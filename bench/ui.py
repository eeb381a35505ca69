"""The web console in chromium: first paint, interactive, change visible, bytes.

Starts a control plane (SQLite) in this process, signs a chromium (Debian's, driven by
Playwright) into the console, and measures:

- first contentful paint and DOMContentLoaded ("interactive": the page is parsed and its
  one script has run) from Chromium's performance API, for the overview and for an
  environment of ``--apps`` apps;
- bytes transferred for that first load (the document and its static files);
- the time from an API write (an app scaled, as ``kled app scale`` does it) to the
  change shown in the open environment page, p50/p99 over ``--changes`` writes;
- paint and interactive for the mesh page of a team of ``--peers`` devices (grouped per
  owner beyond 40), and the bytes of that drawing.

``--screenshots DIR`` also saves every page in light and dark (docs/ui/).
Prints one JSON document on stdout. ``python bench/ui.py [--apps 200] [--changes 50]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CHROMIUM = "/usr/bin/chromium"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def paint(page: Any, url: str) -> dict[str, float]:
    page.goto(url, wait_until="load")
    timing = page.evaluate(
        """async () => {
          const nav = performance.getEntriesByType('navigation')[0];
          const fcp = await new Promise((done) => {
            new PerformanceObserver((list) => {
              const e = list.getEntriesByName('first-contentful-paint')[0];
              if (e) done(e);
            }).observe({type: 'paint', buffered: true});
            setTimeout(() => done(null), 2000);
          });
          const bytes = performance.getEntriesByType('resource')
            .reduce((n, r) => n + r.transferSize, nav.transferSize);
          return {fcp: fcp ? fcp.startTime : null,
                  interactive: nav.domContentLoadedEventEnd, bytes: bytes};
        }"""
    )
    return {
        "firstContentfulPaintMs": round(timing["fcp"] or -1, 1),
        "interactiveMs": round(timing["interactive"], 1),
        "bytes": int(timing["bytes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from servers import RunningServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RunningServer(Path(tmp) / "data", None).start()
        try:
            result = run(server, args, sync_playwright)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


def run(server: Any, args: argparse.Namespace, sync_playwright: Any) -> dict[str, Any]:
    with server.client() as admin:
        admin.post("/api/v1/teams", json={"metadata": {"name": "acme"}}).raise_for_status()
        envs = "/api/v1/teams/acme/environments"
        admin.post(envs, json={"metadata": {"name": "dev"}}).raise_for_status()
        admin.post(envs, json={"metadata": {"name": "big"}}).raise_for_status()
        for i in range(args.apps):
            admin.post(
                f"{envs}/big/apps",
                json={"metadata": {"name": f"app{i}"}, "spec": {"command": ["sleep", "60"]}},
            ).raise_for_status()
        admin.post(
            f"{envs}/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        ).raise_for_status()
        for i in range(args.peers):
            admin.post(
                "/api/v1/teams/acme/devices",
                json={"metadata": {"name": f"laptop{i}"}, "spec": {"owner": f"dev{i % 12}"}},
            ).raise_for_status()
        admin.post(
            "/api/v1/teams/acme/workspaces",
            json={"metadata": {"name": "box"}, "spec": {"image": "localhost/box:1"}},
        ).raise_for_status()
        admin.post(
            "/api/v1/teams/acme/users",
            json={"metadata": {"name": "olga"}, "spec": {"role": "owner"}},
        ).raise_for_status()
        token = admin.post(
            "/api/v1/teams/acme/tokens",
            json={"metadata": {"name": "olga"}, "spec": {"user": "olga"}},
        ).json()["token"]
    base = f"{server.url}/ui/teams/acme"
    out: dict[str, Any] = {"apps": args.apps, "changes": args.changes, "peers": args.peers}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(f"{server.url}/ui/signin")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/teams/**")
        out["overview"] = paint(page, base)
        out["environment"] = paint(page, f"{base}/envs/big")
        out["mesh"] = paint(page, f"{base}/mesh")
        out["changeVisibleMs"] = change_visible(page, server, base, args.changes)
        if args.screenshots is not None:
            screenshots(browser, server, token, base, args.screenshots)
        browser.close()
    return out


def change_visible(page: Any, server: Any, base: str, changes: int) -> dict[str, float]:
    page.goto(f"{base}/envs/dev/apps/web")
    page.locator("html[data-live=open]").wait_for()
    seen: list[float] = []
    path = "/api/v1/teams/acme/environments/dev/apps/web"
    with server.client() as admin:
        for n in range(2, changes + 2):
            doc = admin.get(path).json()
            doc["spec"]["replicas"] = n
            doc.pop("status", None)
            start = time.perf_counter()
            admin.put(path, json=doc).raise_for_status()
            page.locator(f"#app-summary :text('ready of {n}')").wait_for()
            seen.append((time.perf_counter() - start) * 1000)
    return {
        "p50": round(statistics.median(seen), 1),
        "p99": round(quantile(seen, 0.99), 1),
    }


def screenshots(browser: Any, server: Any, token: str, base: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with server.client() as admin:  # an app in a dev session, for its page
        admin.post("/api/v1/teams/acme/environments/dev/apps/web/dev").raise_for_status()
    pages = {
        "overview": "",
        "environment": "/envs/dev",
        "app": "/envs/dev/apps/web",
        "apply": "/apply",
        "nodes": "/nodes",
        "devices": "/devices",
        "intercepts": "/intercepts",
        "policies": "/policies",
        "mesh-grouped": "/mesh",
        "workspaces": "/workspaces",
        "dev-sessions": "/dev",
        "edit": "/edit/apps/web?env=dev",
    }
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme, viewport={"width": 1200, "height": 800})
        page = context.new_page()
        page.goto(f"{server.url}/ui/signin")
        page.screenshot(path=str(folder / f"signin-{scheme}.png"))
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/teams/**")
        for name, path in pages.items():
            page.goto(base + path)
            page.screenshot(path=str(folder / f"{name}-{scheme}.png"))
        # an edit refused: the error names the field, its line is highlighted
        page.get_by_label("app/web (YAML)").fill(
            page.get_by_label("app/web (YAML)").input_value().replace("replicas: ", "replicas: -")
        )
        page.get_by_role("button", name="Save").click()
        page.screenshot(path=str(folder / f"edit-refused-{scheme}.png"))
        context.close()


if __name__ == "__main__":
    main()

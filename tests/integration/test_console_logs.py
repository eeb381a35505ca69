"""An app's logs in the console, from a real agent running the app (issue 13).

``kled server`` with its Message Office and one ``kled agent`` run the app as processes; the
app page in chromium follows its lines live (new ones appear without a reload), Pause holds
them back and Resume lets them in, Search keeps the matching lines, and lines carrying
``<script>`` and ``<img onerror>`` are shown as text and never run — live and on the page
of latest lines that needs no JavaScript.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from consolekit import XSS_IMG, XSS_SCRIPT, axe, browser, needs_axe, page, sign_in
from hostkit import Hosts, eventually, processes
from test_api import make_user

__all__ = ["browser", "page"]  # fixtures

pytestmark = [pytest.mark.slow]

#: ``KLED_CONSOLE_SHOTS=docs/ui`` also saves the logs views in light and dark (docs/console.md)
SHOTS = os.environ.get("KLED_CONSOLE_SHOTS")
TEAM = f"conlogs-{random.randint(10**5, 10**6)}"
MARK = f"conlogs{random.randint(10**6, 10**7)}"  # in every replica's command line
TICKS = (
    f"echo \"{XSS_SCRIPT}\"; echo '{XSS_IMG}'; "
    'i=0; while :; do i=$((i+1)); echo "tick $i"; echo "oops $i" >&2; sleep 0.3; done'
)


class AdminOf:
    """``Hosts`` as ``make_user`` wants a server: an admin client on its URL."""

    def __init__(self, hosts: Hosts) -> None:
        self.url = hosts.url
        self.token = hosts.token

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root: Path = tmp_path_factory.mktemp("conlogs")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_team_node("n1")
        h.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                "metadata": {"name": "ticker"},
                "spec": {"command": ["sh", "-c", TICKS, MARK]},
            }
        )
        eventually(lambda: h.running("ticker", 1), "app/ticker Running on n1")
        yield h
    finally:
        h.close([])
        left = processes(lambda cmd: any(MARK in part for part in cmd))
        for p in left:
            if p.pid != os.getpid():
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        psutil.wait_procs(left, timeout=10)


@pytest.fixture(scope="module")
def owner(hosts: Hosts) -> str:
    return make_user(AdminOf(hosts), TEAM, "olga", "owner")  # type: ignore[arg-type]


def _ticks(page: Any) -> list[int]:
    text = page.locator("#log-lines").inner_text()
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


def test_logs_follow_live_and_payloads_stay_text(page: Any, hosts: Hosts, owner: str) -> None:
    sign_in(page, hosts, owner)
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
    page.evaluate("window.__same_document = true")
    lines = page.locator("#log-lines")
    lines.get_by_text("tick 2", exact=True).wait_for(timeout=30_000)
    shown = lines.inner_text()
    assert XSS_SCRIPT in shown and XSS_IMG in shown
    assert page.locator("#log-lines script, #log-lines img").count() == 0
    # followed: later lines arrive in the same document
    seen = max(_ticks(page))
    lines.get_by_text(f"tick {seen + 3}", exact=True).wait_for(timeout=30_000)
    assert page.evaluate("window.__same_document") is True
    # each line says which replica wrote it; stderr lines are marked as such
    assert page.locator("#log-lines li.stderr").first.inner_text().startswith("[0] oops")
    assert page.evaluate("window.__pwned") is None
    assert page.errors == []


def test_pause_holds_lines_back_and_resume_lets_them_in(
    page: Any, hosts: Hosts, owner: str
) -> None:
    sign_in(page, hosts, owner)
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
    page.locator("#log-lines").get_by_text("tick 1", exact=True).wait_for(timeout=30_000)
    page.get_by_role("button", name="Pause").click()
    before = max(_ticks(page))
    count = page.get_by_test_id("log-count")
    count.filter(has_text=re.compile(r"paused, [4-9]\d* new held back")).wait_for(timeout=30_000)
    assert max(_ticks(page)) == before  # nothing new shown while paused
    page.get_by_role("button", name="Resume").click()
    assert max(_ticks(page)) > before  # the held lines, in at once
    assert "paused" not in count.inner_text()


def test_search_keeps_the_matching_lines(page: Any, hosts: Hosts, owner: str) -> None:
    sign_in(page, hosts, owner)
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
    page.locator("#log-lines").get_by_text("tick 3", exact=True).wait_for(timeout=30_000)
    page.get_by_label("Search the lines").fill("OOPS")  # case does not matter
    visible = page.locator("#log-lines li:visible")
    texts = visible.all_inner_texts()
    assert texts and all(re.fullmatch(r"\[0\] oops \d+", t) for t in texts)
    assert re.fullmatch(r"\d+ of \d+ lines match", page.get_by_test_id("log-count").inner_text())
    page.get_by_label("Search the lines").fill("")
    assert page.locator("#log-lines li:visible").count() > len(texts)


def test_the_page_of_latest_lines_needs_no_script(browser: Any, hosts: Hosts, owner: str) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        quiet = context.new_page()
        sign_in(quiet, hosts, owner)
        quiet.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
        assert quiet.locator(".log-controls").is_hidden()  # live controls need the script
        quiet.get_by_role("link", name="Latest lines as a page").click()
        assert quiet.get_by_role("heading", level=1).inner_text() == "Logs of ticker"
        shown = quiet.get_by_test_id("log-lines").inner_text()
        assert "[ticker-0] tick 1" in shown and XSS_SCRIPT in shown and XSS_IMG in shown
        assert quiet.locator("ol.loglines img, ol.loglines script").count() == 0
    finally:
        context.close()


def test_logs_of_a_missing_app_or_another_team_are_404(hosts: Hosts, owner: str) -> None:
    with httpx.Client(base_url=hosts.url, timeout=30) as client:
        page = client.get("/ui/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        client.post("/ui/signin", data={"csrf": csrf.group(1), "token": owner})
        for path in (
            f"/ui/teams/{TEAM}/envs/dev/apps/nope/logs",
            f"/ui/teams/{TEAM}/envs/dev/apps/nope/logs/stream",
            "/ui/teams/someone-else/envs/dev/apps/ticker/logs/stream",
        ):
            r = client.get(path)
            assert r.status_code == 404, path
        bad = client.get(f"/ui/teams/{TEAM}/envs/dev/apps/ticker/logs?since=soon")
        assert bad.status_code == 422
        assert "since" in bad.text


@needs_axe
def test_the_logs_views_have_no_serious_accessibility_violations(
    page: Any, hosts: Hosts, owner: str
) -> None:
    sign_in(page, hosts, owner)
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
    page.locator("#log-lines").get_by_text("tick 1", exact=True).wait_for(timeout=30_000)
    found = {"app with logs": axe(page)}
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker/logs")
    found["logs page"] = axe(page)
    page.goto(f"{hosts.url}/ui/teams/{TEAM}/mesh")
    found["mesh"] = axe(page)
    assert {k: v for k, v in found.items() if v} == {}
    if SHOTS:
        _screenshots(page.context.browser, hosts, owner, Path(SHOTS))


def _screenshots(browser: Any, hosts: Hosts, owner: str, folder: Path) -> None:
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme, viewport={"width": 1200, "height": 800})
        try:
            shot = context.new_page()
            sign_in(shot, hosts, owner)
            shot.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker")
            shot.locator("#log-lines").get_by_text("tick 5", exact=True).wait_for(timeout=30_000)
            shot.get_by_label("Search the lines").fill("tick")
            shot.locator("#app-logs").scroll_into_view_if_needed()
            shot.screenshot(path=str(folder / f"logs-live-{scheme}.png"))
            shot.goto(f"{hosts.url}/ui/teams/{TEAM}/envs/dev/apps/ticker/logs")
            shot.screenshot(path=str(folder / f"logs-page-{scheme}.png"))
        finally:
            context.close()


def test_the_mesh_page_draws_nodes_devices_and_apps_live(
    page: Any, hosts: Hosts, owner: str
) -> None:
    sign_in(page, hosts, owner)
    page.get_by_role("link", name="Mesh").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Mesh"
    mesh = page.get_by_test_id("mesh")
    assert mesh.locator("[data-peer=node-n1]").count() == 1  # n1 runs the team's replica
    ticker = mesh.locator("[data-peer=app-dev-ticker]")
    assert "#0 · n1 ·" in (ticker.text_content() or "")
    assert mesh.locator("path.edge.route").count() == 1  # service IP → the node of its replica
    page.evaluate("window.__same_document = true")
    page.locator("html[data-live=open]").wait_for()
    with AdminOf(hosts).client() as admin:
        r = admin.post(
            f"/api/v1/teams/{TEAM}/devices",
            json={"metadata": {"name": "olgas-laptop"}, "spec": {"owner": "olga"}},
        )
        assert r.status_code == 201, r.text
    mesh.locator("[data-peer=device-olgas-laptop]").wait_for(timeout=15_000)
    assert page.evaluate("window.__same_document") is True
    # no handshake yet: the peering is drawn as never seen, and says so in the table
    page.get_by_text("Peerings as a table").click()
    row = page.get_by_test_id("peerings").get_by_role("row", name="olgas-laptop")
    assert row.locator("td").last.inner_text() == "never"
    with AdminOf(hosts).client() as admin:
        admin.delete(f"/api/v1/teams/{TEAM}/devices/olgas-laptop")

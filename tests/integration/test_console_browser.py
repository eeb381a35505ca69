"""The web console in a real browser: Debian's chromium driven by Playwright (issue 13).

Sign in by pasting a token; apply YAML by paste; an app applied elsewhere appears in an
open page without a reload (the SSE watch); a viewer sees no write buttons; script
payloads in annotations and error messages are shown as text and never run; axe-core
(from ``make ui-deps``) finds no serious or critical accessibility violation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from consolekit import XSS_IMG, XSS_SCRIPT, browser, needs_axe, page, playwright_api, sign_in
from consolekit import axe as _axe
from test_api import make_team, make_user

from servers import RunningServer

__all__ = ["browser", "page"]  # fixtures, shared with the other console browser tests


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    make_team(server, unique_team)
    return unique_team


def test_sign_in_apply_by_paste_and_see_it(page: Any, server: RunningServer, team: str) -> None:
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    assert page.get_by_test_id("who").inner_text() == f"olga · owner in {team}"
    page.get_by_role("link", name="Apply YAML").click()
    page.get_by_label("Environment for resources that name none").select_option("dev")
    page.get_by_label("Resources (YAML)").fill(
        "kind: App\nmetadata: {name: web, labels: {tier: frontend}}\n"
        "spec: {command: [sleep, '60'], replicas: 2}\n"
    )
    page.get_by_role("button", name="Apply", exact=True).click()
    assert page.get_by_test_id("apply-results").inner_text() == "app/web created"
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev")
    assert page.locator("tr[data-app=web]").inner_text().startswith("web")
    page.get_by_role("link", name="web", exact=True).click()
    assert page.get_by_role("heading", level=1).inner_text() == "App web"
    page.get_by_role("link", name="YAML", exact=True).click()
    assert "replicas: 2" in page.locator("pre.yaml").inner_text()
    page.go_back()
    assert page.get_by_role("heading", level=1).inner_text() == "App web"
    assert page.errors == []


def test_an_app_applied_elsewhere_appears_without_reload(
    page: Any, server: RunningServer, team: str
) -> None:
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev")
    page.evaluate("window.__same_document = true")
    assert page.locator("tr[data-app=late]").count() == 0
    page.locator("html[data-live=open]").wait_for()  # the page follows its event stream
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "late"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    page.locator("tr[data-app=late]").wait_for(timeout=15_000)
    assert page.evaluate("window.__same_document") is True  # no reload happened
    assert page.locator("#live-banner").is_hidden()


def test_a_viewer_sees_no_write_buttons(page: Any, server: RunningServer, team: str) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    sign_in(page, server, make_user(server, team, "vic", "viewer"))
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev/apps/web")
    assert page.get_by_role("heading", level=1).inner_text() == "App web"
    for name in ("Scale", "Restart", "Delete", "Start intercept"):
        assert page.get_by_role("button", name=name).count() == 0
    assert page.get_by_role("button", name="Sign out").count() == 1


def test_script_payloads_are_shown_never_run(page: Any, server: RunningServer, team: str) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={
                "metadata": {"name": "web", "annotations": {"a": XSS_SCRIPT, "b": XSS_IMG}},
                "spec": {"command": ["sleep", "60"]},
            },
        )
        assert r.status_code == 201, r.text
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev/apps/web")
    page.wait_for_load_state("load")
    shown = page.locator("#app-summary").inner_text()
    assert XSS_SCRIPT in shown and XSS_IMG in shown
    assert page.locator("#app-summary img, #app-summary script").count() == 0
    # an admission error that quotes the payload is text too
    page.goto(f"{server.url}/ui/teams/{team}/apply")
    bad = {"kind": "App", "metadata": {"name": "x", "environment": "dev", "labels": {"a": XSS_IMG}}}
    page.get_by_label("Resources (YAML)").fill(json.dumps(bad))  # JSON is YAML too
    page.get_by_role("button", name="Apply", exact=True).click()
    assert XSS_IMG in page.get_by_test_id("apply-error").inner_text()
    page.goto(f"{server.url}/ui/teams/{team}/yaml/apps/web?env=dev")
    assert XSS_SCRIPT in page.locator("pre.yaml").inner_text()
    assert page.evaluate("window.__pwned") is None


@needs_axe
def test_pages_have_no_serious_accessibility_violations(
    page: Any, server: RunningServer, team: str
) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    page.goto(f"{server.url}/ui/signin")
    found = {"signin": _axe(page)}
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    base = f"{server.url}/ui/teams/{team}"
    for name, path in (
        ("overview", ""),
        ("environment", "/envs/dev"),
        ("app", "/envs/dev/apps/web"),
        ("apply", "/apply"),
        ("nodes", "/nodes"),
        ("devices", "/devices"),
        ("mesh", "/mesh"),
        ("workspaces", "/workspaces"),
        ("dev sessions", "/dev"),
        ("intercepts", "/intercepts"),
        ("policies", "/policies"),
        ("yaml", "/yaml/apps/web?env=dev"),
        ("edit", "/edit/apps/web?env=dev"),
    ):
        page.goto(base + path)
        found[name] = _axe(page)
    page.get_by_label("app/web (YAML)").fill(
        "kind: App\nmetadata: {name: web}\nspec: {replicas: -1}\n"
    )
    page.get_by_role("button", name="Save").click()
    found["edit refused"] = _axe(page)
    assert {k: v for k, v in found.items() if v} == {}


POLICY = """
kind: Policy
metadata: {name: require-owner}
spec:
  type: Validating
  resources: [apps]
  javascript: |
    if (!request.object.metadata.labels?.owner) {
      deny(`app ${request.name} has no owner label`);
    }
"""


def test_a_policy_denial_shows_its_message(page: Any, server: RunningServer, team: str) -> None:
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.goto(f"{server.url}/ui/teams/{team}/apply")
    page.get_by_label("Resources (YAML)").fill(POLICY)
    page.get_by_role("button", name="Apply", exact=True).click()
    assert page.get_by_test_id("apply-results").inner_text() == "policy/require-owner created"
    page.get_by_role("link", name="Policies").click()
    page.get_by_label("Environment for a resource that names none").select_option("dev")
    page.get_by_label("Resource (YAML)").fill(
        "kind: App\nmetadata: {name: web}\nspec: {command: [sleep, '60']}\n"
    )
    page.get_by_role("button", name="Try").click()
    assert "app web has no owner label" in page.get_by_test_id("apply-error").inner_text()
    with server.client() as admin:  # a try is a dry run: nothing stored
        assert admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").status_code == 404
    # applied for real, the denial is the same and lands in the violations report
    page.goto(f"{server.url}/ui/teams/{team}/apply?env=dev")
    page.get_by_label("Resources (YAML)").fill(
        "kind: App\nmetadata: {name: web}\nspec: {command: [sleep, '60']}\n"
    )
    page.get_by_role("button", name="Apply", exact=True).click()
    assert "app web has no owner label" in page.get_by_test_id("apply-error").inner_text()
    page.goto(f"{server.url}/ui/teams/{team}/policies")
    assert "app web has no owner label" in page.get_by_test_id("violations").inner_text()


def test_edit_in_place_highlights_the_field_at_fault(
    page: Any, server: RunningServer, team: str
) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev/apps/web")
    page.get_by_role("link", name="Edit YAML").click()
    box = page.get_by_label("app/web (YAML)")
    text = box.input_value()
    assert "replicas: 1\n" in text and "status:" not in text
    box.fill(text.replace("replicas: 1\n", "replicas: -1\n"))
    page.get_by_role("button", name="Save").click()
    # each Save is a new page: wait for its answer (the last page's is still shown a moment)
    expect = playwright_api.expect
    expect(page.get_by_test_id("edit-error")).to_contain_text("spec.replicas")
    expect(page.get_by_test_id("fault-line")).to_have_text("  replicas: -1", use_inner_text=False)
    # the caret is on that line of what the user wrote, selected
    picked = page.evaluate(
        "(() => { const a = document.getElementById('yaml');"
        " return a.value.slice(a.selectionStart, a.selectionEnd); })()"
    )
    assert picked == "  replicas: -1"
    # a label quoting a payload is refused and shown as text
    box = page.get_by_label("app/web (YAML)")
    labelled = yaml.safe_load(text)
    labelled["metadata"]["labels"] = {"a": XSS_IMG}
    box.fill(yaml.safe_dump(labelled))
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("edit-error")).to_contain_text(XSS_IMG)
    assert page.locator("#edit-error img, [data-testid=yaml-excerpt] img").count() == 0
    # meanwhile the system wrote the app's status (a new resourceVersion): not an edit
    # of anyone's, so the edit still goes through
    with server.client() as admin:
        path = f"/api/v1/teams/{team}/environments/dev/apps/web"
        version = admin.get(path).json()["metadata"]["resourceVersion"]
        r = admin.put(
            f"{path}/status",
            json={"metadata": {"resourceVersion": version}, "status": {"phase": "Pending"}},
        )
        assert r.status_code == 200, r.text
    # fixed, it is saved through admission and the app page says so
    box = page.get_by_label("app/web (YAML)")
    box.fill(text.replace("replicas: 1\n", "replicas: 3\n"))
    page.get_by_role("button", name="Save").click()
    # through admission and policies: on a loaded machine longer than expect's 5 s
    expect(page.get_by_role("heading", level=1)).to_have_text("App web", timeout=30_000)
    expect(page.get_by_role("status").filter(has_text="app/web configured")).to_have_count(1)
    with server.client() as admin:
        doc = admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").json()
        assert doc["spec"]["replicas"] == 3
    # an edit of a version someone else changed since is refused, not overwritten
    page.get_by_role("link", name="Edit YAML").click()
    box = page.get_by_label("app/web (YAML)")
    stale = box.input_value()
    with server.client() as admin:
        doc.pop("status", None)
        doc["spec"]["replicas"] = 4
        assert admin.put(f"/api/v1/teams/{team}/environments/dev/apps/web", json=doc).is_success
    box.fill(stale.replace("replicas: 3\n", "replicas: 5\n"))
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("edit-error")).to_contain_text("changed by someone else")
    with server.client() as admin:
        assert (
            admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").json()["spec"]["replicas"]
            == 4
        )
    assert page.evaluate("window.__pwned") is None
    assert page.errors == []


def test_a_viewer_reads_the_yaml_but_gets_no_save(
    page: Any, server: RunningServer, team: str
) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    sign_in(page, server, make_user(server, team, "vic", "viewer"))
    page.goto(f"{server.url}/ui/teams/{team}/envs/dev/apps/web")
    assert page.get_by_role("link", name="Edit YAML").count() == 0
    page.goto(f"{server.url}/ui/teams/{team}/edit/apps/web?env=dev")
    assert "kind: App" in page.locator("pre.yaml").inner_text()
    assert page.get_by_role("button", name="Save").count() == 0


def test_workspaces_and_dev_sessions_are_listed_live(
    page: Any, server: RunningServer, team: str
) -> None:
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.get_by_role("link", name="Workspaces").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Workspaces"
    page.evaluate("window.__same_document = true")
    page.locator("html[data-live=open]").wait_for()
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/workspaces",
            json={"metadata": {"name": "box"}, "spec": {"image": "localhost/box:1"}},
        )
        assert r.status_code == 201, r.text
    row = page.locator("tr[data-workspace=box]")
    row.wait_for(timeout=15_000)
    assert "Pending" in row.inner_text()  # no node can take it: no agent runs here
    assert row.get_by_test_id("ssh-command").count() == 0  # a shell only when Running
    assert page.evaluate("window.__same_document") is True
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "api"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/teams/{team}/environments/dev/apps/api/dev")
        assert r.status_code == 201, r.text
    page.get_by_role("link", name="Dev sessions").click()
    session = page.locator("tr[data-session='dev/api']")
    assert "admin" in session.inner_text()
    session.get_by_role("link", name="api").click()
    assert page.get_by_test_id("dev-session").inner_text().startswith("admin since ")
    with server.client() as admin:
        assert admin.delete(f"/api/v1/teams/{team}/environments/dev/apps/api/dev").is_success
    page.go_back()
    page.reload()
    assert page.locator("tr[data-session]").count() == 0
    assert page.errors == []


def test_apply_highlights_the_refused_field_in_the_paste(
    page: Any, server: RunningServer, team: str
) -> None:
    sign_in(page, server, make_user(server, team, "olga", "owner"))
    page.goto(f"{server.url}/ui/teams/{team}/apply?env=dev")
    page.get_by_label("Resources (YAML)").fill(
        "kind: Config\nmetadata: {name: settings}\ndata: {a: b}\n---\n"
        "kind: App\nmetadata: {name: web}\nspec:\n  command: [sleep, '60']\n  replicas: -1\n"
    )
    page.get_by_role("button", name="Apply", exact=True).click()
    error = page.get_by_test_id("apply-error").inner_text()
    assert "spec.replicas" in error and "(line 9)" in error
    assert page.get_by_test_id("fault-line").text_content() == "  replicas: -1"
    assert page.get_by_test_id("apply-results").inner_text() == "config/settings created"

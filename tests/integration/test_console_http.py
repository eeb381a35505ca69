"""The web console's rules over plain HTTP against a real control plane (issue 13).

Sign-in sets an HttpOnly, SameSite=Strict cookie; every page carries a strict
Content-Security-Policy; a form without its CSRF token changes nothing; another team's
URL is 404 as in the API; a viewer gets no write buttons and the server refuses the
write anyway; a one-time link from ``kled ui --print`` signs in once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
from test_api import make_team, make_user

from kled.cli.main import main as kled
from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    make_team(server, unique_team)
    return unique_team


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


@contextlib.contextmanager
def signed_in(server: RunningServer, token: str) -> Iterator[httpx.Client]:
    """A client holding a console session (its cookie), as a browser would."""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        page = browser.get("/ui/signin")
        data = {"csrf": csrf_of(page.text), "token": token, "next": "/ui"}
        r = browser.post("/ui/signin", data=data)
        assert r.status_code == 303, r.text
        yield browser


def app_yaml(name: str) -> str:
    return f"kind: App\nmetadata: {{name: {name}}}\nspec: {{command: [sleep, '60']}}\n"


def test_sign_in_sets_a_strict_http_only_cookie(server: RunningServer, team: str) -> None:
    token = make_user(server, team, "olga", "owner")
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/ui/signin")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        r = browser.post("/ui/signin", data={"csrf": csrf_of(page.text), "token": token})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        home = browser.get("/ui", follow_redirects=True)
        assert home.url.path == f"/ui/teams/{team}"
        assert "olga · owner in " + team in home.text
        # signing out ends the session: the same cookie no longer opens a page
        r = browser.post("/ui/signout", data={"csrf": csrf_of(home.text)})
        assert r.status_code == 303
        assert browser.get(f"/ui/teams/{team}").headers["location"].startswith("/ui/signin")


def test_a_bad_token_or_a_missing_csrf_token_does_not_sign_in(
    server: RunningServer, team: str
) -> None:
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/ui/signin")
        r = browser.post("/ui/signin", data={"csrf": csrf_of(page.text), "token": "nope"})
        assert r.status_code == 401
        assert "token: unknown, expired or revoked" in r.text
        token = make_user(server, team, "mia", "member")
        r = browser.post("/ui/signin", data={"token": token})
        assert r.status_code == 403
        assert "CSRF token is missing or stale" in r.text
        assert "set-cookie" not in r.headers


def test_a_post_without_its_csrf_token_changes_nothing(server: RunningServer, team: str) -> None:
    with (
        signed_in(server, make_user(server, team, "olga", "owner")) as browser,
        server.client() as admin,
    ):
        page = browser.get(f"/ui/teams/{team}/apply")
        r = browser.post(f"/ui/teams/{team}/apply", data={"yaml": app_yaml("web"), "env": "dev"})
        assert r.status_code == 403
        assert "CSRF token is missing or stale" in r.text
        r = browser.post(
            f"/ui/teams/{team}/apply",
            data={"yaml": app_yaml("web"), "env": "dev", "csrf": "forged"},
        )
        assert r.status_code == 403
        assert admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").status_code == 404
        r = browser.post(
            f"/ui/teams/{team}/apply",
            data={"yaml": app_yaml("web"), "env": "dev", "csrf": csrf_of(page.text)},
        )
        assert r.status_code == 200 and "app/web created" in r.text
        assert admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").status_code == 200


def test_apply_shows_the_admission_error_the_cli_shows(server: RunningServer, team: str) -> None:
    with signed_in(server, make_user(server, team, "olga", "owner")) as browser:
        csrf = csrf_of(browser.get(f"/ui/teams/{team}/apply").text)
        bad = "kind: App\nmetadata: {name: web}\nspec: {command: [sleep, '1'], replicas: -1}\n"
        r = browser.post(f"/ui/teams/{team}/apply", data={"yaml": bad, "env": "dev", "csrf": csrf})
        assert r.status_code == 422
        assert "<mark>spec.replicas</mark>" in r.text
        # the pasted text is kept for the user to correct
        assert "replicas: -1" in r.text


def test_another_teams_pages_do_not_exist(server: RunningServer, team: str) -> None:
    other = f"{team}x"
    make_team(server, other)
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{other}/environments/dev/apps",
            json={"metadata": {"name": "secret-app"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    with signed_in(server, make_user(server, team, "olga", "owner")) as browser:
        csrf = csrf_of(browser.get(f"/ui/teams/{team}").text)
        for path in (
            f"/ui/teams/{other}",
            f"/ui/teams/{other}/envs/dev",
            f"/ui/teams/{other}/envs/dev/apps/secret-app",
            f"/ui/teams/{other}/yaml/apps/secret-app?env=dev",
            f"/ui/teams/{other}/watch?kinds=App",
            f"/ui/teams/{other}/edit/apps/secret-app?env=dev",
            f"/ui/teams/{other}/envs/dev/apps/secret-app/logs/stream",
            f"/ui/teams/{other}/mesh",
            f"/ui/teams/{other}/workspaces",
            f"/ui/teams/{other}/dev",
        ):
            r = browser.get(path)
            assert r.status_code == 404, path
            assert "secret-app" not in r.text
        r = browser.post(f"/ui/teams/{other}/envs/dev/apps/secret-app/delete", data={"csrf": csrf})
        assert r.status_code == 404
    with server.client() as admin:
        assert admin.get(f"/api/v1/teams/{other}/environments/dev/apps/secret-app").is_success


def test_a_viewer_sees_no_write_buttons_and_is_refused_anyway(
    server: RunningServer, team: str
) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    with signed_in(server, make_user(server, team, "vic", "viewer")) as browser:
        page = browser.get(f"/ui/teams/{team}/envs/dev/apps/web")
        assert page.status_code == 200
        assert "App web" in page.text
        for action in ("/scale", "/restart", "/delete", "/intercepts"):
            assert f"apps/web{action}" not in page.text
        r = browser.post(
            f"/ui/teams/{team}/envs/dev/apps/web/scale",
            data={"csrf": csrf_of(page.text), "replicas": "5"},
        )
        assert r.status_code == 403
        assert "role viewer" in r.text
        edit = browser.get(f"/ui/teams/{team}/edit/apps/web?env=dev")
        assert edit.status_code == 200 and 'name="yaml"' not in edit.text  # no form
        text = "kind: App\nmetadata: {name: web, resourceVersion: '1'}\nspec: {replicas: 5}\n"
        r = browser.post(
            f"/ui/teams/{team}/edit/apps/web?env=dev",
            data={"csrf": csrf_of(page.text), "yaml": text},
        )
        assert r.status_code == 403
        assert "role viewer" in r.text
    with server.client() as admin:
        app = admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").json()
        assert app["spec"]["replicas"] == 1


def test_a_member_scales_and_restarts_an_app(server: RunningServer, team: str) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/apps",
            json={"metadata": {"name": "web"}, "spec": {"command": ["sleep", "60"]}},
        )
        assert r.status_code == 201, r.text
    with (
        signed_in(server, make_user(server, team, "mia", "member")) as browser,
        server.client() as admin,
    ):
        page = browser.get(f"/ui/teams/{team}/envs/dev/apps/web")
        csrf = csrf_of(page.text)
        r = browser.post(
            f"/ui/teams/{team}/envs/dev/apps/web/scale", data={"csrf": csrf, "replicas": "x"}
        )
        assert r.status_code == 422 and "<mark>replicas</mark>" in r.text
        r = browser.post(
            f"/ui/teams/{team}/envs/dev/apps/web/scale", data={"csrf": csrf, "replicas": "3"}
        )
        assert r.status_code == 303
        assert "app/web scaled to 3" in browser.get(r.headers["location"]).text
        browser.post(f"/ui/teams/{team}/envs/dev/apps/web/restart", data={"csrf": csrf})
        app = admin.get(f"/api/v1/teams/{team}/environments/dev/apps/web").json()
        assert app["spec"]["replicas"] == 3
        assert "kled.io/restartedAt" in app["metadata"]["annotations"]


def test_kled_ui_print_gives_a_link_that_signs_in_once(
    server: RunningServer, team: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token = make_user(server, team, "olga", "owner")
    code = kled(["--server", server.url, "--token", token, "ui", "--print"])
    link = capsys.readouterr().out.strip()
    assert code == 0 and link.startswith(f"{server.url}/ui/link/"), link
    with httpx.Client() as browser:
        r = browser.get(link)
        assert r.status_code == 303 and "samesite=strict" in r.headers["set-cookie"].lower()
        assert f"/ui/teams/{team}" in str(
            browser.get(f"{server.url}/ui", follow_redirects=True).url
        )
    with httpx.Client() as second:
        r = second.get(link)
        assert r.status_code == 401
        assert "spent or expired" in r.text
    assert kled(["--server", server.url, "--token", "bogus", "ui", "--print"]) == 1
    assert "token" in capsys.readouterr().err


def test_secret_values_only_for_those_who_may_reveal(server: RunningServer, team: str) -> None:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/environments/dev/secrets",
            json={"metadata": {"name": "db"}, "stringData": {"PASSWORD": "s3cr3t-value"}},
        )
        assert r.status_code == 201, r.text
    with signed_in(server, make_user(server, team, "mia", "member")) as browser:
        env = browser.get(f"/ui/teams/{team}/envs/dev")
        assert "PASSWORD" in env.text and "s3cr3t-value" not in env.text
        page = browser.get(f"/ui/teams/{team}/envs/dev/secrets/db")
        assert "PASSWORD" in page.text and "Reveal values" not in page.text
        r = browser.get(f"/ui/teams/{team}/envs/dev/secrets/db?reveal=true")
        assert r.status_code == 403 and "s3cr3t-value" not in r.text
    with signed_in(server, make_user(server, team, "olga", "owner")) as browser:
        page = browser.get(f"/ui/teams/{team}/envs/dev/secrets/db")
        assert "Reveal values" in page.text and "s3cr3t-value" not in page.text
        r = browser.get(f"/ui/teams/{team}/envs/dev/secrets/db?reveal=true")
        assert r.status_code == 200 and "s3cr3t-value" in r.text


def test_only_the_server_administrator_drains_a_node(server: RunningServer, team: str) -> None:
    node = f"{team}-node"
    with server.client() as admin:
        r = admin.post("/api/v1/nodes", json={"metadata": {"name": node}})
        assert r.status_code == 201, r.text
    with signed_in(server, make_user(server, team, "olga", "owner")) as browser:
        page = browser.get(f"/ui/teams/{team}/nodes")
        assert node in page.text and f"nodes/{node}/drain" not in page.text
        r = browser.post(f"/ui/teams/{team}/nodes/{node}/drain", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 403
    with signed_in(server, server.admin_token) as browser:
        page = browser.get(f"/ui/teams/{team}/nodes")
        r = browser.post(f"/ui/teams/{team}/nodes/{node}/drain", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303
        assert f"nodes/{node}/uncordon" in browser.get(r.headers["location"]).text
    with server.client() as admin:
        assert admin.get(f"/api/v1/nodes/{node}").json()["spec"]["unschedulable"] is True
        admin.delete(f"/api/v1/nodes/{node}")

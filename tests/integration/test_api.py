"""The HTTP API against a real server on SQLite and PostgreSQL.

One server per database serves the whole module; each test works in its own team (the
``team`` fixture), so no test sees another's resources.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from servers import RunningServer


def make_team(server: RunningServer, team: str) -> None:
    with server.client() as admin:
        r = admin.post("/api/v1/teams", json={"metadata": {"name": team}})
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/teams/{team}/environments", json={"metadata": {"name": "dev"}})
        assert r.status_code == 201, r.text


def make_user(server: RunningServer, team: str, name: str, role: str) -> str:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/users", json={"metadata": {"name": name}, "spec": {"role": role}}
        )
        assert r.status_code == 201, r.text
        r = admin.post(
            f"/api/v1/teams/{team}/tokens",
            json={"metadata": {"name": f"{name}-token"}, "spec": {"user": name}},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


def app_doc(name: str = "api", replicas: int = 1) -> dict[str, Any]:
    return {
        "kind": "App",
        "metadata": {"name": name, "labels": {"tier": "backend"}},
        "spec": {"command": ["sleep", "60"], "replicas": replicas, "ports": [{"port": 80}]},
    }


def apps(team: str) -> str:
    return f"/api/v1/teams/{team}/environments/dev/apps"


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    """A fresh team with a ``dev`` environment on the module's server."""
    make_team(server, unique_team)
    return unique_team


def settled_version(c: httpx.Client, path: str) -> str:
    """The resourceVersion once the control plane has given the app its service IP.

    The mesh controller writes status.ip right after a create, which (as in Kubernetes)
    moves resourceVersion; a race test must start after that write.
    """
    deadline = time.monotonic() + 10
    while True:
        doc = c.get(path).json()
        if doc.get("status", {}).get("ip") or time.monotonic() > deadline:
            version: str = doc["metadata"]["resourceVersion"]
            return version
        time.sleep(0.05)


def test_requests_without_a_valid_token_are_refused(server: RunningServer) -> None:
    r = httpx.get(server.url + "/api/v1/teams")
    assert r.status_code == 401
    assert r.json()["reason"] == "Unauthorized"
    r = httpx.get(server.url + "/api/v1/teams", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_crud_and_a_stale_put_gets_409(server: RunningServer, team: str) -> None:
    with server.client() as c:
        c.post(apps(team), json=app_doc())
        version = settled_version(c, f"{apps(team)}/api")
        body = app_doc(replicas=2)
        body["metadata"]["resourceVersion"] = version
        assert c.put(f"{apps(team)}/api", json=body).json()["result"] == "configured"
        stale = c.put(f"{apps(team)}/api", json=body)
        assert stale.status_code == 409
        assert "stale" in stale.json()["message"]
        assert c.get(f"{apps(team)}/api").json()["spec"]["replicas"] == 2
        assert c.delete(f"{apps(team)}/api").json()["result"] == "deleted"
        assert c.get(f"{apps(team)}/api").status_code == 404


def test_fifty_concurrent_puts_with_one_version_exactly_one_wins(
    server: RunningServer, team: str
) -> None:
    with server.client() as c:
        c.post(apps(team), json=app_doc())
        version = settled_version(c, f"{apps(team)}/api")
    barrier = threading.Barrier(50)

    def put(n: int) -> int:
        body = app_doc(replicas=n + 2)
        body["metadata"]["resourceVersion"] = version
        with server.client() as c:
            barrier.wait()
            return c.put(f"{apps(team)}/api", json=body).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(put, range(50)))
    assert codes.count(200) == 1, codes
    assert codes.count(409) == 49


def test_bad_input_is_a_clear_4xx_and_stores_nothing(server: RunningServer, team: str) -> None:
    with server.client() as c:
        bad = app_doc()
        bad["spec"]["ports"] = [{"port": 70000}]
        r = c.post(apps(team), json=bad)
        assert r.status_code == 422
        assert r.json()["field"] == "spec.ports[0].port"
        r = c.post(apps(team), json={**app_doc(), "metadata": {"name": "Not_A_Label"}})
        assert r.status_code == 422
        assert r.json()["field"] == "metadata.name"
        r = c.post(apps(team), content=b"{not json")
        assert r.status_code == 422
        r = c.post(f"/api/v1/teams/{team}/environments/dev/widgets", json={})
        assert r.status_code == 422
        r = c.post(apps(team), content=b"x" * (2 * 1024 * 1024))
        assert r.status_code == 413
        assert c.get(apps(team)).json()["items"] == []


def test_roles_decide_who_may_write_and_reveal(server: RunningServer, team: str) -> None:
    viewer = make_user(server, team, "vera", "viewer")
    member = make_user(server, team, "mia", "member")
    owner = make_user(server, team, "olga", "owner")
    secret = {"kind": "Secret", "metadata": {"name": "db"}, "stringData": {"pw": "hunter2"}}
    secrets = f"/api/v1/teams/{team}/environments/dev/secrets"
    with server.client(viewer) as c:
        assert c.post(apps(team), json=app_doc()).status_code == 403
        assert c.get(apps(team)).status_code == 200
    with server.client(member) as c:
        assert c.post(apps(team), json=app_doc()).status_code == 201
        assert c.post(secrets, json=secret).status_code == 201
        assert c.get(f"{secrets}/db").json()["data"] == {"pw": ""}
        assert c.get(f"{secrets}/db?reveal=true").status_code == 403
        user = {"metadata": {"name": "eve"}, "spec": {"role": "owner"}}
        assert c.post(f"/api/v1/teams/{team}/users", json=user).status_code == 403
        assert c.post("/api/v1/teams", json={"metadata": {"name": "other"}}).status_code == 403
    with server.client(owner) as c:
        assert c.get(f"{secrets}/db?reveal=true").json()["data"] == {"pw": "aHVudGVyMg=="}


def test_a_revoked_or_expired_token_stops_working(server: RunningServer, team: str) -> None:
    token = make_user(server, team, "mia", "member")
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/tokens",
            json={
                "metadata": {"name": "short"},
                "spec": {"user": "mia", "expiresAt": "2020-01-01T00:00:00Z"},
            },
        )
        expired = r.json()["token"]
        assert admin.delete(f"/api/v1/teams/{team}/tokens/mia-token").status_code == 200
    assert (
        httpx.get(server.url + apps(team), headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )
    assert (
        httpx.get(
            server.url + apps(team), headers={"Authorization": f"Bearer {expired}"}
        ).status_code
        == 401
    )


# Written for team acme; each test puts its own team in.
ROUTES = [
    ("GET", "/api/v1/teams/acme"),
    ("PUT", "/api/v1/teams/acme"),
    ("DELETE", "/api/v1/teams/acme"),
    ("GET", "/api/v1/teams/acme/environments"),
    ("GET", "/api/v1/teams/acme/environments/dev"),
    ("PUT", "/api/v1/teams/acme/environments/dev"),
    ("DELETE", "/api/v1/teams/acme/environments/dev"),
    ("POST", "/api/v1/teams/acme/environments"),
    ("POST", "/api/v1/teams/acme/environments/dev/clone"),
    ("GET", "/api/v1/teams/acme/apps"),
    ("GET", "/api/v1/teams/acme/apps?watch=true"),
    ("GET", apps("acme")),
    ("POST", apps("acme")),
    ("GET", f"{apps('acme')}/api"),
    ("PUT", f"{apps('acme')}/api"),
    ("PUT", f"{apps('acme')}/api/status"),
    ("DELETE", f"{apps('acme')}/api"),
    ("GET", "/api/v1/teams/acme/environments/dev/secrets/db?reveal=true"),
    ("GET", "/api/v1/teams/acme/users"),
    ("POST", "/api/v1/teams/acme/tokens"),
    ("GET", "/api/v1/teams/acme/policies"),
]


def test_another_teams_user_gets_404_on_every_route(server: RunningServer, team: str) -> None:
    bravo = f"{team}x"
    make_team(server, bravo)
    outsider = make_user(server, bravo, "bob", "owner")
    with server.client() as admin:
        admin.post(apps(team), json=app_doc())
    body = {"kind": "App", "metadata": {"name": "api"}, "spec": {"command": ["x"]}}
    with server.client(outsider) as c:
        for method, route in ROUTES:
            path = route.replace("/teams/acme", f"/teams/{team}")
            r = c.request(method, path, json=body if method in ("PUT", "POST") else None)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        doc = {**app_doc(), "metadata": {"name": "api", "team": team, "environment": "dev"}}
        assert c.post("/api/v1/apply", json=doc).status_code == 404
        assert [t["metadata"]["name"] for t in c.get("/api/v1/teams").json()["items"]] == [bravo]


# Written for team acme, as ROUTES.
GRAPHQL = [
    '{ resource(kind: "App", team: "acme", environment: "dev", name: "api") }',
    '{ resources(kind: "apps", team: "acme") { items } }',
    '{ resources(kind: "environments", team: "acme") { items } }',
    '{ resource(kind: "Team", name: "acme") }',
    'mutation { delete(kind: "App", team: "acme", environment: "dev", name: "api") { result } }',
    'mutation { cloneEnvironment(team: "acme", source: "dev", target: "x") { result } }',
    'mutation { apply(document: {kind: "App", metadata: {name: "api", team: "acme",'
    ' environment: "dev"}, spec: {command: ["x"]}}) { result } }',
]


def test_graphql_hides_other_teams_as_not_found(server: RunningServer, team: str) -> None:
    bravo = f"{team}x"
    make_team(server, bravo)
    outsider = make_user(server, bravo, "bob", "owner")
    with server.client() as admin:
        admin.post(apps(team), json=app_doc())
    with server.client(outsider) as c:
        for template in GRAPHQL:
            query = template.replace('"acme"', f'"{team}"')
            errors = c.post("/graphql", json={"query": query}).json().get("errors")
            assert errors and errors[0]["extensions"]["status"] == 404, (query, errors)
    with server.client() as admin:
        query = GRAPHQL[0].replace('"acme"', f'"{team}"')
        r = admin.post("/graphql", json={"query": query}).json()
        assert r["data"]["resource"]["metadata"]["name"] == "api"


def read_events(
    server: RunningServer, path: str, until: Any, limit: int = 200
) -> list[dict[str, Any]]:
    """Events of a watch, up to and including the first for which ``until(event)`` holds."""
    events: list[dict[str, Any]] = []
    with server.client() as c, c.stream("GET", path, timeout=30) as r:
        assert r.status_code == 200
        event: dict[str, Any] = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event.update(json.loads(line[6:]))
            elif line == "" and "id" in event:
                events.append(event)
                if until(event) or len(events) >= limit:
                    break
                event = {}
    return events


def named(name: str, kind: str = "ADDED") -> Any:
    return lambda e: e["type"] == kind and e["object"]["metadata"]["name"] == name


def test_a_resumed_watch_misses_and_repeats_nothing(server: RunningServer, team: str) -> None:
    with server.client() as c:
        start = int(c.get(apps(team)).json()["metadata"]["resourceVersion"])
        for n in range(6):
            c.post(apps(team), json=app_doc(f"app-{n}"))
    watch = f"{apps(team)}?watch=true&resourceVersion="
    first = read_events(server, f"{watch}{start}", named("app-2"))
    with server.client() as c:
        for n in range(6, 9):
            c.post(apps(team), json=app_doc(f"app-{n}"))
        c.delete(f"{apps(team)}/app-0")
    rest = read_events(server, f"{watch}{first[-1]['id']}", named("app-0", "DELETED"))
    whole = read_events(server, f"{watch}{start}", named("app-0", "DELETED"))
    assert [e["id"] for e in first + rest] == [e["id"] for e in whole]
    added = [e["object"]["metadata"]["name"] for e in whole if e["type"] == "ADDED"]
    assert added == [f"app-{n}" for n in range(9)]
    ids = [e["id"] for e in whole]
    assert ids == sorted(set(ids))


def test_list_with_selector_and_pagination(server: RunningServer, team: str) -> None:
    with server.client() as c:
        for n in range(7):
            doc = app_doc(f"app-{n}")
            doc["metadata"]["labels"] = {"tier": "backend" if n % 2 else "frontend"}
            c.post(apps(team), json=doc)
        page = c.get(f"{apps(team)}?limit=3").json()
        assert len(page["items"]) == 3 and page["metadata"]["continue"]
        rest = c.get(f"{apps(team)}?limit=10&continue={page['metadata']['continue']}").json()
        assert len(rest["items"]) == 4 and rest["metadata"]["continue"] is None
        picked = c.get(f"/api/v1/teams/{team}/apps", params={"labelSelector": "tier!=frontend"})
        assert [i["metadata"]["name"] for i in picked.json()["items"]] == [
            "app-1",
            "app-3",
            "app-5",
        ]
        assert c.get(f"{apps(team)}?labelSelector=tier in (").status_code == 422


def test_cloning_an_environment_copies_apps_configs_and_secrets(
    server: RunningServer, team: str
) -> None:
    with server.client() as c:
        c.post(apps(team), json=app_doc())
        c.post(
            f"/api/v1/teams/{team}/environments/dev/configs",
            json={"metadata": {"name": "cfg"}, "data": {"a": "1"}},
        )
        c.post(
            f"/api/v1/teams/{team}/environments/dev/secrets",
            json={"metadata": {"name": "db"}, "stringData": {"pw": "x"}},
        )
        r = c.post(f"/api/v1/teams/{team}/environments/dev/clone", json={"name": "staging"})
        assert r.status_code == 201, r.text
        base = f"/api/v1/teams/{team}/environments/staging"
        assert c.get(f"{base}/apps/api").json()["spec"]["replicas"] == 1
        assert c.get(f"{base}/configs/cfg").json()["data"] == {"a": "1"}
        assert c.get(f"{base}/secrets/db?reveal=true").json()["data"] == {"pw": "eA=="}


def test_health_metrics_and_openapi(server: RunningServer) -> None:
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    with server.client() as c:
        c.get("/api/v1/teams")
        metrics = c.get("/metrics").text
    assert "kled_api_requests_total" in metrics
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/api/v1/teams/{team}/environments/{env}/apps" in paths


def test_the_unix_socket_serves_the_same_api(server: RunningServer) -> None:
    transport = httpx.HTTPTransport(uds=str(server.settings.socket_path()))
    with httpx.Client(transport=transport, base_url="http://kled") as c:
        r = c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {server.admin_token}"})
        assert r.json()["serverAdmin"] is True


def test_the_bootstrap_token_is_written_once_with_mode_0600(server: RunningServer) -> None:
    path = server.settings.data_dir / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert server.plane.admin_token == path.read_text().strip()

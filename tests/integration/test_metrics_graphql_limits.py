"""``/metrics`` needs a token and shows a team only its own series; GraphQL is bounded.

Issue 10, item 8: ``/metrics`` answered anyone and named every team's policies; a GraphQL
query of 100 aliases held the server for 30 s; every GraphQL denial was logged as an ERROR
with a traceback.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from test_api import make_team, make_user

from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    make_team(server, unique_team)
    return unique_team


def policy(team: str, name: str) -> dict[str, object]:
    return {
        "kind": "Policy",
        "metadata": {"name": name, "team": team},
        "spec": {"resources": ["apps"], "javascript": "allow()"},
    }


def app(name: str) -> dict[str, object]:
    return {"kind": "App", "metadata": {"name": name}, "spec": {"command": ["sleep", "60"]}}


def run_a_policy(server: RunningServer, team: str, name: str) -> None:
    with server.client() as root:
        r = root.post(f"/api/v1/teams/{team}/policies", json=policy(team, name))
        assert r.status_code == 201, r.text
        r = root.post(f"/api/v1/teams/{team}/environments/dev/apps", json=app(f"{name}-app"))
        assert r.status_code == 201, r.text


def scrape(server: RunningServer, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.url + "/metrics", headers=headers)


def test_metrics_needs_a_token(server: RunningServer) -> None:
    for token in (None, "kled_nosuchtoken"):
        r = scrape(server, token)
        assert r.status_code == 401, r.text
        assert r.json()["message"].startswith("missing, unknown, expired or revoked token")
        assert "kled_" not in r.text.replace("kled token create", "")
    r = scrape(server, server.admin_token)
    assert r.status_code == 200
    assert "kled_api_requests_total" in r.text


def test_a_team_sees_only_its_own_series(server: RunningServer, team: str) -> None:
    other = f"{team}x"
    make_team(server, other)
    run_a_policy(server, team, "ours")
    run_a_policy(server, other, "theirs")
    viewer = make_user(server, team, "vic", "viewer")
    text = scrape(server, viewer).text
    assert f'policy="{team}/ours"' in text
    assert f'policy="{other}/theirs"' not in text
    assert "kled_api_requests_total" not in text  # server-wide: not a team's
    everything = scrape(server, server.admin_token).text
    assert f'policy="{team}/ours"' in everything and f'policy="{other}/theirs"' in everything


def test_a_metrics_token_reads_metrics_and_nothing_else(server: RunningServer, team: str) -> None:
    run_a_policy(server, team, "watched")
    with server.client() as root:
        r = root.post("/api/v1/metrics-tokens", json={"name": "prom", "ttl": "30d"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        listed = root.get("/api/v1/metrics-tokens").json()["items"]
        assert [(t["name"], t["revoked"]) for t in listed if t["name"] == "prom"] == [
            ("prom", False)
        ]
    text = scrape(server, token).text
    assert "kled_api_requests_total" in text and f'policy="{team}/watched"' in text
    with server.client(token) as c:
        r = c.get("/api/v1/teams")
        assert r.status_code == 401, r.text
    owner = make_user(server, team, "olga", "owner")
    with server.client(owner) as c:
        r = c.post("/api/v1/metrics-tokens", json={"name": "mine"})
        assert r.status_code == 403
        assert r.json()["message"] == "only the server administrator may create metrics tokens"
    with server.client() as root:
        assert root.delete("/api/v1/metrics-tokens/prom").json() == {
            "name": "prom",
            "revoked": True,
        }
        assert root.delete("/api/v1/metrics-tokens/nosuch").status_code == 404
    assert scrape(server, token).status_code == 401
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert paths["/api/v1/metrics-tokens"]["post"]["requestBody"]["required"] is True


# --- GraphQL limits ------------------------------------------------------------------------


def graphql(server: RunningServer, query: str, token: str | None = None) -> httpx.Response:
    with server.client(token) as c:
        return c.post("/graphql", json={"query": query})


def errors_of(r: httpx.Response) -> list[str]:
    return [e["message"] for e in r.json().get("errors") or []]


def test_graphql_refuses_too_many_aliases(server: RunningServer, team: str) -> None:
    many = " ".join(
        f'a{i}: resources(kind: "apps", team: "{team}") {{ items }}' for i in range(100)
    )
    messages = errors_of(graphql(server, "{ " + many + " }"))
    assert messages[0] == "100 aliases found. Allowed: 30", messages


def test_graphql_refuses_a_deep_query(server: RunningServer) -> None:
    deep = "query deep { whoami " + "{ a " * 12 + "}" * 13
    messages = errors_of(graphql(server, deep))
    assert messages[0] == "'deep' exceeds maximum operation depth of 10", messages


def test_graphql_refuses_a_costly_query(server: RunningServer, team: str) -> None:
    fields = " ".join(
        f'r{i}: resources(kind: "apps", team: "{team}") {{ items }}' for i in range(20)
    )
    messages = errors_of(graphql(server, "query wide { " + fields + " }"))
    assert messages == [
        "operation 'wide' costs 220, over the limit of 100 (a top-level field costs 10, "
        "any other 1): split it into smaller requests"
    ]
    # A query within the limits still runs.
    r = graphql(server, f'{{ a: resources(kind: "apps", team: "{team}") {{ items }} }}')
    assert r.json() == {"data": {"a": {"items": []}}}


def test_graphql_introspection_stays_open(server: RunningServer) -> None:
    """The query GraphiQL and code generators send is within every limit."""
    from graphql import get_introspection_query

    r = graphql(server, get_introspection_query(descriptions=True))
    assert "errors" not in r.json(), r.json()["errors"]
    assert r.json()["data"]["__schema"]["queryType"]["name"] == "Query"


def test_graphql_denials_are_logged_at_info_on_one_line(
    server: RunningServer, team: str, caplog: pytest.LogCaptureFixture
) -> None:
    viewer = make_user(server, team, "vic", "viewer")
    mutation = (
        'mutation { apply(document: {kind: "App", metadata: {name: "x", team: "'
        + team
        + '", environment: "dev"}, spec: {command: ["x"]}}) { result } }'
    )
    with caplog.at_level(logging.DEBUG):
        r = graphql(server, mutation, viewer)
    assert r.json()["errors"][0]["extensions"]["status"] == 403
    ours = [rec for rec in caplog.records if "denied" in rec.getMessage() or rec.exc_info]
    assert [(rec.levelname, rec.name) for rec in ours] == [("INFO", "kled.api.authz")]
    assert "\n" not in ours[0].getMessage() and ours[0].exc_info is None
    served = ("kled.api", "strawberry")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.name.startswith(served)]


def test_graphql_a_document_not_an_object_is_invalid_and_no_fault(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # found by the GraphQL fuzz: answered INVALID, but logged as a fault with its traceback
    with caplog.at_level(logging.DEBUG):
        r = graphql(server, "mutation { apply(document: [1, 2]) { result } }")
    [error] = r.json()["errors"]
    assert error["message"] == "document: must be a JSON object"
    assert error["extensions"] == {"code": "INVALID", "status": 422, "field": "document"}
    served = ("kled.api", "strawberry")
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(served)
    ]

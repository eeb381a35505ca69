"""Reads answered in front of the router give what the routes give, errors included.

``api/fastreads.py`` answers ``GET`` of resources and pages; a request with a parameter it
does not read itself (``reveal=False``, ``watch=False``: FastAPI's spellings) goes on to the
routes. Each read is sent both ways to a real server and must get the same status and body.
"""

from __future__ import annotations

import time

import httpx
import pytest
from test_api import app_doc, apps, make_team, make_user

from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


def both_ways(c: httpx.Client, path: str, **params: str) -> httpx.Response:
    """GET ``path`` through the fast layer and through the routes; they must agree.

    The controllers write statuses (an app's IP) meanwhile, which moves what is read: the
    pair is read again until nothing was written between the two.
    """
    slow_params = dict(params)
    if path.rstrip("/").split("/")[-1] in ("apps", "configs", "environments", "users", "teams"):
        slow_params["watch"] = "False"
    else:
        slow_params["reveal"] = "False"
    for _ in range(100):
        fast = c.get(path, params=params)
        routed = c.get(path, params=slow_params)
        if (fast.status_code, fast.json()) == (routed.status_code, routed.json()):
            break
        time.sleep(0.1)
    assert (fast.status_code, fast.json()) == (routed.status_code, routed.json()), path
    assert fast.headers["content-type"] == routed.headers["content-type"]
    return fast


def test_reads_answer_as_the_routes_do(server: RunningServer, unique_team: str) -> None:
    team, other = unique_team, f"{unique_team}-x"
    make_team(server, team)
    make_team(server, other)
    viewer = make_user(server, team, "vera", "viewer")
    with server.client() as admin:
        for i in range(5):
            r = admin.post(apps(team), json=app_doc(f"app{i}"))
            assert r.status_code == 201, r.text
        got = both_ways(admin, f"{apps(team)}/app1")
        assert got.json()["metadata"]["name"] == "app1"
        page = both_ways(admin, apps(team), limit="2")
        assert [a["metadata"]["name"] for a in page.json()["items"]] == ["app0", "app1"]
        token = page.json()["metadata"]["continue"]
        rest = both_ways(admin, apps(team), limit="2", **{"continue": token})
        assert [a["metadata"]["name"] for a in rest.json()["items"]] == ["app2", "app3"]
        assert both_ways(admin, apps(team), labelSelector="tier=backend").status_code == 200
        assert both_ways(admin, f"/api/v1/teams/{team}/apps").status_code == 200
        assert both_ways(admin, f"/api/v1/teams/{team}").json()["metadata"]["name"] == team
        assert both_ways(admin, f"/api/v1/teams/{team}/environments/dev").status_code == 200
        assert both_ways(admin, f"/api/v1/teams/{team}/users").status_code == 200
        assert both_ways(admin, "/api/v1/teams").status_code == 200
        # errors: a missing object, a bad selector, a limit too large, a team that is not
        assert both_ways(admin, f"{apps(team)}/nope").status_code == 404
        bad = both_ways(admin, apps(team), labelSelector="tier in (")
        assert bad.json()["kind"] == "Status"
        assert both_ways(admin, apps(team), limit="5000").json()["field"] == "limit"
        assert both_ways(admin, apps("ghost")).status_code == 404
    with server.client(viewer) as c:
        assert both_ways(c, f"{apps(team)}/app1").status_code == 200
        # another team's paths do not exist for this user
        assert both_ways(c, f"{apps(other)}/app1").status_code == 404
        assert both_ways(c, f"/api/v1/teams/{other}").status_code == 404
    with httpx.Client(base_url=server.url) as anonymous:
        refused = both_ways(anonymous, f"{apps(team)}/app1")
        assert refused.status_code == 401
        assert "kled login" in refused.json()["message"]
        assert both_ways(anonymous, apps(team)).status_code == 401


def test_reads_the_layer_leaves_to_the_routes(server: RunningServer, unique_team: str) -> None:
    make_team(server, unique_team)
    with server.client() as admin:
        # a malformed limit is FastAPI's to refuse, as before
        r = admin.get(apps(unique_team), params={"limit": "many"})
        assert r.status_code == 422 and r.json()["field"] == "query.limit"
        # a kind by an alias is told the path that is right
        r = admin.get(f"/api/v1/teams/{unique_team}/environments/dev/app")
        assert r.status_code == 422 and "apps" in r.json()["message"]
        # the requests are counted under their route, as every other
        r = admin.get(f"{apps(unique_team)}/none")
        assert r.status_code == 404
        metrics = admin.get("/metrics").text
        assert 'route="/api/v1/teams/{team}/environments/{env}/apps/{name}"' in metrics

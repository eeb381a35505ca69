"""``POST /api/v1/apply`` of a List: one result per document, each its own transaction."""

from __future__ import annotations

from typing import Any

import pytest
from test_api import app_doc, apps, make_team

from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


def placed(team: str, doc: dict[str, Any]) -> dict[str, Any]:
    doc["metadata"].update(team=team, environment="dev")
    return doc


def names(server: RunningServer, team: str) -> list[str]:
    with server.client() as c:
        return [a["metadata"]["name"] for a in c.get(apps(team)).json()["items"]]


def test_a_list_is_applied_one_result_each(server: RunningServer, unique_team: str) -> None:
    team = unique_team
    make_team(server, team)
    docs = [placed(team, app_doc(f"b{i:03d}")) for i in range(200)]
    with server.client() as c:
        r = c.post("/api/v1/apply", json={"kind": "List", "items": docs})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["result"] for x in results] == ["created"] * 200
        assert results[7]["object"]["metadata"]["name"] == "b007"
        assert len(names(server, team)) == 200
        docs[3]["spec"]["replicas"] = 2
        again = c.post("/api/v1/apply", json=docs).json()["results"]  # a bare array too
        assert [x["result"] for x in again[2:5]] == ["unchanged", "configured", "unchanged"]
        dry = [placed(team, app_doc("dry"))]
        r = c.post("/api/v1/apply", params={"dryRun": "true"}, json={"kind": "List", "items": dry})
        assert r.json()["results"][0]["result"] == "created"
        assert "dry" not in names(server, team)


def test_a_refused_document_stops_the_rest(server: RunningServer, unique_team: str) -> None:
    team = unique_team
    make_team(server, team)
    bad = placed(team, app_doc("bad"))
    bad["spec"]["replicas"] = "many"
    docs = [placed(team, app_doc("first")), bad, placed(team, app_doc("after"))]
    with server.client() as c:
        alone = c.post("/api/v1/apply", json=bad)
        assert alone.status_code == 422
        results = c.post("/api/v1/apply", json={"kind": "List", "items": docs}).json()["results"]
        assert results[0]["result"] == "created"
        # the same Status the document gets when sent alone
        assert results[1] == {"error": alone.json()}
        assert results[2] == {"result": "skipped"}
        assert names(server, team) == ["first"]
        # continueOnError applies the ones after it; a non-object names its place
        docs = [bad, "nonsense", placed(team, app_doc("after"))]
        r = c.post("/api/v1/apply", params={"continueOnError": "true"}, json=docs)
        results = r.json()["results"]
        assert results[0]["error"]["field"] == alone.json()["field"]
        assert results[1]["error"]["field"] == "items[1]"
        assert results[2]["result"] == "created"
        assert names(server, team) == ["after", "first"]


def test_a_batch_too_large_is_refused_whole(server: RunningServer, unique_team: str) -> None:
    make_team(server, unique_team)
    docs = [placed(unique_team, app_doc(f"x{i}")) for i in range(1001)]
    with server.client() as c:
        r = c.post("/api/v1/apply", json={"kind": "List", "items": docs})
        assert r.status_code == 422 and r.json()["field"] == "items"
        assert c.post("/api/v1/apply", json={"kind": "List", "items": 3}).status_code == 422
    assert names(server, unique_team) == []

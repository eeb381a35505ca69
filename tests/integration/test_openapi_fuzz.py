"""The OpenAPI document is complete, and schemathesis over all of it finds no 5xx.

The fuzz is bounded (a few examples per operation and mode, a time budget per operation)
so that it fits in ``make test``; ``bench/fuzz.py`` runs the same with a larger budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fuzzing
from servers import RunningServer


@pytest.fixture(scope="module")
def document_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(tmp_path_factory.mktemp("openapi"), None).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def document(document_server: RunningServer) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(document_server.url + "/openapi.json").json()
    return doc


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_every_kind_has_its_own_paths_with_a_body_schema(document: dict[str, Any]) -> None:
    paths = document["paths"]
    create = paths["/api/v1/teams/{team}/environments/{env}/apps"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/App"}
    app = document["components"]["schemas"]["App"]
    assert {"metadata", "spec"} <= set(app["properties"])
    assert "get" in paths["/api/v1/teams/{team}/apps"]  # apps across the team's environments
    assert "put" in paths["/api/v1/teams/{team}"]  # a Team, named like every team path
    assert not [p for p in paths if "{plural}" in p]


def test_every_path_parameter_is_declared_and_every_refusal_is_a_status(
    document: dict[str, Any],
) -> None:
    problems = []
    for method, path, op in _operations(document):
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        if declared != set(re.findall(r"{(\w+)}", path)):
            problems.append(f"{method} {path}: path parameters {sorted(declared)}")
        if method in ("POST", "PUT") and "requestBody" not in op:
            problems.append(f"{method} {path}: no request body")
        for code in ("401", "403", "404", "409", "413", "422"):
            content = op["responses"].get(code, {}).get("content", {})
            if content.get("application/json", {}).get("schema") != {
                "$ref": "#/components/schemas/Status"
            }:
                problems.append(f"{method} {path}: {code} is not a Status")
        # an agent shows its join token in the body; a push webhook is signed with its secret
        public = path in (
            "/api/v1/nodes/register",
            "/api/v1/teams/{team}/gitsources/{name}/webhook",
        )
        # a node's agent fetches a workspace's source with its Message Office login
        wanted = [{"node": []}] if path.startswith("/api/v1/nodes/{node}/") else [{"bearer": []}]
        if path.startswith("/api/") and not public and op.get("security") != wanted:
            problems.append(f"{method} {path}: no bearer security")
    assert problems == []


def test_options_answers_allow_and_a_wrong_method_names_the_right_ones(
    document_server: RunningServer,
) -> None:
    url = document_server.url
    r = httpx.options(url + "/api/v1/teams/acme/environments/dev/apps/api")
    assert r.status_code == 204
    assert r.headers["Allow"] == "DELETE, GET, OPTIONS, PUT"
    r = httpx.patch(url + "/api/v1/teams/acme/environments/dev/apps")
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, OPTIONS, POST"
    assert r.json()["kind"] == "Status"
    r = httpx.options(url + "/no/such/path")
    assert r.status_code == 404
    assert r.json()["reason"] == "NotFound"


def test_a_kind_by_alias_or_at_the_wrong_path_is_told_the_right_one(
    document_server: RunningServer,
) -> None:
    with document_server.client() as c:
        c.post("/api/v1/teams", json={"metadata": {"name": "acme"}, "spec": {}})
        r = c.get("/api/v1/teams/acme/app")
        assert r.status_code == 422
        assert "use the plural 'apps'" in r.json()["message"]
        r = c.post("/api/v1/apps", json={})
        assert r.status_code == 422
        assert "apps live at /api/v1/teams/{team}/environments/{env}/apps" in r.json()["message"]


@pytest.mark.parametrize(
    "body",
    [b"5", b"[1, 2]", b'"query"', b"\xa3\xff", b"[" * 5000 + b"]" * 5000],
    ids=["number", "list", "string", "not-utf8", "deep"],
)
def test_graphql_refuses_a_body_it_cannot_use_with_400(
    document_server: RunningServer, body: bytes
) -> None:
    with document_server.client() as c:
        r = c.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


@pytest.mark.slow
def test_schemathesis_over_every_operation_finds_no_server_error(tmp_path: Path) -> None:
    server = RunningServer(tmp_path, None, embedded_nats=True).start()
    try:
        fuzzing.seed(server.url, server.admin_token)
        report = fuzzing.run(server.url, server.admin_token, max_examples=5, budget_seconds=120)
    finally:
        server.stop()
    findings = [f"{f.operation} → {f.status}: {f.problem} [{f.request}]" for f in report.findings]
    summary = json.dumps(report.summary())
    assert report.server_errors == 0, summary + "\n" + "\n".join(findings)
    assert report.violations == 0, summary + "\n" + "\n".join(findings)
    assert report.transport_errors == 0, summary + "\n" + "\n".join(findings)
    assert len(report.covered) == report.operations, summary


def test_a_status_write_with_metadata_not_an_object_is_refused_with_422(
    document_server: RunningServer,
) -> None:
    # found by the fuzz: the status route read metadata.resourceVersion off a list (500)
    with document_server.client() as c:
        c.post("/api/v1/teams", json={"metadata": {"name": "stat"}, "spec": {}})
        r = c.put("/api/v1/teams/stat/status", json={"status": {}, "metadata": [1]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "metadata"

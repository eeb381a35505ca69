"""Issue 10: no member's request can break the server; every bad input is a clear 4xx.

Each test here reproduces a defect found by probing a fresh server and asserts what the
user sees now: a 4xx that names the field, nothing stored, the rest of the team unharmed.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from integration.test_api import app_doc, apps, make_team, make_user
from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    make_team(server, unique_team)
    return unique_team


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def test_members_and_owners_may_not_write_status(server: RunningServer, team: str) -> None:
    member = make_user(server, team, "mem", "member")
    owner = make_user(server, team, "own", "owner")
    with server.client() as admin:
        assert admin.post(apps(team), json=app_doc()).status_code == 201
    for token in (member, owner):
        with server.client(token) as c:
            r = c.put(f"{apps(team)}/api/status", json={"status": {"phase": "Running"}})
            assert r.status_code == 403, r.text
            assert "may not update-status" in r.json()["message"]
    with server.client() as admin:
        doc = admin.get(f"{apps(team)}/api").json()
        assert doc["status"].get("phase") != "Running" or doc["status"].get("replicas")


def test_a_deep_status_is_refused_even_from_the_administrator(
    server: RunningServer, team: str
) -> None:
    with server.client() as admin:
        assert admin.post(apps(team), json=app_doc()).status_code == 201
        r = admin.put(f"{apps(team)}/api/status", json={"status": {"x": nested(488)}})
        assert r.status_code == 422, r.text
        assert r.json()["field"].startswith("status.x")
        assert "nested deeper than 32" in r.json()["message"]
        # the app is whole: it can be read, listed and deleted
        assert admin.get(f"{apps(team)}/api").status_code == 200
        assert admin.get(apps(team)).status_code == 200
        assert admin.delete(f"{apps(team)}/api").status_code == 200


def test_status_sent_with_a_create_is_the_systems_not_the_users(
    server: RunningServer, team: str
) -> None:
    member = make_user(server, team, "mem", "member")
    body = app_doc()
    body["status"] = {"phase": "Running", "x": nested(40)}
    with server.client(member) as c:
        r = c.post(apps(team), json=body)
        assert r.status_code == 422  # bounded even where it would be dropped
        body["status"] = {"phase": "Liar"}
        r = c.post(apps(team), json=body)
        assert r.status_code == 201, r.text
        assert c.get(f"{apps(team)}/api").json()["status"].get("phase") != "Liar"


def test_a_lone_surrogate_is_refused_and_nothing_is_stored(
    server: RunningServer, team: str
) -> None:
    raw = (
        '{"kind": "App", "metadata": {"name": "bad", "annotations": {"a": "\\ud800"}},'
        ' "spec": {"command": ["sleep", "1"]}}'
    )
    with server.client() as c:
        r = c.post(apps(team), content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "metadata.annotations.a"
        assert "UTF-8" in r.json()["message"]
        assert c.get(f"{apps(team)}/bad").status_code == 404
        listed = c.get(apps(team))
        assert listed.status_code == 200
        assert listed.json()["items"] == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("apps", {"metadata": {"name": "aapp\n"}}, "metadata.name"),
        ("apps", {"metadata": {"name": "api", "labels": {"k\n": "v"}}}, "metadata.labels"),
        ("apps", {"metadata": {"name": "api", "labels": {"k": "v\n"}}}, "metadata.labels"),
        ("configs", {"metadata": {"name": "c"}, "data": {"key\n": "v"}}, "data"),
    ],
)
def test_names_and_keys_ending_in_a_newline_are_refused(
    server: RunningServer, team: str, path: str, body: dict[str, Any], field: str
) -> None:
    doc = {**app_doc(), **body} if path == "apps" else {"kind": "Config", **body}
    with server.client() as c:
        r = c.post(f"/api/v1/teams/{team}/environments/dev/{path}", json=doc)
        assert r.status_code == 422, r.text
        assert r.json()["field"].startswith(field)
        r = c.post(f"/api/v1/teams/{team}/environments", json={"metadata": {"name": "dev\n"}})
        assert r.status_code == 422
        assert c.get(f"/api/v1/teams/{team}/environments/dev/{path}").json()["items"] == []


def test_json_nested_500_deep_is_a_4xx(server: RunningServer, team: str) -> None:
    raw = '{"kind": "App", "metadata": {"name": "x"}, "spec": ' + "[" * 5000 + "]" * 5000 + "}"
    with server.client() as c:
        r = c.post(apps(team), content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert "nested deeper" in r.json()["message"]
        r = c.post(apps(team), json={**app_doc(), "spec": {"command": nested(500)}})
        assert r.status_code == 422
        assert "nested deeper than 32" in r.json()["message"]


def test_an_absurd_ttl_is_a_4xx_for_api_and_node_tokens(server: RunningServer, team: str) -> None:
    make_user(server, team, "mem", "member")
    with server.client() as c:
        r = c.post(
            f"/api/v1/teams/{team}/tokens",
            json={"metadata": {"name": "t"}, "spec": {"user": "mem", "ttl": "99999999999999999d"}},
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "spec.ttl"
        r = c.post("/api/v1/node-tokens", json={"ttl": "99999999999999999d"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "ttl"


def test_a_chunked_body_over_the_limit_gets_413(server: RunningServer, team: str) -> None:
    def chunks() -> Any:
        yield b'{"kind": "App", "metadata": {"name": "big"}, "spec": {"x": "'
        for _ in range(2 * 1024):
            yield b"a" * 1024
        yield b'"}}'

    with server.client() as c:
        r = c.post(apps(team), content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["reason"] == "RequestEntityTooLarge"
        assert c.get(f"{apps(team)}/big").status_code == 404
        # a chunked body within the limit still works
        body = httpx.Response(200, json=app_doc("fine")).content
        r = c.post(apps(team), content=iter([body]), headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text


def test_an_oversized_document_is_refused(server: RunningServer, team: str) -> None:
    doc = app_doc()
    doc["metadata"]["annotations"] = {f"k{i}": "v" * 1000 for i in range(300)}
    with server.client() as c:
        r = c.post(apps(team), json=doc)
        assert r.status_code == 422, r.text
        assert "over the limit of 262144" in r.json()["message"]


def test_raw_socket_chunked_body_is_refused_before_the_route(server: RunningServer) -> None:
    """As a fuzzer sends it: chunked, no Content-Length, to a route that parses JSON."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = (
            f"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{server.admin_token}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n"
        )
        s.sendall(head.encode())
        chunk = b"a" * 65536
        try:
            for _ in range(40):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the server may answer and close before the whole body went
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]

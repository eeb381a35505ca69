"""Roles are a ceiling, and a Token's revocation and expiry are the system's (issue 10).

An admin may not borrow an owner's powers by issuing a token in the owner's name, nor
change or delete an owner; a team keeps its last owner; a PUT cannot bring a revoked or
expired token back to life, and what the API shows of a token is what the credentials
store says of it. Each test works in its own team on the module's server.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from test_api import make_team, make_user, read_events

from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def team(server: RunningServer, unique_team: str) -> str:
    make_team(server, unique_team)
    return unique_team


def users(team: str) -> str:
    return f"/api/v1/teams/{team}/users"


def tokens(team: str) -> str:
    return f"/api/v1/teams/{team}/tokens"


def token_doc(name: str, user: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Token", "metadata": {"name": name}, "spec": {"user": user, **spec}}


def refused(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["message"] == message, r.json()


def test_an_admin_cannot_issue_a_token_for_an_owner(server: RunningServer, team: str) -> None:
    make_user(server, team, "olga", "owner")
    admin = make_user(server, team, "adam", "admin")
    with server.client(admin) as c:
        r = c.post(tokens(team), json=token_doc("borrowed", "olga"))
        refused(
            r, 403, "role admin may not issue tokens for user olga: its role owner is above yours"
        )
        assert c.get(f"{tokens(team)}/borrowed").status_code == 404
        # At or below their own role, an admin still issues tokens for others.
        make_user(server, team, "mia", "member")
        assert c.post(tokens(team), json=token_doc("for-mia", "mia")).status_code == 201
        assert c.post(tokens(team), json=token_doc("peer", "adam")).status_code == 201


def test_an_admin_cannot_change_delete_or_revoke_an_owner(server: RunningServer, team: str) -> None:
    make_user(server, team, "olga", "owner")
    make_user(server, team, "otto", "owner")
    admin = make_user(server, team, "adam", "admin")
    with server.client(admin) as c:
        olga = c.get(f"{users(team)}/olga").json()
        olga["spec"]["role"] = "viewer"
        r = c.put(f"{users(team)}/olga", json=olga)
        refused(r, 403, "role admin may not change user olga: its role owner is above yours")
        r = c.delete(f"{users(team)}/olga")
        refused(r, 403, "role admin may not delete user olga: its role owner is above yours")
        r = c.delete(f"{users(team)}/olga?dryRun=true")
        assert r.status_code == 403, r.text
        r = c.delete(f"{tokens(team)}/olga-token")
        refused(
            r,
            403,
            "role admin may not manage the tokens of user olga: its role owner is above yours",
        )
        # Nor can an admin make themselves, or anyone, an owner.
        me = c.get(f"{users(team)}/adam").json()
        me["spec"]["role"] = "owner"
        r = c.put(f"{users(team)}/adam", json=me)
        refused(r, 403, "role admin may not grant the role owner, above its own")
        r = c.post(users(team), json={"metadata": {"name": "eve"}, "spec": {"role": "owner"}})
        refused(r, 403, "role admin may not grant the role owner, above its own")
    with server.client() as root:
        assert root.get(f"{users(team)}/olga").json()["spec"]["role"] == "owner"
        assert root.get(f"{tokens(team)}/olga-token").status_code == 200


def test_the_last_owner_of_a_team_stays(server: RunningServer, team: str) -> None:
    olga = make_user(server, team, "olga", "owner")
    otto = make_user(server, team, "otto", "owner")
    with server.client(otto) as c:
        # With two owners, one may step down.
        me = c.get(f"{users(team)}/otto").json()
        me["spec"]["role"] = "admin"
        assert c.put(f"{users(team)}/otto", json=me).status_code == 200
    with server.client(olga) as c:
        me = c.get(f"{users(team)}/olga").json()
        me["spec"]["role"] = "admin"
        r = c.put(f"{users(team)}/olga", json=me)
        last = f"user olga is the last owner of team {team}"
        refused(r, 409, f"{last} and cannot be demoted: make another user owner first")
        r = c.delete(f"{users(team)}/olga")
        refused(r, 409, f"{last} and cannot be deleted: make another user owner first")
    with server.client() as root:  # the server administrator too
        r = root.delete(f"{users(team)}/olga")
        refused(r, 409, f"{last} and cannot be deleted: make another user owner first")
        assert root.get(f"{users(team)}/olga").json()["spec"]["role"] == "owner"


def test_owners_removed_at_once_leave_one(server: RunningServer, team: str) -> None:
    """Six owners deleted or demoted at the same moment: five go, one stays (issue 10)."""
    names = [f"own{n}" for n in range(6)]
    for name in names:
        make_user(server, team, name, "owner")
    barrier = threading.Barrier(len(names))

    def remove(n: int) -> int:
        with server.client() as c:
            if n % 2:
                me = c.get(f"{users(team)}/{names[n]}").json()
                me["spec"]["role"] = "member"
                barrier.wait()
                return c.put(f"{users(team)}/{names[n]}", json=me).status_code
            barrier.wait()
            return c.delete(f"{users(team)}/{names[n]}").status_code

    with ThreadPoolExecutor(len(names)) as pool:
        codes = list(pool.map(remove, range(len(names))))
    assert sorted(codes) == [200] * 5 + [409], codes
    with server.client() as c:
        left = c.get(users(team)).json()["items"]
    assert [u["spec"]["role"] for u in left].count("owner") == 1


def test_a_put_cannot_revive_a_revoked_token(server: RunningServer, team: str) -> None:
    mia = make_user(server, team, "mia", "member")
    path = f"{tokens(team)}/mia-token"
    with server.client() as root:
        doc = root.get(path).json()
        doc["spec"]["revoked"] = True
        assert root.put(path, json=doc).status_code == 200
        doc = root.get(path).json()
        doc["spec"]["revoked"] = False
        r = root.put(path, json=doc)
        refused(
            r,
            422,
            "spec.revoked: a revoked token stays revoked: create a new one (kled token create)",
        )
        assert root.get(path).json()["spec"]["revoked"] is True
    assert (
        httpx.get(
            server.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {mia}"}
        ).status_code
        == 401
    )


def test_a_put_cannot_move_a_tokens_expiry_or_user(server: RunningServer, team: str) -> None:
    make_user(server, team, "mia", "member")
    make_user(server, team, "max", "member")
    with server.client() as root:
        r = root.post(tokens(team), json=token_doc("old", "mia", expiresAt="2020-01-01T00:00:00Z"))
        assert r.status_code == 201, r.text
        dead = r.json()["token"]
        path = f"{tokens(team)}/old"
        doc = root.get(path).json()
        doc["spec"]["expiresAt"] = "2999-01-01T00:00:00Z"
        r = root.put(path, json=doc)
        refused(
            r,
            422,
            "spec.expiresAt: a token's expiry is fixed at creation: create a new token with --ttl",
        )
        doc["spec"].pop("expiresAt")
        doc["spec"]["ttl"] = "24h"
        # the same file applied again: its ttl was read at creation, and is dropped now
        assert root.put(path, json=doc).json()["result"] == "unchanged"
        assert root.get(path).json()["spec"]["expiresAt"].startswith("2020-01-01")
        doc["spec"].pop("ttl")
        doc["spec"]["user"] = "max"
        refused(
            root.put(path, json=doc),
            422,
            "spec.user: a token's user is fixed at creation: create a new token",
        )
        # Other fields still change; the expiry, not sent, is kept.
        doc["spec"]["user"] = "mia"
        doc["spec"]["description"] = "old laptop"
        r = root.put(path, json=doc)
        assert r.status_code == 200, r.text
        spec = root.get(path).json()["spec"]
        assert spec["description"] == "old laptop"
        assert spec["expiresAt"].startswith("2020-01-01T00:00:00")
    assert (
        httpx.get(
            server.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {dead}"}
        ).status_code
        == 401
    )


def test_tokens_of_a_deleted_user_show_revoked(server: RunningServer, team: str) -> None:
    make_user(server, team, "mia", "member")
    with server.client() as root:
        since = root.get(tokens(team)).json()["metadata"]["resourceVersion"]
        assert root.delete(f"{users(team)}/mia").status_code == 200
        [token] = root.get(tokens(team)).json()["items"]
        assert token["metadata"]["name"] == "mia-token"
        assert token["spec"]["revoked"] is True
        assert root.get(f"{tokens(team)}/mia-token").json()["spec"]["revoked"] is True
    # A watcher sees it too: the document itself is marked.
    events = read_events(
        server, f"{tokens(team)}?watch=true&resourceVersion={since}", lambda e: True
    )
    assert [(e["type"], e["object"]["spec"]["revoked"]) for e in events] == [("MODIFIED", True)]

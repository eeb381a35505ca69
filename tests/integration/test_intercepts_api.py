"""Intercept admission and lifecycle against a real control plane (SQLite and PostgreSQL):
every bad input of issue 5 is a clear error that changes nothing, and deleting an app,
an environment or a device ends the intercepts pointing at it."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx

from servers import RunningServer

TEAM = "/api/v1/teams/acme"
ENV = f"{TEAM}/environments/dev"
ICPTS = f"{ENV}/intercepts"


def pubkey(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def setup_team(server: RunningServer) -> dict[str, str]:
    """Team acme with env dev, app api (80/TCP, 53/UDP), users alice (member, owns
    laptop-a), bob (member, owns laptop-b) and carol (admin). Returns their tokens."""
    tokens: dict[str, str] = {}
    with server.client() as admin:
        assert admin.post("/api/v1/teams", json={"metadata": {"name": "acme"}}).status_code == 201
        r = admin.post(f"{TEAM}/environments", json={"metadata": {"name": "dev"}})
        assert r.status_code == 201, r.text
        app = {
            "kind": "App",
            "metadata": {"name": "api"},
            "spec": {
                "command": ["sleep", "60"],
                "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            },
        }
        assert admin.post(f"{ENV}/apps", json=app).status_code == 201
        for name, role in (("alice", "member"), ("bob", "member"), ("carol", "admin")):
            r = admin.post(
                f"{TEAM}/users", json={"metadata": {"name": name}, "spec": {"role": role}}
            )
            assert r.status_code == 201, r.text
            r = admin.post(
                f"{TEAM}/tokens", json={"metadata": {"name": f"{name}-t"}, "spec": {"user": name}}
            )
            tokens[name] = r.json()["token"]
        for n, (device, owner) in enumerate((("laptop-a", "alice"), ("laptop-b", "bob"))):
            r = admin.post(
                f"{TEAM}/devices",
                json={
                    "metadata": {"name": device},
                    "spec": {"owner": owner, "publicKey": pubkey(n + 1)},
                },
            )
            assert r.status_code == 201, r.text
    return tokens


def intercept(name: str, device: str, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Intercept",
        "metadata": {"name": name},
        "spec": {"app": "api", "device": device, **spec},
    }


def names(c: httpx.Client) -> list[str]:
    r = c.get(ICPTS)
    assert r.status_code == 200, r.text
    return sorted(d["metadata"]["name"] for d in r.json()["items"])


def refused(r: httpx.Response, status: int, field: str, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body.get("field") == field or (body.get("details") or {}).get("field") == field, body
    for word in words:
        assert word in body["message"], body


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_bad_intercepts_are_refused_and_change_nothing(server: RunningServer) -> None:
    tokens = setup_team(server)
    with server.client(tokens["alice"]) as alice:
        r = alice.post(ICPTS, json=intercept("x", "laptop-a", app="nope"))
        refused(r, 422, "spec.app", "'nope' not found")
        r = alice.post(ICPTS, json=intercept("x", "laptop-a", ports=[{"port": 8080}]))
        refused(r, 422, "spec.ports[0].port", "does not expose port 8080", "80")
        r = alice.post(ICPTS, json=intercept("x", "ghost"))
        refused(r, 422, "spec.device", "'ghost' not found")
        r = alice.post(ICPTS, json=intercept("x", "laptop-b"))
        refused(r, 403, "spec.device", "belongs to 'bob'")
        r = alice.post(
            ICPTS, json=intercept("x", "laptop-a", header={"name": "Host", "value": "a"})
        )
        refused(r, 422, "spec.header.name", "host")
        r = alice.post(ICPTS, json=intercept("x", "laptop-a", header={"name": "a b", "value": "a"}))
        refused(r, 422, "spec.header.name")
        r = alice.post(
            ICPTS, json=intercept("x", "laptop-a", header={"name": "x-dev", "value": "a\x01"})
        )
        refused(r, 422, "spec.header.value", "printable")
        r = alice.post(
            ICPTS,
            json=intercept(
                "x", "laptop-a", ports=[{"port": 53}], header={"name": "x-dev", "value": "a"}
            ),
        )
        refused(r, 422, "spec.ports", "TCP")
        assert names(alice) == []


def test_one_global_intercept_per_app_and_one_header_value(server: RunningServer) -> None:
    tokens = setup_team(server)
    with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
        r = alice.post(
            ICPTS, json=intercept("api-a", "laptop-a", ports=[{"port": 80, "localPort": 8080}])
        )
        assert r.status_code == 201, r.text
        r = bob.post(ICPTS, json=intercept("api-b", "laptop-b"))
        refused(r, 409, "spec.app", "already intercepted by 'api-a'")
        hdr = {"name": "X-Dev", "value": "alice"}
        r = alice.post(ICPTS, json=intercept("api-a-alice", "laptop-a", header=hdr))
        assert r.status_code == 201, r.text
        r = bob.post(
            ICPTS,
            json=intercept("api-b-alice", "laptop-b", header={"name": "x-dev", "value": " alice "}),
        )
        refused(r, 409, "spec.header.value", "'api-a-alice'")
        r = bob.post(
            ICPTS, json=intercept("api-b-bob", "laptop-b", header={"name": "x-dev", "value": "bob"})
        )
        assert r.status_code == 201, r.text
        # Updating an intercept is not a clash with itself.
        doc = alice.get(f"{ICPTS}/api-a").json()
        doc["spec"]["ports"] = [{"port": 80, "localPort": 9090}]
        r = alice.put(f"{ICPTS}/api-a", json=doc)
        assert r.status_code == 200, r.text
        assert names(alice) == ["api-a", "api-a-alice", "api-b-bob"]
    with server.client(tokens["carol"]) as carol:
        # An admin may point traffic at anyone's device.
        r = carol.delete(f"{ICPTS}/api-a")
        assert r.status_code == 200, r.text
        r = carol.post(ICPTS, json=intercept("api-b", "laptop-b"))
        assert r.status_code == 201, r.text


def test_status_says_pending_until_the_device_has_an_address(server: RunningServer) -> None:
    tokens = setup_team(server)
    with server.client(tokens["alice"]) as alice:
        assert alice.post(ICPTS, json=intercept("api-a", "laptop-a")).status_code == 201

        def phase() -> str | None:
            status = alice.get(f"{ICPTS}/api-a").json().get("status") or {}
            return status.get("phase")

        eventually(lambda: phase() in ("Pending", "Active"))
        device = alice.get(f"{TEAM}/devices/laptop-a").json()
        expected = "Active" if (device.get("status") or {}).get("ip") else "Pending"
        eventually(lambda: phase() == expected)


def test_deleting_the_app_the_device_or_the_env_ends_intercepts(server: RunningServer) -> None:
    tokens = setup_team(server)
    with server.client(tokens["carol"]) as carol:
        assert carol.post(ICPTS, json=intercept("by-app", "laptop-a")).status_code == 201
        hdr = {"name": "x-dev", "value": "b"}
        assert (
            carol.post(ICPTS, json=intercept("by-dev", "laptop-b", header=hdr)).status_code == 201
        )
        assert carol.delete(f"{ENV}/apps/api").status_code == 200
        eventually(lambda: names(carol) == [])

        app = {"kind": "App", "metadata": {"name": "api"}, "spec": {"ports": [{"port": 80}]}}
        app["spec"]["command"] = ["sleep", "60"]
        assert carol.post(f"{ENV}/apps", json=app).status_code == 201
        assert carol.post(ICPTS, json=intercept("on-a", "laptop-a")).status_code == 201
        assert carol.post(ICPTS, json=intercept("on-b", "laptop-b", header=hdr)).status_code == 201
        assert carol.delete(f"{TEAM}/devices/laptop-b").status_code == 200
        eventually(lambda: names(carol) == ["on-a"])
        # A deleted device can no longer be the target of a new intercept.
        r = carol.post(ICPTS, json=intercept("again", "laptop-b", header=hdr))
        refused(r, 422, "spec.device", "not found")

        assert carol.delete(f"{TEAM}/environments/dev").status_code == 200
        with server.client() as admin:
            r = admin.get(ICPTS)
            assert r.status_code in (200, 404)
            if r.status_code == 200:
                assert r.json()["items"] == []


def test_members_touch_only_their_own_devices(server: RunningServer) -> None:
    tokens = setup_team(server)
    with server.client(tokens["alice"]) as alice:
        r = alice.post(
            f"{TEAM}/devices",
            json={"metadata": {"name": "sneaky"}, "spec": {"owner": "bob", "publicKey": pubkey(9)}},
        )
        refused(r, 403, "spec.owner", "belongs to 'bob'")
        r = alice.delete(f"{TEAM}/devices/laptop-b")
        refused(r, 403, "spec.owner", "belongs to 'bob'")
        r = alice.post(
            f"{TEAM}/devices",
            json={"metadata": {"name": "mine"}, "spec": {"owner": "alice", "publicKey": pubkey(8)}},
        )
        assert r.status_code == 201, r.text
        assert alice.delete(f"{TEAM}/devices/mine").status_code == 200
    with server.client(tokens["carol"]) as carol:
        assert carol.delete(f"{TEAM}/devices/laptop-b").status_code == 200
        assert carol.get(f"{TEAM}/devices/laptop-b").status_code == 404

"""Managed services as pure state transitions: templates and their checks, the plan of a
service's Secret, server app and status, ``envFrom: managedService`` and the mesh's view."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kled.control.desired import resolve_env
from kled.control.hostnet import snapshot_from_documents
from kled.control.managed import (
    BACKUPS,
    HOSTNAME,
    RESTORE_FROM,
    RESTORE_NODE,
    ROTATE,
    Layout,
    backup_command,
    clone_annotations,
    plan,
    recorded,
)
from kled.errors import Conflict, InvalidInput
from kled.resources.kinds import validate
from kled.resources.templates import BUILTIN, check_service, effective_parameters, template_spec

LAYOUT = Layout("/srv/kled", python="/opt/kled/bin/python")
PG = BUILTIN["postgres"]


def service(spec: dict[str, Any], status: dict[str, Any] | None = None,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {
        "name": "db",
        "team": "acme",
        "environment": "dev",
        "uid": "0123456789abcdef",
    }
    if annotations:
        meta["annotations"] = annotations
    return {"kind": "ManagedService", "metadata": meta, "spec": spec, "status": status or {}}


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


ADDRESSED = {"ip": "100.64.4.1", "dns": "db.dev.acme.kled.internal"}


def test_builtin_templates_are_valid_resources() -> None:
    for name, doc in BUILTIN.items():
        assert validate(doc)["metadata"]["name"] == name
        assert template_spec(doc).port > 0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"template": "mongo"}, "spec.template"),
        ({"template": "postgres", "version": "16"}, "spec.version"),
        ({"template": "postgres", "parameters": {"nope": 1}}, "spec.parameters.nope"),
        ({"template": "postgres", "parameters": {"max_connections": "many"}},
         "spec.parameters.max_connections"),
        ({"template": "postgres", "parameters": {"max_connections": True}},
         "spec.parameters.max_connections"),
        ({"template": "postgres", "parameters": {"shared_buffers": "1 GB"}},
         "spec.parameters.shared_buffers"),
    ],
)  # fmt: skip
def test_check_service_names_the_field(spec: dict[str, Any], field: str) -> None:
    found = BUILTIN.get(spec["template"])
    with pytest.raises(InvalidInput) as err:
        check_service(spec, template_spec(found) if found else None)
    assert err.value.field == field
    assert err.value.message.startswith(field + ":")


def test_parameters_defaults_then_given() -> None:
    params = effective_parameters({"parameters": {"max_connections": 40}}, template_spec(PG))
    assert params == {"max_connections": "40", "shared_buffers": "128MB"}


def test_waits_for_an_address_before_credentials() -> None:
    out = plan(service({"template": "postgres"}), PG, None, None, {}, LAYOUT, new_password="pw1")
    assert out.secret is None and out.app is None
    assert out.status["phase"] == "Provisioning"
    assert out.status["reason"] == "WaitingForAddress"


def test_first_plan_generates_credentials_and_server_app() -> None:
    ms = service({"template": "postgres", "parameters": {"max_connections": 40}}, ADDRESSED)
    out = plan(ms, PG, None, None, {}, LAYOUT, new_password="pw1")
    assert out.secret is not None and out.app is not None
    creds = decoded(out.secret)
    assert creds["uri"] == "postgresql://app:pw1@db.dev.acme.kled.internal:5432/app"
    assert creds["DATABASE_URL"] == creds["uri"] and creds["PGPASSWORD"] == "pw1"
    assert out.secret["metadata"]["labels"] == {"kled.io/managed-service": "db"}
    spec = out.app["spec"]
    assert out.app["metadata"]["name"] == "ms-db"
    assert spec["command"][:4] == ["/opt/kled/bin/python", "-m", "kled.agent.servicerun", "serve"]
    assert "/srv/kled/data/acme.dev.db-01234567" in spec["command"]
    assert "max_connections=40" in spec["command"]
    assert spec["envFrom"] == [{"secret": "db"}]
    assert spec["strategy"] == {"type": "Recreate"}  # never two servers on one data dir
    assert "nodeSelector" not in spec
    assert out.status["phase"] == "Provisioning" and out.status["ports"] == [5432]
    validate(out.app)
    validate(out.secret)


def test_password_kept_until_rotation_then_replaced_once() -> None:
    ms = service({"template": "postgres"}, ADDRESSED)
    first = plan(ms, PG, None, None, {}, LAYOUT, new_password="pw1")
    again = plan(ms, PG, first.secret, None, {}, LAYOUT, new_password="pw2")
    assert decoded(again.secret or {})["password"] == "pw1"
    asked = service({"template": "postgres"}, ADDRESSED, {ROTATE: "2026-12-07T00:00:00Z"})
    rotated = plan(asked, PG, first.secret, None, {}, LAYOUT, new_password="pw3")
    assert decoded(rotated.secret or {})["password"] == "pw3"
    assert rotated.status["rotation"] == "2026-12-07T00:00:00Z"
    asked["status"] = rotated.status
    later = plan(asked, PG, rotated.secret, None, {}, LAYOUT, new_password="pw4")
    assert decoded(later.secret or {})["password"] == "pw3"


def _app(entry: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"replicas": [{"index": 0, **entry}]}}


def test_pinned_to_its_node_and_phases() -> None:
    ms = service({"template": "postgres"}, ADDRESSED)
    running = _app({"node": "n1", "state": "Running", "ready": True})
    out = plan(ms, PG, None, running, {"n1": "Ready"}, LAYOUT, new_password="pw")
    assert out.status["phase"] == "Ready" and out.status["node"] == "n1"
    assert (out.app or {})["spec"]["nodeSelector"] == {HOSTNAME: "n1"}
    ms["status"] = out.status
    failing = _app({"node": "n1", "state": "Running", "ready": False, "message": "probe"})
    assert plan(ms, PG, None, failing, {"n1": "Ready"}, LAYOUT).status["phase"] == "Degraded"
    lost = plan(ms, PG, None, running, {"n1": "NotReady"}, LAYOUT)
    assert lost.status["phase"] == "Unavailable"
    assert (lost.app or {})["spec"]["nodeSelector"] == {HOSTNAME: "n1"}  # not moved
    gone = _app({"node": "n1", "state": "Failed", "reason": "CommandNotFound", "message": "x"})
    assert plan(ms, PG, None, gone, {"n1": "Ready"}, LAYOUT).status["phase"] == "Failed"


def test_unknown_template_is_failed_with_reason() -> None:
    out = plan(service({"template": "mongo"}, ADDRESSED), None, None, None, {}, LAYOUT)
    assert out.app is None and out.secret is None
    assert out.status["phase"] == "Failed" and "spec.template" in out.status["message"]


def test_env_from_managed_service_imports_only_variables() -> None:
    ms = service({"template": "postgres"}, ADDRESSED)
    secret = plan(ms, PG, None, None, {}, LAYOUT, new_password="pw").secret
    assert secret is not None
    app = {"metadata": {"team": "acme", "environment": "dev", "name": "api"},
           "spec": {"envFrom": [{"managedService": "db"}], "env": {"PGUSER": "me"}}}  # fmt: skip
    env = resolve_env(app, {}, {("acme", "dev", "db"): secret})
    assert isinstance(env, dict)
    assert env["DATABASE_URL"].startswith("postgresql://app:pw@")
    assert env["PGUSER"] == "me"  # the app's own env wins
    assert "password" not in env and "uri" not in env
    missing = resolve_env(app, {}, {})
    assert not isinstance(missing, dict) and missing.reason == "ManagedServiceNotFound"


def test_env_from_takes_exactly_one_source() -> None:
    both = [{"secret": "s", "managedService": "db"}]
    doc = {"kind": "App", "metadata": {"name": "a", "team": "t", "environment": "dev"},
           "spec": {"command": ["x"], "envFrom": both}}  # fmt: skip
    with pytest.raises(InvalidInput) as err:
        validate(doc)
    assert "exactly one of config, secret or managedService" in str(err.value)


def test_mesh_sends_the_service_ip_to_the_server_app_replicas() -> None:
    ms = {"kind": "ManagedService",
          "metadata": {"name": "db", "team": "acme", "environment": "dev"},
          "status": {**ADDRESSED, "app": "ms-db", "ports": [5432]}}  # fmt: skip
    snap = snapshot_from_documents(teams=[], nodes=[], services=[ms], devices=[], intercepts=[],
                                   dns_server=None)  # fmt: skip
    [info] = snap.services
    assert (info.name, info.ip, [p.port for p in info.ports]) == ("ms-db", "100.64.4.1", [5432])


def test_clone_leaves_backups_rotation_and_restore_behind() -> None:
    restored = service({"template": "postgres"}, annotations={
        BACKUPS: '[{"id": "db-1.pgdump", "path": "/b/db-1.pgdump", "node": "n1"}]',
        RESTORE_FROM: "/elsewhere/old.pgdump", RESTORE_NODE: "n0", ROTATE: "7", "team.io/x": "y",
    })  # fmt: skip
    assert clone_annotations(restored, with_data=False) == {"team.io/x": "y"}


def test_clone_with_data_restores_the_latest_backup_on_its_node() -> None:
    backups = [
        {"id": "db-20261207T010000Z.pgdump", "path": "/b/old", "time": "2026-12-07T01:00:00Z",
         "node": "n1"},
        {"id": "db-20261207T020000Z.pgdump", "path": "/b/new", "time": "2026-12-07T02:00:00Z",
         "node": "n2"},
    ]  # fmt: skip
    ms = service({"template": "postgres"}, status={"backups": list(reversed(backups))},
                 annotations={RESTORE_FROM: "/b/older-still"})  # fmt: skip
    assert clone_annotations(ms, with_data=True) == {RESTORE_FROM: "/b/new", RESTORE_NODE: "n2"}


def test_clone_with_data_of_a_service_without_backup_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"withData: managed service 'db' has no backup"):
        clone_annotations(service({"template": "postgres"}), with_data=True)


def test_backup_command_is_the_server_command_made_a_dump() -> None:
    serve = ["/py", "-m", "kled.agent.servicerun", "serve", "--engine", "postgres", "--param",
             "max_connections=40", "--restore-from", "/b/x", "--port", "5432"]  # fmt: skip
    status = {"phase": "Ready", "serverCommand": serve, "backupDir": "/b/db"}
    ms = service({"template": "postgres"}, status=status)
    assert backup_command(ms, "db") == [
        "/py", "-m", "kled.agent.servicerun", "backup", "--engine", "postgres", "--port", "5432",
        "--to", "/b/db", "--label", "db",
    ]  # fmt: skip
    ms["status"]["phase"] = "Provisioning"
    with pytest.raises(Conflict, match="service db is Provisioning: its server must run"):
        backup_command(ms, "db")


def test_backups_of_status_and_of_an_older_annotation_together_oldest_first() -> None:
    old = '[{"id": "a", "path": "/b/a", "time": "2026-01-01T00:00:00Z"}]'
    listed = [{"id": "b", "path": "/b/b", "time": "2026-02-01T00:00:00Z"},
              {"id": "a", "path": "/b/a", "time": "2026-01-01T00:00:00Z"}]  # fmt: skip
    ms = service({"template": "postgres"}, annotations={BACKUPS: old}, status={"backups": listed})
    assert [b["id"] for b in recorded(ms)] == ["a", "b"]

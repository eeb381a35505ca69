"""The dev swap as pure transitions: app → dev replica → the same app; the lease clock."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kled.control.devswap import (
    DEV_ANNOTATION,
    HOLDER,
    SESSION_ENV,
    DevSession,
    dev_spec,
    lapsed,
    restored,
    session_of,
    swapped_in,
)
from kled.errors import Conflict, InvalidInput


def _app() -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": "api",
            "team": "acme",
            "environment": "dev",
            "labels": {"tier": "backend"},
            "annotations": {"owner": "ops"},
            "resourceVersion": "7",
        },
        "spec": {
            "command": ["python", "-m", "api"],
            "args": ["--fast"],
            "replicas": 3,
            "env": {"LOG_LEVEL": "debug"},
            "envFrom": [{"secret": "db"}],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
            "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
            "workingDir": "/srv/api",
        },
        "status": {"phase": "Running"},
    }


SESSION = DevSession("s" * 32, "ana", "2026-12-07T02:00:00Z", {})


def test_the_dev_replica_keeps_env_configs_ports_and_drops_probes() -> None:
    spec = dev_spec(_app()["spec"], "abc")
    assert spec["replicas"] == 1 and spec["command"] == HOLDER
    assert spec["env"] == {"LOG_LEVEL": "debug", SESSION_ENV: "abc"}
    assert spec["envFrom"] == [{"secret": "db"}] and spec["ports"] == _app()["spec"]["ports"]
    assert spec["workingDir"] == "/srv/api"
    assert not {"readinessProbe", "lifecycle", "args"} & set(spec)


def test_swap_then_restore_gives_back_exactly_the_app() -> None:
    app = _app()
    swapped = swapped_in(app, SESSION)
    assert app == _app()  # the input is not changed
    assert swapped["spec"] == dev_spec(app["spec"], SESSION.session)
    assert swapped["metadata"]["annotations"]["owner"] == "ops"
    kept = session_of(swapped)
    assert kept is not None and kept.spec == app["spec"] and kept.user == "ana"
    back = restored(swapped)
    assert back is not None
    assert back["spec"] == app["spec"]
    assert back["metadata"]["annotations"] == {"owner": "ops"}
    assert back["metadata"]["labels"] == app["metadata"]["labels"]
    assert "status" not in back


def test_an_app_without_annotations_gets_none_back() -> None:
    app = _app()
    del app["metadata"]["annotations"]
    back = restored(swapped_in(app, SESSION))
    assert back is not None and "annotations" not in back["metadata"]


def test_a_second_session_on_one_app_is_a_conflict_naming_the_first() -> None:
    swapped = swapped_in(_app(), SESSION)
    with pytest.raises(Conflict, match="dev session of ana"):
        swapped_in(swapped, DevSession("t" * 32, "bo", "later", {}))


def test_an_app_in_no_session_has_nothing_to_restore() -> None:
    assert restored(_app()) is None and session_of(_app()) is None


def test_a_foreign_annotation_is_bad_input_naming_the_field() -> None:
    app = _app()
    app["metadata"]["annotations"][DEV_ANNOTATION] = json.dumps({"nope": 1})
    with pytest.raises(InvalidInput) as err:
        session_of(app)
    assert err.value.field == "metadata.annotations"


def test_leases_lapse_after_the_grace_unless_renewed() -> None:
    leases = {"acme.dev.api": ("s1", 102.0), "acme.dev.web": ("s2", 100.0)}
    assert lapsed(leases, now=102.9, grace=3.0) == []
    assert lapsed(leases, now=103.5, grace=3.0) == [("acme.dev.web", "s2")]
    assert lapsed(leases, now=105.5, grace=3.0) == [("acme.dev.api", "s1"), ("acme.dev.web", "s2")]
    assert lapsed({}, now=1e9, grace=3.0) == []


def test_swapping_does_not_share_state_with_the_input() -> None:
    app = _app()
    swapped = swapped_in(app, SESSION)
    swapped["spec"]["env"]["X"] = "1"
    kept = session_of(swapped)
    assert kept is not None
    original = copy.deepcopy(kept.spec)
    original["env"]["Y"] = "2"
    assert app["spec"]["env"] == {"LOG_LEVEL": "debug"}

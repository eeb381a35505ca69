"""Probes and graceful stop on an App: Kubernetes' defaults, and bad input refused with
the field at fault."""

from __future__ import annotations

from typing import Any

import pytest

from kled.errors import InvalidInput
from kled.resources.kinds import validate


def app(**spec: Any) -> dict[str, Any]:
    return validate(
        {
            "kind": "App",
            "metadata": {"name": "api", "team": "acme", "environment": "dev"},
            "spec": {
                "command": ["python3", "-m", "http.server", "8080"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                **spec,
            },
        }
    )


def refused(**spec: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        app(**spec)
    return caught.value


def test_a_probe_gets_kubernetes_defaults() -> None:
    probe = app(readinessProbe={"httpGet": {"port": "http"}})["spec"]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/"
    assert (probe["initialDelaySeconds"], probe["periodSeconds"], probe["timeoutSeconds"]) == (
        0, 10, 1
    )  # fmt: skip
    assert (probe["successThreshold"], probe["failureThreshold"]) == (1, 3)


def test_probe_ports_by_number_or_name_and_hooks_are_accepted() -> None:
    spec = app(
        livenessProbe={"tcpSocket": {"port": 8080}},
        startupProbe={"exec": {"command": ["true"]}},
        lifecycle={"preStop": {"httpGet": {"path": "/drain", "port": "http"}}},
        terminationGracePeriodSeconds=5,
    )["spec"]
    assert spec["terminationGracePeriodSeconds"] == 5


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"readinessProbe": {"httpGet": {"port": 8080}, "failureThreshold": -1}},
         "spec.readinessProbe.failureThreshold", "must be 1-"),
        ({"livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0}},
         "spec.livenessProbe.periodSeconds", "must be 1-"),
        ({"readinessProbe": {"httpGet": {"port": 9090}}},
         "spec.readinessProbe.httpGet.port", "exposes no TCP port 9090"),
        ({"livenessProbe": {"tcpSocket": {"port": "metrics"}}},
         "spec.livenessProbe.tcpSocket.port", "exposes no TCP port 'metrics'"),
        ({"readinessProbe": {}}, "spec.readinessProbe", "exactly one of httpGet"),
        ({"startupProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 8080}}},
         "spec.startupProbe.exec", "only one of tcpSocket, exec"),
        ({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}},
         "spec.livenessProbe.successThreshold", "must be 1"),
        ({"lifecycle": {"preStop": {"httpGet": {"port": 81}}}},
         "spec.lifecycle.preStop.httpGet.port", "exposes no TCP port 81"),
        ({"lifecycle": {"preStop": {}}}, "spec.lifecycle.preStop", "exactly one of"),
        ({"terminationGracePeriodSeconds": -1}, "spec.terminationGracePeriodSeconds", "must be 0-"),
        ({"readinessProbe": {"exec": {"command": []}}}, "spec.readinessProbe.exec.command", ""),
    ],
)  # fmt: skip
def test_bad_probes_are_refused_naming_the_field(
    spec: dict[str, Any], field: str, words: str
) -> None:
    error = refused(**spec)
    assert error.field == field
    assert words in error.message


def test_a_probe_port_needs_an_app_port_at_all() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(
            {
                "kind": "App",
                "metadata": {"name": "api", "team": "acme", "environment": "dev"},
                "spec": {"command": ["x"], "readinessProbe": {"tcpSocket": {"port": 80}}},
            }
        )
    assert caught.value.field == "spec.readinessProbe.tcpSocket.port"
    assert "it has: none" in caught.value.message

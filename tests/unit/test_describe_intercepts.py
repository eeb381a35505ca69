"""The ``Intercepts:`` section of ``kled describe app`` (issue 5 §4)."""

from __future__ import annotations

from typing import Any

from kled.cli.output import intercepts_section


def intercept(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "team": "a", "environment": "dev"},
        "spec": {"app": app, **spec},
    }


def test_lists_only_the_apps_intercepts_with_device_ports_header_and_phase() -> None:
    docs = [
        {**intercept("api-laptop", "api", device="laptop"), "status": {"phase": "Fallback"}},
        {
            **intercept(
                "api-bob-b",
                "api",
                device="bob",
                ports=[{"port": 80, "localPort": 7070}],
                header={"name": "x-dev", "value": "b"},
            ),
            "status": {"phase": "Active"},
        },
        intercept("web-laptop", "web", device="laptop"),
    ]
    lines = intercepts_section("api", docs).splitlines()
    assert lines[0] == "Intercepts:"
    assert lines[1].split() == ["NAME", "DEVICE", "PORTS", "HEADER", "PHASE"]
    assert lines[2].split() == ["api-bob-b", "bob", "80:7070", "x-dev=b", "Active"]
    assert lines[3].split() == ["api-laptop", "laptop", "all", "-", "Fallback"]
    assert len(lines) == 4


def test_an_app_without_intercepts_says_none() -> None:
    assert intercepts_section("api", [intercept("web-x", "web", device="x")]) == (
        "Intercepts:  <none>"
    )

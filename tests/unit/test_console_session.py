"""The console's sessions and one-time links, and how it reads a pasted YAML bundle."""

from __future__ import annotations

import pytest

from kled.errors import InvalidInput
from kled.ui import views
from kled.ui.pages import safe_next
from kled.ui.session import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_signs_in_once() -> None:
    sessions = Sessions(clock=Clock())
    code = sessions.link("tok")
    assert sessions.spend(code) == "tok"
    assert sessions.spend(code) is None


def test_a_link_expires_unused() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock, link_seconds=60)
    code = sessions.link("tok")
    clock.now += 61
    assert sessions.spend(code) is None


def test_a_session_ends_when_it_expires_or_is_closed() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock, session_seconds=10)
    first, second = sessions.open("a"), sessions.open("b")
    assert first.csrf != second.csrf and first.id != second.id
    assert sessions.find(first.id) is first
    sessions.close(first.id)
    assert sessions.find(first.id) is None
    clock.now += 11
    assert sessions.find(second.id) is None
    assert sessions.find(None) is None and sessions.find("made-up") is None


@pytest.mark.parametrize(
    ("given", "goes"),
    [
        ("/ui/teams/acme", "/ui/teams/acme"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/api/v1/teams", "/ui"),
        (None, "/ui"),
    ],
)
def test_after_signing_in_only_console_paths(given: str | None, goes: str) -> None:
    assert safe_next(given) == goes


def test_a_bundle_is_applied_containers_first() -> None:
    docs = views.parse_documents(
        "kind: App\nmetadata: {name: a}\n---\nkind: Environment\nmetadata: {name: dev}\n"
    )
    assert [d["kind"] for d in docs] == ["Environment", "App"]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("", "yaml", "paste at least one resource"),
        ("kind: [", "yaml", "at line 1, column 8"),
        ("- 1\n", "yaml", "document 1 is not a mapping"),
        ("metadata: {name: a}\n", "kind", "document 1 has no kind"),
    ],
)
def test_bad_yaml_names_what_is_wrong(text: str, field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        views.parse_documents(text)
    assert caught.value.field == field
    assert message in caught.value.message


def test_a_resource_of_another_team_is_refused() -> None:
    doc = {"kind": "App", "metadata": {"name": "a", "team": "other"}}
    with pytest.raises(InvalidInput) as caught:
        views.place(doc, "acme", "dev")
    assert caught.value.field == "metadata.team"
    app = views.place({"kind": "App", "metadata": {"name": "a"}}, "acme", "dev")
    assert app["metadata"] == {"name": "a", "team": "acme", "environment": "dev"}
    with pytest.raises(InvalidInput, match="needs an environment"):
        views.place({"kind": "App", "metadata": {"name": "a"}}, "acme", None)


def test_an_app_row_shows_replicas_and_never_secret_values() -> None:
    row = views.app_row(
        {
            "metadata": {"name": "api", "environment": "dev"},
            "spec": {"replicas": 2, "envFrom": [{"secret": "db"}, {"config": "web"}]},
            "status": {
                "phase": "Degraded",
                "readyReplicas": 1,
                "ip": "100.64.1.5",
                "replicas": [
                    {"index": 0, "node": "n1", "state": "Running", "podIP": "100.64.9.2"},
                    {"index": 1, "node": "n2", "state": "Failed", "restarts": 3, "lastExitCode": 1},
                ],
            },
        }
    )
    assert (row["phase"], row["ready"], row["wanted"]) == ("Degraded", 1, 2)
    assert row["references"] == ["secret/db", "config/web"]
    assert [(r["node"], r["podIP"], r["restarts"], r["lastExit"]) for r in row["replicas"]] == [
        ("n1", "100.64.9.2", 0, "—"),
        ("n2", "—", 3, "1"),
    ]

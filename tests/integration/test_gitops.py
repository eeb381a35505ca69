"""GitOps end to end: real git repositories (a bare origin over file://, git daemon over
git://) kept applied by a real control plane (SQLite and PostgreSQL), through the same
admission — kPolicy included — as every other write.

Each test makes its own team on the module's server and its own repository in tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_policy_api import make_team, wait_for

from gitkit import Origin, app_yaml, daemon, free_port
from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "repo")


def source(team: str, name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "GitSource",
        "metadata": {"name": name, "team": team},
        "spec": {"url": url, "interval": "1h", **spec},
    }


def create(c: httpx.Client, doc: dict[str, Any]) -> None:
    r = c.post("/api/v1/apply", json=doc)
    assert r.status_code in (200, 201), r.text


def get_app(c: httpx.Client, team: str, name: str, env: str = "dev") -> dict[str, Any] | None:
    r = c.get(f"/api/v1/teams/{team}/environments/{env}/apps/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def status_of(c: httpx.Client, team: str, name: str) -> dict[str, Any]:
    r = c.get(f"/api/v1/teams/{team}/gitsources/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json().get("status") or {})


def sync(c: httpx.Client, team: str, name: str, **body: str) -> dict[str, Any]:
    r = c.post(f"/api/v1/teams/{team}/gitsources/{name}/sync", json=body)
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()
    return status


def results(status: dict[str, Any]) -> dict[str, str]:
    return {item["ref"]: item["result"] for item in status.get("resources") or []}


def edit_app(c: httpx.Client, team: str, name: str, change: Any) -> None:
    """Change an app by hand, as a user would: read, change, write (again if stale)."""
    for _ in range(20):
        app = get_app(c, team, name)
        assert app is not None
        change(app)
        r = c.put(f"/api/v1/teams/{team}/environments/dev/apps/{name}", json=app)
        if r.status_code != 409:  # IPAM may write the app's status in between
            assert r.is_success, r.text
            return
    raise AssertionError(f"app {name}: every write was stale")


def revision(c: httpx.Client, team: str) -> str:
    r = c.get(f"/api/v1/teams/{team}/apps")
    assert r.status_code == 200, r.text
    return str(r.json()["metadata"]["resourceVersion"])


def webhook_secret(c: httpx.Client, team: str, value: str) -> dict[str, str]:
    create(
        c,
        {
            "kind": "Secret",
            "metadata": {"name": "hook", "team": team, "environment": "dev"},
            "stringData": {"secret": value},
        },
    )
    return {"environment": "dev", "name": "hook"}


def test_a_commit_appears_within_the_interval(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    first = origin.commit({"apps/api.yaml": app_yaml("api")})
    with server.client() as c:
        create(c, source(team, "main", origin.url, interval="1s"))
        wait_for(lambda: get_app(c, team, "api") is not None, "the app of the first commit")
        api = get_app(c, team, "api")
        assert api is not None
        annotations = api["metadata"]["annotations"]
        assert annotations["kled.io/gitsource"] == "main"
        assert annotations["kled.io/gitcommit"] == first
        second = origin.commit({"apps/api.yaml": app_yaml("api", replicas=2)}, "scale")
        wait_for(
            lambda: (get_app(c, team, "api") or {}).get("spec", {}).get("replicas") == 2,
            "the second commit applied by polling",
        )
        wait_for(
            lambda: status_of(c, team, "main").get("lastAppliedCommit") == second,
            "the status naming the second commit",
        )
        status = status_of(c, team, "main")
        assert status["phase"] == "Synced"
        assert status["lastFetchedCommit"] == second
        assert results(status) == {"app/dev/api": "configured"}
        api = get_app(c, team, "api")
        assert api is not None and api["metadata"]["annotations"]["kled.io/gitcommit"] == second


def test_a_webhook_over_git_daemon_syncs_at_once_and_a_bad_signature_is_refused(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    origin.commit({"api.yaml": app_yaml("api")})
    with daemon(origin) as url, server.client() as c:
        ref = webhook_secret(c, team, "s3cret")
        create(c, source(team, "hooked", url, webhookSecret=ref))
        wait_for(lambda: get_app(c, team, "api") is not None, "the first sync")
        head = origin.commit({"web.yaml": app_yaml("web")}, "add web")
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        path = f"/api/v1/teams/{team}/gitsources/hooked/webhook"
        anon = httpx.Client(base_url=server.url, timeout=30)
        bad = hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
        for headers in (
            {"X-Hub-Signature-256": f"sha256={bad}", "X-GitHub-Event": "push"},
            {"X-Gitlab-Token": "wrong", "X-Gitlab-Event": "Push Hook"},
            {},
        ):
            r = anon.post(path, content=body, headers=headers)
            assert r.status_code == 401, r.text
        r = anon.post(f"/api/v1/teams/{team}/gitsources/nope/webhook", content=body)
        assert r.status_code == 401  # an unknown source answers as a bad signature does
        assert get_app(c, team, "web") is None  # the interval is an hour: nothing polled
        good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        other = json.dumps({"ref": "refs/heads/feature", "after": head}).encode()
        sig = hmac.new(b"s3cret", other, hashlib.sha256).hexdigest()
        r = anon.post(path, content=other, headers={"X-Gitea-Signature": sig})
        assert r.status_code == 202 and r.json()["accepted"] is False
        r = anon.post(path, content=body, headers={"X-Hub-Signature-256": f"sha256={good}"})
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": True, "ref": "refs/heads/main", "commit": head}
        wait_for(lambda: get_app(c, team, "web") is not None, "the pushed commit")
        # the status is written after the resources: wait for it too
        wait_for(
            lambda: status_of(c, team, "hooked").get("lastAppliedCommit") == head,
            "the status naming the pushed commit",
        )
        anon.close()


def test_drift_is_shown_by_diff_and_reverted_unless_ignored(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    origin.commit({"api.yaml": app_yaml("api"), "web.yaml": app_yaml("web")})
    with server.client() as c:
        create(c, source(team, "main", origin.url))
        wait_for(lambda: status_of(c, team, "main").get("phase") == "Synced", "the first sync")
        edit_app(c, team, "api", lambda app: app["spec"].update(replicas=5))

        def ignore_and_scale(app: dict[str, Any]) -> None:
            app["spec"]["replicas"] = 3
            app["metadata"]["annotations"]["kled.io/gitops"] = "ignore"

        edit_app(c, team, "web", ignore_and_scale)
        r = c.get(f"/api/v1/teams/{team}/gitsources/main/diff")
        assert r.status_code == 200, r.text
        text = r.json()["diff"]
        assert "--- stored/app/dev/api" in text and "+++ git/app/dev/api" in text
        assert "-  replicas: 5" in text and "+  replicas: 1" in text
        status = sync(c, team, "main")
        assert status["drift"] == ["app/dev/api", "app/dev/web"]
        assert results(status) == {"app/dev/api": "configured", "app/dev/web": "ignored"}
        assert (get_app(c, team, "api") or {})["spec"]["replicas"] == 1
        assert (get_app(c, team, "web") or {})["spec"]["replicas"] == 3


def test_prune_deletes_only_what_the_source_created(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    origin.commit({"api.yaml": app_yaml("api"), "web.yaml": app_yaml("web")})
    with server.client() as c:
        create(c, {"kind": "App", "metadata": {"name": "mine", "team": team, "environment": "dev"},
                   "spec": {"command": ["sleep", "1"]}})  # fmt: skip
        create(c, source(team, "main", origin.url))
        wait_for(lambda: status_of(c, team, "main").get("phase") == "Synced", "the first sync")
        origin.commit({"web.yaml": None}, "remove web")
        status = sync(c, team, "main")
        assert results(status) == {"app/dev/api": "unchanged", "app/dev/web": "pruned"}
        assert get_app(c, team, "web") is None
        assert get_app(c, team, "mine") is not None  # made by hand: never this source's


def test_a_commit_denied_by_a_policy_changes_nothing_and_the_status_names_it(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    origin.commit({"api.yaml": app_yaml("api"), "old.yaml": app_yaml("old")})
    with server.client() as c:
        create(c, source(team, "main", origin.url))
        wait_for(lambda: status_of(c, team, "main").get("phase") == "Synced", "the first sync")
        applied_before = status_of(c, team, "main")["lastAppliedCommit"]
        create(
            c,
            {
                "kind": "Policy",
                "metadata": {"name": "max-replicas", "team": team},
                "spec": {
                    "resources": ["apps"],
                    "operations": ["CREATE", "UPDATE"],
                    "javascript": "if (request.object.spec.replicas > 3) "
                    "deny('at most 3 replicas');",
                },
            },
        )
        bad = origin.commit(
            {
                "api.yaml": app_yaml("api", replicas=2),
                "big.yaml": app_yaml("big", replicas=9),
                "old.yaml": None,
            },
            "too big",
        )
        status = sync(c, team, "main")
        assert status["phase"] == "Failed"
        assert status["lastFetchedCommit"] == bad
        assert status["lastAppliedCommit"] == applied_before
        assert "max-replicas" in status["message"] and "at most 3 replicas" in status["message"]
        assert results(status)["app/dev/big"] == "denied"
        assert (get_app(c, team, "api") or {})["spec"]["replicas"] == 1  # as it was
        assert get_app(c, team, "big") is None
        assert get_app(c, team, "old") is not None  # nothing pruned either
        # atomic: false applies what passes and reports the rest
        spec = source(team, "main", origin.url, atomic=False)
        create(c, spec)
        status = sync(c, team, "main")
        assert status["phase"] == "Partial"
        # the change of the source may have started a sync of its own before this one:
        # then this one finds api already configured and old already pruned
        got = results(status)
        assert got["app/dev/big"] == "denied"
        assert got["app/dev/api"] in ("configured", "unchanged")
        assert got.get("app/dev/old", "pruned") == "pruned"
        assert (get_app(c, team, "api") or {})["spec"]["replicas"] == 2
        assert get_app(c, team, "big") is None
        assert get_app(c, team, "old") is None
        # a file that cannot be read prunes nothing, even when not atomic
        origin.commit({"api.yaml": "kind: [\n", "web.yaml": app_yaml("web")}, "typo")
        status = sync(c, team, "main")
        assert status["phase"] == "Partial"
        assert results(status)["api.yaml"] == "invalid"
        assert results(status)["app/dev/web"] == "created"
        assert get_app(c, team, "api") is not None


def test_a_bad_ref_a_missing_path_or_an_unreachable_repository_apply_nothing(
    server: RunningServer, unique_team: str, origin: Origin, tmp_path: Path
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    origin.commit({"envs/dev/api.yaml": app_yaml("api")})
    with server.client() as c:
        create(c, source(team, "badref", origin.url, ref="nope"))
        status = sync(c, team, "badref")
        assert status["phase"] == "Failed"
        assert "couldn't find remote ref nope" in status["message"]
        create(c, source(team, "badpath", origin.url, path="envs/prod"))
        status = sync(c, team, "badpath")
        assert status["phase"] == "Failed"
        assert "'envs/prod' is not a folder" in status["message"]
        create(c, source(team, "gone", f"file://{tmp_path}/nowhere.git"))
        status = sync(c, team, "gone")
        assert (
            status["phase"] == "Failed"
            and "does not appear to be a git repository" in (status["message"])
        )
        create(c, source(team, "closed", f"git://127.0.0.1:{free_port()}/origin.git"))
        status = sync(c, team, "closed")
        assert status["phase"] == "Failed" and "unable to connect" in status["message"]
        assert get_app(c, team, "api") is None
        create(c, source(team, "good", origin.url, path="envs/dev"))
        assert sync(c, team, "good")["phase"] == "Synced"
        assert get_app(c, team, "api") is not None
        r = c.post(f"/api/v1/teams/{team}/gitsources/good/sync", json={"ref": "-x"})
        assert r.status_code == 422 and "ref" in r.text


def test_two_sources_on_one_resource_the_second_reports_the_clash(
    server: RunningServer, unique_team: str, origin: Origin, tmp_path: Path
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    other = Origin(tmp_path / "other")
    origin.commit({"api.yaml": app_yaml("api")})
    other.commit({"api.yaml": app_yaml("api", replicas=3)})
    with server.client() as c:
        create(c, source(team, "first", origin.url))
        assert sync(c, team, "first")["phase"] == "Synced"
        create(c, source(team, "second", other.url))
        status = sync(c, team, "second")
        assert status["phase"] == "Failed"
        assert results(status) == {"app/dev/api": "clash"}
        assert "managed by GitSource first" in status["message"]
        api = get_app(c, team, "api")
        assert api is not None and api["spec"]["replicas"] == 1
        assert api["metadata"]["annotations"]["kled.io/gitsource"] == "first"


def test_an_unchanged_sync_writes_nothing(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    files = {f"app{i}.yaml": app_yaml(f"app{i}") for i in range(5)}
    origin.commit(files)
    with server.client() as c:
        create(c, source(team, "main", origin.url))
        wait_for(lambda: status_of(c, team, "main").get("phase") == "Synced", "the first sync")
        # IPAM writes each new app's status once: the store is still before that settles
        wait_for(
            lambda: all(
                (get_app(c, team, f"app{i}") or {}).get("status", {}).get("ip") for i in range(5)
            ),
            "service IPs for the apps",
        )
        before = revision(c, team)
        status = status_of(c, team, "main")
        for _ in range(3):
            assert sync(c, team, "main") == status
        assert revision(c, team) == before  # no write at all: not a resource, not a status


def test_environments_and_secrets_come_from_git_and_bad_documents_are_named(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    team = unique_team
    make_team(server, team, "dev")
    env = {"kind": "Environment", "metadata": {"name": "staging"}}
    secret = {"kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "pw"}}
    origin.commit(
        {
            "env.yaml": yaml.safe_dump(env),
            "stack.yaml": yaml.safe_dump_all([secret, yaml.safe_load(app_yaml("api"))]),
        }
    )
    with server.client() as c:
        create(c, source(team, "staging", origin.url, environment="staging"))
        status = sync(c, team, "staging")
        assert status["phase"] == "Synced", status
        assert results(status) == {
            "environment/staging": "created",
            "secret/staging/db": "created",
            "app/staging/api": "created",
        }
        revealed = c.get(f"/api/v1/teams/{team}/environments/staging/secrets/db?reveal=true")
        assert base64.b64decode(revealed.json()["data"]["password"]) == b"pw"
        assert sync(c, team, "staging") == status_of(c, team, "staging")  # secrets too: same
        origin.commit({"bad.yaml": app_yaml("x", team="other")})
        status = sync(c, team, "staging")
        assert status["phase"] == "Failed"
        assert "bad.yaml: document 1: metadata.team: must be" in status["message"]


def test_a_gitsource_is_validated_field_by_field(server: RunningServer, unique_team: str) -> None:
    make_team(server, unique_team, "dev")
    with server.client() as c:
        for spec, field_path in (
            ({"url": "ftp://x"}, "spec.url"),
            ({"url": "file:///x", "ref": "a..b"}, "spec.ref"),
            ({"url": "file:///x", "path": "../up"}, "spec.path"),
            ({"url": "file:///x", "interval": "soon"}, "spec.interval"),
        ):
            r = c.post("/api/v1/apply", json=source(unique_team, "bad", **spec))
            assert r.status_code == 422, r.text
            assert field_path in r.text
        assert c.get(f"/api/v1/teams/{unique_team}/gitsources/bad").status_code == 404


def test_a_sync_cut_short_is_completed_even_while_suspended(
    server: RunningServer, unique_team: str, origin: Origin
) -> None:
    """What a control plane that stopped mid-sync leaves behind — ``phase: Syncing`` — is
    found by the controller (as at every start) and the sync is run to its end."""
    team = unique_team
    make_team(server, team, "dev")
    head = origin.commit({"api.yaml": app_yaml("api"), "web.yaml": app_yaml("web")})
    with server.client() as c:
        create(c, source(team, "main", origin.url, suspend=True))
        assert get_app(c, team, "api") is None  # suspended: never synced on its own
        r = c.put(
            f"/api/v1/teams/{team}/gitsources/main/status",
            json={"status": {"phase": "Syncing", "syncingCommit": head}},
        )
        assert r.status_code == 200, r.text
        wait_for(lambda: status_of(c, team, "main").get("phase") == "Synced", "the sync ended")
        assert get_app(c, team, "api") is not None and get_app(c, team, "web") is not None
        assert status_of(c, team, "main")["lastAppliedCommit"] == head

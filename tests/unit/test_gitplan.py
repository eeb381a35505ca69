"""The pure part of GitOps: rendering a commit, what is unchanged, drift, prune, the diff,
and the webhook's signatures and refs."""

from __future__ import annotations

import hashlib
import hmac

from gitkit import app_yaml
from kled.api.gitops import pushed_ref, ref_matches, signed
from kled.control import gitplan
from kled.store.objects import Key

COMMIT = "a" * 40


def render(files: dict[str, str], env: str | None = None) -> gitplan.Rendered:
    return gitplan.render(files, team="acme", source="main", commit=COMMIT, environment=env)


def test_documents_are_placed_in_the_team_and_annotated() -> None:
    out = render({"a.yaml": app_yaml("api") + "---\n" + app_yaml("web", "qa")})
    assert out.problems == []
    assert list(out.docs) == [Key("App", "acme", "dev", "api"), Key("App", "acme", "qa", "web")]
    meta = out.docs[Key("App", "acme", "dev", "api")]["metadata"]
    assert meta["team"] == "acme"
    assert meta["annotations"] == {"kled.io/gitsource": "main", "kled.io/gitcommit": COMMIT}


def test_the_source_environment_overrides_each_documents_own() -> None:
    out = render({"a.yaml": app_yaml("api", "dev")}, env="staging")
    assert list(out.docs) == [Key("App", "acme", "staging", "api")]


def test_problems_name_the_file_the_document_and_the_field() -> None:
    out = render(
        {
            "a.yaml": app_yaml("api", team="other"),
            "b.yaml": "kind: Node\nmetadata: {name: n1}\n",
            "c.yaml": "kind: [\n",
            "d.yaml": app_yaml("api"),
            "e.yaml": app_yaml("api"),
            "f.yaml": "kind: Token\nmetadata: {name: t}\nspec: {user: ada}\n",
        }
    )
    messages = [(p.ref, p.result, p.message) for p in out.problems]
    assert messages[0] == (
        "a.yaml: document 1",
        "invalid",
        "a.yaml: document 1: metadata.team: must be 'acme', the GitSource's team (or left out)",
    )
    assert messages[1][2] == "b.yaml: document 1: kind: a Node cannot be kept in a GitSource"
    assert messages[2][0] == "c.yaml" and "c.yaml: line" in messages[2][2]
    assert messages[3] == (
        "app/dev/api",
        "invalid",
        "e.yaml: document 1: app/dev/api is defined twice",
    )
    assert "a Token cannot be kept" in messages[4][2]
    assert list(out.docs) == [Key("App", "acme", "dev", "api")]


def test_an_environment_scoped_document_needs_an_environment() -> None:
    out = render({"a.yaml": "kind: Config\nmetadata: {name: c}\ndata: {a: b}\n"})
    assert out.problems[0].message == (
        "a.yaml: document 1: metadata.environment: required "
        "(or set the GitSource's spec.environment)"
    )


def test_a_source_holds_a_bounded_number_of_documents_and_lists_what_changed() -> None:
    many = {f"{i:04d}.yaml": app_yaml(f"a{i}") for i in range(gitplan.MAX_DOCUMENTS + 1)}
    out = render(many)
    assert out.problems[-1].message == (
        f"{gitplan.MAX_DOCUMENTS:04d}.yaml: over 2000 documents: "
        "the limit of documents a source may hold"
    )
    items = [gitplan.Item(f"app/dev/a{i}", "unchanged") for i in range(600)]
    items.append(gitplan.Item("app/dev/b", "configured"))
    assert gitplan.listed(items) == [{"ref": "app/dev/b", "result": "configured"}]
    assert len(gitplan.listed(items[:10])) == 10


def test_the_commit_alone_does_not_make_a_change_but_anything_else_does() -> None:
    wanted = render({"a.yaml": app_yaml("api")}).docs[Key("App", "acme", "dev", "api")]
    stored = gitplan.with_commit(wanted, "b" * 40)
    stored["status"] = {"ip": "100.64.0.9"}
    stored["metadata"]["resourceVersion"] = "7"
    assert gitplan.same(stored, wanted)
    assert gitplan.digest(stored) == gitplan.digest(wanted)
    stored["spec"]["replicas"] = 3
    assert not gitplan.same(stored, wanted)
    assert gitplan.drifted(stored, gitplan.digest(wanted))
    assert not gitplan.drifted(stored, None)  # nothing recorded: not drift, a first sync


def test_ownership_and_ignore_are_read_from_annotations() -> None:
    wanted = render({"a.yaml": app_yaml("api")}).docs[Key("App", "acme", "dev", "api")]
    assert gitplan.owner(wanted) == "main" and gitplan.commit_of(wanted) == COMMIT
    assert gitplan.owner({"metadata": {}}) is None and gitplan.owner(None) is None
    wanted["metadata"]["annotations"]["kled.io/gitops"] = "ignore"
    assert gitplan.ignored(wanted)


def test_prune_picks_what_git_no_longer_has_environments_last() -> None:
    env = Key("Environment", "acme", "", "qa")
    app = Key("App", "acme", "qa", "api")
    kept = Key("App", "acme", "dev", "web")
    assert gitplan.prunable([env, app, kept], [kept]) == [app, env]
    assert gitplan.prunable([kept], [kept]) == []


def test_the_diff_is_unified_stored_against_git_without_the_commit() -> None:
    key = Key("App", "acme", "dev", "api")
    wanted = render({"a.yaml": app_yaml("api")}).docs[key]
    stored = gitplan.with_commit(wanted, "b" * 40)
    stored["spec"]["replicas"] = 4
    text = gitplan.diff(key, stored, wanted)
    assert text.startswith("--- stored/app/dev/api\n+++ git/app/dev/api\n")
    assert "-  replicas: 4\n+  replicas: 1\n" in text
    assert "gitcommit" not in text
    assert gitplan.diff(key, stored, None).splitlines()[1] == "+++ /dev/null"
    assert gitplan.key_of_ref("app/dev/api", "acme") == key
    assert gitplan.key_of_ref("a.yaml: document 1", "acme") is None


def test_the_diff_of_a_secret_names_the_entries_that_differ_never_their_values() -> None:
    key = Key("Secret", "acme", "dev", "db")
    text = "kind: Secret\nmetadata: {name: db, environment: dev}\n"
    wanted = render({"s.yaml": text + "stringData: {user: ada, password: new}\n"}).docs[key]
    stored = render({"s.yaml": text + "stringData: {user: ada, password: old}\n"}).docs[key]
    shown = gitplan.diff(key, stored, wanted)
    assert "-  password: (hidden)\n+  password: (hidden, changed)\n" in shown
    assert "   user: (hidden)\n" in shown
    for secret in ("new", "old", "ada", "bmV3", "b2xk", "YWRh"):  # nor their base64
        assert secret not in shown


def test_webhook_signatures_of_github_gitea_and_gitlab() -> None:
    body = b'{"ref": "refs/heads/main"}'
    mac = hmac.new(b"s", body, hashlib.sha256).hexdigest()
    assert signed(body, "s", {"x-hub-signature-256": f"sha256={mac}"})
    assert signed(body, "s", {"x-gitea-signature": mac})
    assert signed(body, "s", {"x-gitlab-token": "s"})
    assert not signed(body, "s", {"x-hub-signature-256": mac})  # without its prefix
    assert not signed(body + b" ", "s", {"x-gitea-signature": mac})
    assert not signed(body, "s", {"x-gitlab-token": "t"})
    assert not signed(body, "s", {})


def test_pushed_refs_match_branches_and_tags() -> None:
    assert pushed_ref({"ref": "refs/heads/main", "after": "abc"}) == ("refs/heads/main", "abc")
    assert ref_matches("refs/heads/main", "main")
    assert ref_matches("refs/tags/v1", "v1")
    assert not ref_matches("refs/heads/mainline", "main")

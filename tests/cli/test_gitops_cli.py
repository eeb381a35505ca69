"""``kled gitops`` as a user runs it, against a real server and real git repositories:
sync and status, diff after a change by hand, suspend/resume, promote (to the branch, and
to a new branch for review), and bad input as one line with exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from clikit import Cli

from gitkit import Origin, app_yaml, git


def _setup(admin: Cli, team: str, origin: Origin, *envs: str, **spec: str) -> None:
    admin.ok("team", "create", team)
    for env in envs:
        admin.ok("env", "create", env, "--team", team)
    doc = {
        "kind": "GitSource",
        "metadata": {"name": "envs", "team": team},
        "spec": {"url": origin.url, "interval": "1h", **spec},
    }
    admin.ok("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def test_sync_status_diff_suspend_resume(admin: Cli, tmp_path: Path) -> None:
    team = "gitcli"
    origin = Origin(tmp_path / "repo")
    head = origin.commit({"api.yaml": app_yaml("api")})
    _setup(admin, team, origin, "dev")
    out = admin.ok("gitops", "sync", "envs", "--team", team)
    assert "gitsource/envs: Synced" in out
    assert f"applied: {head}" in out
    assert "app/dev/api" in out
    out = admin.ok("gitops", "status", "--team", team)
    assert "envs" in out and "Synced" in out and head[:12] in out
    assert admin.ok("gitops", "diff", "envs", "--team", team) == ""
    admin.ok("app", "scale", "api", "4", "--env", "dev", "--team", team)
    changed = admin("gitops", "diff", "envs", "--team", team)
    assert changed.code == 1, changed
    assert "-  replicas: 4" in changed.out and "+  replicas: 1" in changed.out
    out = admin.ok("gitops", "sync", "envs", "--team", team)
    assert "configured (drift)" in out
    assert admin.ok("gitops", "suspend", "envs", "--team", team) == "gitsource/envs suspended\n"
    out = admin.ok("get", "gitsource", "envs", "--team", team, "-o", "yaml")
    assert "suspend: true" in out
    admin.ok("gitops", "resume", "envs", "--team", team)
    failed = admin("gitops", "sync", "envs", "--ref", "nope", "--team", team)
    assert failed.code == 1 and "couldn't find remote ref nope" in failed.out
    bad = admin("gitops", "sync", "envs", "--ref", "a..b", "--team", team)
    assert bad.code == 2 and "--ref" in bad.err and len(bad.err.strip().splitlines()) == 1


def test_promote_commits_a_copy_to_the_branch_or_a_new_one(admin: Cli, tmp_path: Path) -> None:
    team = "gitpromote"
    origin = Origin(tmp_path / "repo")
    origin.commit(
        {
            "envs/dev/api.yaml": app_yaml("api", "dev", replicas=2),
            "envs/dev/README.md": "dev notes\n",
            "envs/staging/api.yaml": app_yaml("api", "staging"),
            "envs/staging/old.yaml": app_yaml("old", "staging"),
        }
    )
    _setup(admin, team, origin, "dev", "staging", path="envs/staging")
    out = admin.ok("gitops", "promote", "dev", "staging", "--source", "envs", "--team", team)
    assert out.startswith("promoted dev to staging: ")
    git("pull", "--quiet", "origin", "main", cwd=origin.work)
    staging = origin.work / "envs" / "staging"
    assert sorted(p.name for p in staging.iterdir()) == ["README.md", "api.yaml"]
    promoted = yaml.safe_load((staging / "api.yaml").read_text())
    assert promoted["metadata"]["environment"] == "staging"
    assert promoted["spec"]["replicas"] == 2
    out = admin.ok("gitops", "sync", "envs", "--team", team)
    assert "app/staging/api" in out and "app/staging/old   pruned" in out
    again = admin("gitops", "promote", "dev", "staging", "--source", "envs", "--team", team)
    assert again.code == 0 and "nothing to do" in again.err
    origin.commit({"envs/dev/web.yaml": app_yaml("web", "dev")})
    branch = admin.ok(
        "gitops", "promote", "dev", "staging", "--source", "envs", "--pull-request",
        "--team", team,
    ).strip()  # fmt: skip
    assert branch.startswith("promote/dev-to-staging-")
    listed = git("ls-tree", "-r", "--name-only", branch, cwd=origin.bare)
    assert "envs/staging/web.yaml" in listed.splitlines()
    main = git("ls-tree", "-r", "--name-only", "main", cwd=origin.bare)
    assert "envs/staging/web.yaml" not in main.splitlines()  # main waits for the review
    bad = admin("gitops", "promote", "dev", "dev", "--source", "envs", "--team", team)
    assert bad.code == 2 and "TO" in bad.err
    missing = admin("gitops", "promote", "qa", "staging", "--source", "envs", "--team", team)
    assert missing.code == 2 and "envs/qa is not a folder" in missing.err


def test_the_tour_demo_applied_by_hand_is_adopted_then_driven_by_git(
    admin: Cli, tmp_path: Path
) -> None:
    """The README tour: the demo applied with ``kled apply``, then the same file in git."""
    team = "gittour"
    demo = (Path(__file__).parents[2] / "examples" / "demo.yaml").read_text()
    admin.ok("team", "create", team)
    admin.ok("apply", "-f", "-", "--team", team, stdin=demo)
    origin = Origin(tmp_path / "repo")
    origin.commit({"demo.yaml": demo})
    source_doc = {
        "kind": "GitSource",
        "metadata": {"name": "demo", "team": team},
        "spec": {"url": origin.url, "interval": "1h"},
    }
    admin.ok("apply", "-f", "-", stdin=yaml.safe_dump(source_doc))
    out = admin.ok("gitops", "sync", "demo", "--team", team)
    assert "Synced" in out and "clash" not in out and "denied" not in out
    head = origin.commit({"demo.yaml": demo.replace("replicas: 2", "replicas: 3")}, "scale")
    out = admin.ok("gitops", "sync", "demo", "--team", team)
    assert f"applied: {head}" in out
    assert re.search(r"^app/dev/api +configured$", out, flags=re.M), out
    shown = yaml.safe_load(admin.ok("get", "app", "api", "-e", "dev", "--team", team, "-o", "yaml"))
    assert shown["spec"]["replicas"] == 3

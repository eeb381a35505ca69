"""``kled gitops sync|status|diff|suspend|resume|promote``: environments kept by git.

A ``GitSource`` (docs/gitops.md) is a repository the control plane keeps applied. These
commands drive it: ``sync`` asks for a sync now and prints what it did; ``status`` shows the
last fetched and applied commits and each resource's result; ``diff`` prints a unified diff
of the stored resources against git (what the next sync would revert or prune);
``suspend``/``resume`` stop and restart polling and webhooks.

``promote`` is the one command that writes to the repository, with the user's own git
and credentials (the control plane only reads): it copies one environment's folder onto
another's, commits and pushes — to the source's branch, or with ``--pull-request`` to a
new branch whose name it prints, for teams that promote by review.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kled.cli.output import align, check_format, note, out, to_json, to_yaml
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput, KledError
from kled.resources.loading import SUFFIXES
from kled.resources.meta import is_dns_label
from kled.resources.specs import is_git_ref

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")]


def _path(team: str, name: str) -> str:
    return f"/api/v1/teams/{team}/gitsources/{name}"


def _check_name(name: str, what: str = "SOURCE") -> None:
    if not is_dns_label(name):
        raise InvalidInput(f"{name!r} is not a name (a DNS label)", field=what)


def _show_status(name: str, status: dict[str, Any], output: str) -> None:
    if output == "json":
        out(to_json(status))
        return
    if output == "yaml":
        out(to_yaml(status))
        return
    phase = status.get("phase") or "Pending"
    out(f"gitsource/{name}: {phase}")
    for label, field_name in (
        ("ref", "ref"),
        ("fetched", "lastFetchedCommit"),
        ("applied", "lastAppliedCommit"),
        ("message", "message"),
    ):
        if status.get(field_name):
            out(f"  {label}: {status[field_name]}")
    if status.get("drift"):
        out(f"  drift: {', '.join(status['drift'])}")
    rows = [["RESOURCE", "RESULT", "MESSAGE"]]
    for item in status.get("resources") or []:
        result = item["result"] + (" (drift)" if item.get("drift") else "")
        rows.append([item["ref"], result, item.get("message", "")])
    if len(rows) > 1:
        out(align(rows))


@app.command()
def sync(
    source: str,
    ref: Annotated[
        str | None,
        typer.Option("--ref", help="Sync this branch, tag or commit once (not the spec's ref)."),
    ] = None,
    output: Output = "table",
    team: TeamOption = None,
) -> None:
    """Fetch and apply a GitSource now; print what changed."""
    _check_name(source)
    check_format(output)
    if ref is not None and not is_git_ref(ref):
        raise InvalidInput(f"{ref!r} is not a branch, tag or commit name", field="--ref")
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        status = client.post(_path(chosen, source) + "/sync", {"ref": ref} if ref else {})
    _show_status(source, status, output)
    if status.get("phase") == "Failed":
        raise typer.Exit(1)


@app.command()
def status(
    source: Annotated[str | None, typer.Argument(help="One source (default: every one).")] = None,
    output: Output = "table",
    team: TeamOption = None,
) -> None:
    """The last fetched and applied commits, and each resource's result."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        if source is not None:
            _check_name(source)
            doc = client.get(_path(chosen, source))
            _show_status(source, doc.get("status") or {}, output)
            return
        docs = client.list_all(f"/api/v1/teams/{chosen}/gitsources")
    if output in ("json", "yaml"):
        shown = {d["metadata"]["name"]: d.get("status") or {} for d in docs}
        out(to_json(shown) if output == "json" else to_yaml(shown))
        return
    if not docs:
        note(f"no GitSources in team {chosen}: apply one (docs/gitops.md)")
        return
    rows = [["NAME", "URL", "REF", "PHASE", "APPLIED", "SUSPENDED"]]
    for doc in docs:
        spec, st = doc.get("spec") or {}, doc.get("status") or {}
        rows.append(
            [
                doc["metadata"]["name"],
                str(spec.get("url")),
                str(spec.get("ref")),
                str(st.get("phase") or "Pending"),
                str(st.get("lastAppliedCommit") or "-")[:12],
                "yes" if spec.get("suspend") else "no",
            ]
        )
    out(align(rows))


@app.command()
def diff(source: str, team: TeamOption = None) -> None:
    """A unified diff of the stored resources against git; exit 1 when they differ."""
    _check_name(source)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        text = str(client.get(_path(chosen, source) + "/diff").get("diff") or "")
    if not text:
        note(f"gitsource/{source}: the store is what git says")
        return
    typer.echo(text, nl=False)
    raise typer.Exit(1)


def _set_suspend(source: str, team: str | None, value: bool) -> None:
    _check_name(source)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        doc = client.get(_path(chosen, source))
        doc.setdefault("spec", {})["suspend"] = value
        doc.pop("status", None)
        client.put(_path(chosen, source), doc)
    out(f"gitsource/{source} {'suspended' if value else 'resumed'}")


@app.command()
def suspend(source: str, team: TeamOption = None) -> None:
    """Stop polling and webhooks for a source (``sync`` by hand still works)."""
    _set_suspend(source, team, True)


@app.command()
def resume(source: str, team: TeamOption = None) -> None:
    """Poll and take webhooks again; the next sync runs at once."""
    _set_suspend(source, team, False)


# ---- promote -------------------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        timeout=300,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise KledError(f"git {args[0]}: {lines[-1] if lines else 'failed'}")
    return done.stdout.strip()


def copy_environment(folder_from: Path, folder_to: Path, source: str, target: str) -> int:
    """Make ``folder_to`` a copy of ``folder_from`` with the environment renamed; the
    number of files written. Documents naming the source environment (their
    ``metadata.environment``, or an ``Environment`` of that name) are rewritten; other
    files are copied byte for byte."""
    if folder_to.exists():
        shutil.rmtree(folder_to)
    count = 0
    for path in sorted(folder_from.rglob("*")):
        if not path.is_file():
            continue
        dest = folder_to / path.relative_to(folder_from)
        dest.parent.mkdir(parents=True, exist_ok=True)
        count += 1
        if path.suffix not in SUFFIXES or path.suffix == ".json":
            shutil.copy2(path, dest)
            continue
        text = path.read_text(encoding="utf-8")
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path.name}: not valid YAML: {exc}") from None
        renamed = [_renamed(doc, source, target) for doc in docs]
        if renamed == docs:
            shutil.copy2(path, dest)
        else:
            dest.write_text(yaml.safe_dump_all(renamed, sort_keys=False), encoding="utf-8")
    return count


def _renamed(doc: Any, source: str, target: str) -> Any:
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return doc
    meta = dict(doc["metadata"])
    if meta.get("environment") == source:
        meta["environment"] = target
    if doc.get("kind") == "Environment" and meta.get("name") == source:
        meta["name"] = target
    return {**doc, "metadata": meta}


@app.command()
def promote(
    source_env: Annotated[str, typer.Argument(metavar="FROM", help="The environment to copy.")],
    target_env: Annotated[str, typer.Argument(metavar="TO", help="The environment to replace.")],
    source: Annotated[
        str, typer.Option("--source", "-s", help="The GitSource whose repository to write.")
    ],
    folder: Annotated[
        str, typer.Option("--dir", help="The folder holding one folder per environment.")
    ] = "envs",
    pull_request: Annotated[
        bool,
        typer.Option("--pull-request", help="Push to a new branch (printed) for review."),
    ] = False,
    team: TeamOption = None,
) -> None:
    """Commit a copy of DIR/FROM as DIR/TO to the source's repository and push it."""
    for value, what in ((source_env, "FROM"), (target_env, "TO"), (source, "--source")):
        _check_name(value, what)
    if source_env == target_env:
        raise InvalidInput("FROM and TO are the same environment", field="TO")
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    if folder.startswith("/") or ".." in parts:
        raise InvalidInput("must be a folder inside the repository", field="--dir")
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        spec = client.get(_path(chosen, source)).get("spec") or {}
    url, ref = str(spec["url"]), str(spec.get("ref") or "main")
    with tempfile.TemporaryDirectory(prefix="kled-promote-") as tmp:
        work = Path(tmp) / "repo"
        _git("clone", "--quiet", "--depth", "1", "--branch", ref, "--", url, str(work))
        base = work.joinpath(*parts)
        if not (base / source_env).is_dir():
            raise InvalidInput(
                f"{folder}/{source_env} is not a folder of {url}@{ref}", field="FROM"
            )
        copy_environment(base / source_env, base / target_env, source_env, target_env)
        _git("add", "-A", "--", str(base / target_env), cwd=work)
        if not _git("status", "--porcelain", cwd=work):
            note(f"{folder}/{target_env} is already what {folder}/{source_env} is: nothing to do")
            return
        head = _git("rev-parse", "--short", "HEAD", cwd=work)
        identity = []
        if not _git_config("user.email", work):
            identity = ["-c", "user.email=kled@localhost", "-c", "user.name=kled"]
        message = f"Promote {source_env} to {target_env}\n\nCopied {folder}/{source_env} at {head}."
        _git(*identity, "commit", "--quiet", "-m", message, cwd=work)
        commit = _git("rev-parse", "HEAD", cwd=work)
        branch = f"promote/{source_env}-to-{target_env}-{head}" if pull_request else ref
        _git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    if pull_request:
        out(branch)
        note(f"pushed {commit[:12]} to the new branch {branch}: open a pull request to {ref}")
    else:
        out(f"promoted {source_env} to {target_env}: {commit[:12]} pushed to {ref}")


def _git_config(key: str, cwd: Path) -> str:
    done = subprocess.run(["git", "config", key], cwd=cwd, capture_output=True, text=True)
    return done.stdout.strip()

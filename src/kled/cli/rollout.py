"""``kled rollout status|history|undo|pause|resume|restart``: an app's rolling updates.

The workloads controller does the rolling (``control/rollout.py``) and writes how far it
got to ``App.status.rollout`` and the last ten revisions to ``App.status.revisions``;
these commands read that, or change the spec as ``kubectl rollout`` changes a
Deployment's: ``undo`` writes an older revision's template back into the spec (which rolls
it out as a new revision), ``pause``/``resume`` set ``spec.paused``, ``restart`` sets the
``kled.io/restartedAt`` annotation. Every change is a read and a ``PUT`` with the
resourceVersion read, retried on a conflict (``apps.update_app``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from kled.cli.apps import RESTARTED_AT, update_app
from kled.cli.output import age, align, out, to_json, to_yaml
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.control.rollout import COMPLETE, PAUSED, STALLED, find, with_template
from kled.errors import InvalidInput, NotFound, PermanentError

app = typer.Typer(no_args_is_help=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _path(team: str, env: str, name: str) -> str:
    return f"/api/v1/teams/{team}/environments/{env}/apps/{name}"


def _where(env: str | None, team: str | None) -> tuple[str, str]:
    return STATE.team_for(team), STATE.env_for(env)


def _get(team: str, env: str, name: str) -> dict[str, Any]:
    with STATE.client() as client:
        try:
            doc: dict[str, Any] = client.get(_path(team, env, name))
        except NotFound:
            raise NotFound(f"app/{name} not found in {team}/{env}: see `kled get apps`") from None
    return doc


def describe_progress(name: str, doc: dict[str, Any]) -> tuple[str, bool]:
    """One line about the rollout of ``doc``, and whether it is over (done or stuck)."""
    meta, status = doc.get("metadata") or {}, doc.get("status") or {}
    roll = status.get("rollout") or {}
    wanted = int((doc.get("spec") or {}).get("replicas", 1))
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0) or not roll:
        return f"Waiting for app/{name}'s change to be seen by the control plane...", False
    phase = roll.get("phase")
    number = roll.get("revision")
    if phase == COMPLETE:
        return f"app/{name} successfully rolled out (revision {number})", True
    if phase == STALLED:
        return f"app/{name}: revision {number} stalled: {roll.get('message')}", True
    if phase == PAUSED:
        resume = f"`kled rollout resume {name}`"
        return f"app/{name}: the rollout of revision {number} is paused: {resume}", True
    return (
        f"Waiting for app/{name} to roll out revision {number}: "
        f"{roll.get('readyUpdatedReplicas', 0)} of {wanted} updated replicas ready, "
        f"{roll.get('oldReplicas', 0)} old replicas left...",
        False,
    )


@app.command()
def status(
    name: str,
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", "-w", help="Wait until it is done or stuck.")
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting after this many seconds (0: never).")
    ] = 0,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """How far an app's rollout got; by default waits until it is done (exit 1 if stuck)."""
    if timeout < 0:
        raise InvalidInput("must be 0 or more seconds", field="--timeout")
    chosen_team, chosen_env = _where(env, team)
    until = time.monotonic() + timeout if timeout else None
    last = ""
    while True:
        doc = _get(chosen_team, chosen_env, name)
        line, over = describe_progress(name, doc)
        if line != last:
            out(line)
            last = line
        phase = ((doc.get("status") or {}).get("rollout") or {}).get("phase")
        if over and phase == STALLED:
            raise PermanentError(f"app/{name}: rollout stalled (see `kled rollout undo {name}`)")
        if over or not watch:
            return
        if until is not None and time.monotonic() > until:
            raise PermanentError(f"app/{name}: rollout not finished after {timeout:g}s")
        time.sleep(1)


@app.command()
def history(
    name: str,
    revision: Annotated[
        int | None, typer.Option("--revision", help="Show this revision's template.")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """The revisions of an app kept for `undo` (the last ten)."""
    if output not in ("table", "json"):
        raise InvalidInput(f"unknown output format {output!r} (use table, json)", field="--output")
    doc = _get(*_where(env, team), name)
    status = doc.get("status") or {}
    entries: list[dict[str, Any]] = list(status.get("revisions") or [])
    if revision is not None:
        entry = _entry(name, entries, revision)
        out(to_json(entry) if output == "json" else to_yaml(dict(entry)))
        return
    if output == "json":
        out(to_json(entries))
        return
    current = (status.get("rollout") or {}).get("revision")
    rows = [["REVISION", "HASH", "AGE", "CHANGE"]]
    for e in entries:
        mark = " (current)" if e.get("revision") == current else ""
        rows.append(
            [f"{e.get('revision')}{mark}", str(e.get("hash")), age(e.get("createdAt")),
             _summary(e.get("template") or {})]
        )  # fmt: skip
    out(align(rows))


def _summary(template: dict[str, Any]) -> str:
    spec = template.get("spec") or {}
    what = spec.get("image") or " ".join(str(c) for c in spec.get("command") or [])
    if template.get("restartedAt"):
        what += f" (restarted {template['restartedAt']})"
    return what


def _entry(name: str, entries: list[dict[str, Any]], number: int) -> dict[str, Any]:
    entry = find(entries, number)
    if entry is None:
        kept = ", ".join(str(e.get("revision")) for e in entries) or "none"
        raise InvalidInput(
            f"app/{name} has no revision {number} (kept: {kept}): "
            f"see `kled rollout history {name}`",
            field="--to-revision",
        )
    return dict(entry)


@app.command()
def undo(
    name: str,
    to_revision: Annotated[
        int | None,
        typer.Option("--to-revision", help="The revision to go back to (default: the previous)."),
    ] = None,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Roll an app back to an earlier revision (rolled out as a new revision)."""
    if to_revision is not None and to_revision < 1:
        raise InvalidInput("must be a revision number (1 or more)", field="--to-revision")
    chosen_team, chosen_env = _where(env, team)
    chosen: dict[str, Any] = {}

    def back(doc: dict[str, Any]) -> None:
        status = doc.get("status") or {}
        entries = list(status.get("revisions") or [])
        current = int((status.get("rollout") or {}).get("revision") or 0)
        number = to_revision
        if number is None:
            older = [int(e["revision"]) for e in entries if int(e["revision"]) < current]
            if not older:
                raise InvalidInput(
                    f"app/{name} has no revision before {current} to go back to",
                    field="--to-revision",
                )
            number = max(older)
        entry = _entry(name, entries, number)
        chosen.update(entry)
        rolled = with_template(doc, entry.get("template") or {})
        doc["spec"] = rolled["spec"]
        doc["metadata"] = rolled["metadata"]

    with STATE.client() as client:
        update_app(client, chosen_team, chosen_env, name, back)
    out(f"app/{name} rolled back to revision {chosen.get('revision')}")


def _set_paused(name: str, paused: bool, env: str | None, team: str | None) -> None:
    chosen_team, chosen_env = _where(env, team)

    def change(doc: dict[str, Any]) -> None:
        doc.setdefault("spec", {})["paused"] = paused

    with STATE.client() as client:
        update_app(client, chosen_team, chosen_env, name, change)


@app.command()
def pause(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Stop rolling: changes to what runs wait until `resume` (scaling still happens)."""
    _set_paused(name, True, env, team)
    out(f"app/{name} paused")


@app.command()
def resume(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Roll out what changed while the app was paused."""
    _set_paused(name, False, env, team)
    out(f"app/{name} resumed")


@app.command()
def restart(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Replace every replica by a fresh one, as a rolling update."""
    chosen_team, chosen_env = _where(env, team)

    def mark(doc: dict[str, Any]) -> None:
        meta = doc.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), RESTARTED_AT: _now()}

    with STATE.client() as client:
        update_app(client, chosen_team, chosen_env, name, mark)
    out(f"app/{name} restarted")

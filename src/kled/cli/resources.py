"""``kled apply``, ``get``, ``describe`` and ``delete``: resources of any kind.

``apply`` validates every document locally before it sends the first one, so a file with
a mistake in its third document changes nothing; then it sends them in one request (500 a
request; ``api/batch.py``), teams and environments first: the server applies them in
order, each in a transaction of its own, and stops at the first refusal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import typer

from kled.cli.client import Client, WatchEvent, collection_path, error_from, item_path
from kled.cli.output import (
    age,
    check_format,
    describe,
    note,
    out,
    ref,
    show,
    to_json,
    to_yaml,
    warn,
)
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import InvalidInput, KledError, NotFound
from kled.resources.registry import KindInfo, Scope, kind_info, resolve_kind

#: kinds applied before the rest (and deleted after it), containers first
FIRST = ("Team", "User", "Environment")

Files = Annotated[
    list[str], typer.Option("--filename", "-f", help="A file, a folder, or - for stdin.")
]
Recursive = Annotated[bool, typer.Option("--recursive", "-R", help="Folders recursively.")]


def load(files: list[str], recursive: bool) -> list[dict[str, Any]]:
    """Every document of ``files`` (validated; errors name file, document and field)."""
    from kled.admission.policy.jspolicy import register as read_jspolicy_manifests
    from kled.resources.loading import load_documents, load_path

    read_jspolicy_manifests()  # jsPolicy users' JsPolicy manifests apply unchanged
    docs: list[dict[str, Any]] = []
    for name in files:
        if name == "-":
            docs.extend(load_documents(sys.stdin.read(), source="-"))
        else:
            docs.extend(load_path(name, recursive=recursive))
    if not docs:
        raise InvalidInput(f"no resources found in {', '.join(files)}")
    return docs


def _rank(doc: dict[str, Any]) -> int:
    kind = str(doc.get("kind"))
    return FIRST.index(kind) if kind in FIRST else len(FIRST)


def place(doc: dict[str, Any], team: str | None, env: str | None) -> dict[str, Any]:
    """``doc`` with its team and environment filled from the options or the context."""
    info = kind_info(str(doc["kind"]))
    meta = doc.setdefault("metadata", {})
    what = ref(doc)
    if info.scope is Scope.SERVER:
        return doc
    if team and meta.get("team") and meta["team"] != team:
        raise InvalidInput(
            f"{what} is in team {meta['team']!r} but --team says {team!r}", field="metadata.team"
        )
    meta["team"] = meta.get("team") or STATE.team_for(team)
    if info.scope is Scope.ENVIRONMENT:
        if env and meta.get("environment") and meta["environment"] != env:
            raise InvalidInput(
                f"{what} is in environment {meta['environment']!r} but -e says {env!r}",
                field="metadata.environment",
            )
        if not meta.get("environment"):
            chosen = STATE.env_or_none(env)
            if not chosen:
                raise InvalidInput(
                    f"{what} needs an environment: set metadata.environment or pass -e ENV",
                    field="metadata.environment",
                )
            meta["environment"] = chosen
    return doc


def apply(
    files: Files,
    recursive: Recursive = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check, change nothing.")] = False,
    team: TeamOption = None,
    env: EnvOption = None,
) -> None:
    """Create or update the resources of files: prints created, configured or unchanged."""
    docs = [place(d, team, env) for d in load(files, recursive)]
    docs.sort(key=_rank)  # stable: file order otherwise
    suffix = " (dry run)" if dry_run else ""
    for doc in docs:
        doc.pop("status", None)
    with STATE.client() as client:
        for group in batches(docs):
            answer = client.post(
                "/api/v1/apply",
                {"kind": "List", "items": group},
                dryRun="true" if dry_run else None,
            )
            for doc, result in zip(group, answer["results"], strict=True):
                if "error" in result:
                    status = result["error"]
                    raise error_from(httpx.Response(int(status["code"]), json=status))
                for text in result.get("warnings") or []:
                    warn(text)
                out(f"{ref(doc)} {result.get('result')}{suffix}")


#: documents per apply request, and about the most bytes of them (the server takes 1 MiB)
BATCH_DOCUMENTS = 500
BATCH_BYTES = 512 * 1024


def batches(docs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``docs`` in order, in groups of at most ``BATCH_DOCUMENTS`` and about ``BATCH_BYTES``."""
    group: list[dict[str, Any]] = []
    size = 0
    for doc in docs:
        length = len(json.dumps(doc))
        if group and (len(group) >= BATCH_DOCUMENTS or size + length > BATCH_BYTES):
            yield group
            group, size = [], 0
        group.append(doc)
        size += length
    if group:
        yield group


# ---- reading ---------------------------------------------------------------------------


def _find_across(client: Client, info: KindInfo, team: str, name: str) -> dict[str, Any]:
    """The one resource of that name in the team's environments (no -e given)."""
    found = [
        d
        for d in client.list_all(collection_path(info, team, None))
        if d["metadata"]["name"] == name
    ]
    if not found:
        raise NotFound(f"{info.singular}/{name} not found in any environment of team {team}")
    if len(found) > 1:
        envs = ", ".join(sorted(d["metadata"].get("environment") or "" for d in found))
        raise InvalidInput(
            f"{info.singular}/{name} is in several environments ({envs}): pass -e ENV",
        )
    return found[0]


def fetch(
    client: Client, info: KindInfo, name: str, team: str | None, env: str | None
) -> dict[str, Any]:
    if info.scope is Scope.SERVER:
        return dict(client.get(item_path(info, None, None, name)))
    chosen_team = STATE.team_for(team)
    chosen_env = STATE.env_or_none(env) if info.scope is Scope.ENVIRONMENT else None
    if info.scope is Scope.ENVIRONMENT and not chosen_env:
        return _find_across(client, info, chosen_team, name)
    return dict(client.get(item_path(info, chosen_team, chosen_env, name)))


def get(
    kind: Annotated[str, typer.Argument(help="apps, envs, secrets, users, tokens, nodes…")],
    name: Annotated[str | None, typer.Argument(show_default=False)] = None,
    env: EnvOption = None,
    all_envs: Annotated[
        bool, typer.Option("--all-environments", "-A", help="Every environment of the team.")
    ] = False,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Labels: tier=backend,env!=prod.")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")
    ] = "table",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow changes.")] = False,
    team: TeamOption = None,
) -> None:
    """Show resources of a kind, or one by name."""
    info = resolve_kind(kind)
    check_format(output)
    with STATE.client() as client:
        scope_team = None if info.scope is Scope.SERVER else STATE.team_for(team)
        scope_env = None
        if info.scope is Scope.ENVIRONMENT and not all_envs:
            scope_env = STATE.env_or_none(env)
        if watch:
            _watch(client, info, scope_team, scope_env, name, selector, output)
            return
        if name:
            docs = [fetch(client, info, name, team, None if all_envs else env)]
        else:
            path = collection_path(info, scope_team, scope_env)
            docs = client.list_all(path, labelSelector=selector)
        if not docs and output in ("table", "wide"):
            where = f" in environment {scope_env}" if scope_env else ""
            where += f" of team {scope_team}" if scope_team else ""
            note(f"no {info.plural} found{where}")
            return
        text = show(info.kind, docs, output, single=bool(name))
        if text:
            out(text)


def _event_line(event: WatchEvent) -> list[str]:
    meta = event.object.get("metadata") or {}
    return [
        event.type,
        ref(event.object),
        meta.get("environment") or "-",
        str(event.seq),
        age(meta.get("creationTimestamp")),
    ]


def _cells(cells: list[str], widths: list[int]) -> str:
    return "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _watch(
    client: Client,
    info: KindInfo,
    team: str | None,
    env: str | None,
    name: str | None,
    selector: str | None,
    output: str,
) -> None:
    """Print a line per event until interrupted; resumes by itself after a dropped stream."""
    path = collection_path(info, team, env)
    widths = [8, 24, 12, 8, 5]
    if output in ("table", "wide"):
        out(_cells(["EVENT", "RESOURCE", "ENV", "VERSION", "AGE"], widths))
    warned: list[str] = []

    def retrying(why: str) -> None:
        if not warned:
            note(f"watch interrupted ({why}); resuming…")
        warned.append(why)

    try:
        for event in client.watch(path, params={"labelSelector": selector}, on_retry=retrying):
            warned.clear()
            if name and (event.object.get("metadata") or {}).get("name") != name:
                continue
            if output == "json":
                out(to_json({"type": event.type, "object": event.object}).replace("\n", " "))
            elif output == "yaml":
                out("---\n" + to_yaml({"type": event.type, "object": event.object}))
            elif output == "name":
                out(ref(event.object))
            else:
                out(_cells(_event_line(event), widths))
    except KeyboardInterrupt:
        return


def describe_cmd(
    kind: str,
    name: str,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Show one resource in detail: metadata, spec, status, replicas and events."""
    info = resolve_kind(kind)
    with STATE.client() as client:
        doc = fetch(client, info, name, team, env)
        out(describe(doc))
        if info.kind == "App":
            from kled.cli.output import app_intercepts_section

            out(app_intercepts_section(client, doc))
        if info.kind == "Policy":
            from kled.cli.policy import violations_section

            out(violations_section(client, doc["metadata"]["team"], name))


def delete(
    kind: Annotated[str | None, typer.Argument(show_default=False)] = None,
    name: Annotated[str | None, typer.Argument(show_default=False)] = None,
    files: Annotated[
        list[str] | None, typer.Option("--filename", "-f", help="Delete what files describe.")
    ] = None,
    recursive: Recursive = False,
    ignore_not_found: Annotated[
        bool, typer.Option("--ignore-not-found", help="Absent resources are not an error.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Return when it is gone: for an app, when its replicas have stopped."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="How long --wait waits, in seconds.", min=0)
    ] = 120.0,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Delete a resource by kind and name, or those a file describes."""
    if files:
        if kind or name:
            raise InvalidInput("pass either KIND NAME or -f FILE, not both")
        targets = [place(d, team, env) for d in load(files, recursive)]
        targets.sort(key=_rank, reverse=True)  # contents before their containers
    elif kind and name:
        info = resolve_kind(kind)
        chosen_team, chosen_env = STATE.place(info, team, env)
        meta = {"name": name, "team": chosen_team, "environment": chosen_env}
        targets = [{"kind": info.kind, "metadata": meta}]
    else:
        raise InvalidInput("pass KIND NAME (kled delete app api -e dev) or -f FILE", field="KIND")
    with STATE.client() as client:
        for doc in targets:
            info = kind_info(str(doc["kind"]))
            meta = doc["metadata"]
            path = item_path(info, meta.get("team"), meta.get("environment"), meta["name"])
            started = time.monotonic()
            try:
                before = dict(client.get(path)) if wait else None
                answer = client.delete(path)
            except NotFound:
                if not ignore_not_found:
                    raise
                note(f"{ref(doc)} not found")
                continue
            for text in answer.get("warnings") or []:
                warn(text)
            out(f"{ref(doc)} {answer.get('result') or 'deleted'}")
            if before is not None:
                what = _wait_gone(client, path, before, started + timeout)
                out(f"{ref(doc)} {what} after {time.monotonic() - started:.1f}s")


def _wait_gone(client: Client, path: str, before: dict[str, Any], deadline: float) -> str:
    """Poll until the record is gone and, for an app, its uid has left every node that ran
    one of its replicas (the agents report the apps they still run in ``Node.status.apps``);
    returns what it waited for."""
    uid = (before.get("metadata") or {}).get("uid")
    what = ref(before)

    def record_gone() -> bool:
        try:
            now = client.get(path)
        except NotFound:
            return True
        return bool((now.get("metadata") or {}).get("uid") != uid)  # made anew meanwhile

    _poll(record_gone, f"{what} is still there (finalizers?)", deadline)
    if before.get("kind") != "App":
        return "gone"
    placed = (before.get("status") or {}).get("replicas") or []
    nodes = sorted({str(e["node"]) for e in placed if e.get("node")})
    node_info = kind_info("Node")
    for node in nodes:

        def stopped(node: str = node) -> bool:
            try:
                status = client.get(item_path(node_info, None, None, node)).get("status") or {}
            except NotFound:
                return True
            if status.get("phase") != "Ready" or "apps" not in status:
                warn(f"node/{node} cannot tell whether {what}'s replicas stopped there")
                return True
            return uid not in status["apps"]

        _poll(stopped, f"{what}'s replicas still run on node/{node}", deadline)
    return f"gone, its replicas stopped on {len(nodes)} node(s)," if nodes else "gone"


def _poll(check: Callable[[], bool], failure: str, deadline: float) -> None:
    while not check():
        if time.monotonic() >= deadline:
            raise KledError(f"{failure}; gave up waiting (--timeout)")
        time.sleep(0.25)


def register(root: typer.Typer) -> None:
    root.command()(apply)
    root.command()(get)
    root.command("describe")(describe_cmd)
    root.command()(delete)

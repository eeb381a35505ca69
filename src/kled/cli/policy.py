"""``kled policy``: try policies locally (for CI pipelines) and read what they refused.

``kled policy test POLICY.yaml --resource R.yaml`` runs the policies of a file (Kled
``Policy`` or jsPolicy ``JsPolicy`` manifests) on a resource through the same engine the
server uses: mutating policies first, then validating ones. It prints ``ALLOWED`` or
``DENIED: <message> (policy <name>)``, warnings on stderr and what mutating policies
changed, and exits 0 when the resource is allowed, 1 when it is denied, 2 on bad input.

``kled policy report [POLICY]`` shows what a team's policies refused, warned about or
recorded, as the server keeps it; ``violations_section`` is the same list for
``kled describe policy NAME``. The engine and the resource schemas take about two seconds
to import, so they are imported only by ``kled policy test``: reports stay quick.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kled.cli.client import Client
from kled.cli.output import align, note, out, to_json, to_yaml
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput, KledError
from kled.resources.registry import Scope, kind_info

if TYPE_CHECKING:
    from kled.admission.policy.pool import WorkerPool

app = typer.Typer(help="Test policies locally and report their violations.", no_args_is_help=True)

_OPERATIONS = ("CREATE", "UPDATE", "DELETE")


@app.callback()
def _group() -> None:
    """Test policies locally and report their violations."""


def _load(path: Path, what: str) -> list[dict[str, Any]]:
    from kled.resources.loading import load_path

    if not path.exists():
        raise InvalidInput(f"{what} file {str(path)!r} does not exist", field=what)
    return load_path(path)


def _one_resource(path: Path, what: str) -> dict[str, Any]:
    docs = _load(path, what)
    if len(docs) != 1:
        raise InvalidInput(f"{path}: expected one resource, found {len(docs)}", field=what)
    return docs[0]


def _with_identity(doc: dict[str, Any], team: str, index: int) -> dict[str, Any]:
    meta = dict(doc.get("metadata") or {})
    meta["team"] = team
    meta.setdefault("uid", f"local-{index}-{meta.get('name')}")
    meta.setdefault("resourceVersion", "1")
    return {**doc, "metadata": meta}


async def evaluate(
    policies: list[dict[str, Any]],
    resource: dict[str, Any],
    *,
    old: dict[str, Any] | None = None,
    operation: str = "CREATE",
    user: str = "kled-policy-test",
    team: str = "default",
    existing: list[dict[str, Any]] | None = None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Run ``policies`` on ``resource`` as admission would; the verdict as a dict.

    ``pool`` lets many evaluations share worker processes (a test suite); by default one
    worker is started for this evaluation and stopped after it.
    """
    from kled.admission.policy import EngineSettings, InMemoryViolationSink, PolicyEngine
    from kled.admission.policy.local import MemoryResources, StaticPolicySource
    from kled.admission.policy.patching import json_patch
    from kled.admission.request import AdmissionRequest, Operation, UserInfo

    policy_docs = [_with_identity(p, team, i) for i, p in enumerate(policies)]
    resources = MemoryResources(_with_identity(d, team, i) for i, d in enumerate(existing or []))
    sink = InMemoryViolationSink()
    engine = PolicyEngine(
        StaticPolicySource(policy_docs),
        resources,
        sink,
        settings=EngineSettings(workers=1),
        pool=pool,
    )
    meta = resource.get("metadata") or {}
    kind = str(resource.get("kind"))
    environment = meta.get("environment")
    if kind_info(kind).scope is Scope.ENVIRONMENT:
        environment = environment or "default"
    target = {**resource, "metadata": {**meta, "team": team}}
    if environment and kind_info(kind).scope is Scope.ENVIRONMENT:
        target["metadata"]["environment"] = environment
    before = json.loads(json.dumps(target))
    req = AdmissionRequest(
        operation=Operation(operation),
        kind=kind,
        name=str(meta.get("name") or ""),
        team=team,
        environment=environment,
        object=None if operation == "DELETE" else target,
        old_object=target if operation == "DELETE" else old,
        user=UserInfo(username=user, team=team, role="member"),
    )
    try:
        mutated = await engine.mutating_hook(req)
        warnings = list(mutated.warnings)
        result = mutated
        if mutated.allowed:
            result = await engine.validating_hook(req)
            warnings.extend(result.warnings)
        violations = await sink.list(team, None, 100)
    finally:
        await engine.close()
    final = req.object
    return {
        "allowed": result.allowed,
        "message": result.message,
        "reason": result.reason,
        "code": result.code,
        "policy": result.policy,
        "warnings": warnings,
        "patch": json_patch(before, final) if final is not None and result.allowed else [],
        "object": final if result.allowed else None,
        "violations": [v.as_dict() for v in violations],
    }


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


@app.command("test")
def test(
    policy_file: Annotated[Path, typer.Argument(metavar="POLICY.yaml", help="Policies to run.")],
    resource: Annotated[Path, typer.Option("--resource", "-r", help="The resource to check.")],
    old: Annotated[
        Path | None, typer.Option("--old", help="The resource before (makes it an UPDATE).")
    ] = None,
    operation: Annotated[
        str | None, typer.Option("--operation", help="CREATE, UPDATE or DELETE.")
    ] = None,
    user: Annotated[str, typer.Option("--user", help="Who asks.")] = "kled-policy-test",
    team: Annotated[str, typer.Option("--team", "-t", help="The team of it all.")] = "default",
    existing: Annotated[
        list[Path] | None,
        typer.Option("--existing", help="Resources get()/list() can see (repeatable)."),
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Run the policies of POLICY.yaml on a resource, locally: exit 0 allowed, 1 denied."""
    from kled.admission.policy import compile_check

    try:
        if output not in ("text", "json"):
            raise InvalidInput(f"unknown output {output!r} (use text or json)", field="--output")
        op = (operation or ("UPDATE" if old else "CREATE")).upper()
        if op not in _OPERATIONS:
            raise InvalidInput(f"unknown operation {op!r} (use CREATE, UPDATE or DELETE)")
        policies = _load(policy_file, "POLICY.yaml")
        if not policies or any(p.get("kind") != "Policy" for p in policies):
            raise InvalidInput(f"{policy_file}: expected Policy documents only")
        for doc in policies:
            try:
                compile_check(str((doc.get("spec") or {}).get("javascript") or ""))
            except InvalidInput as exc:
                name = (doc.get("metadata") or {}).get("name")
                raise InvalidInput(f"{policy_file}: policy {name}: {exc}") from None
        target = _one_resource(resource, "--resource")
        previous = _one_resource(old, "--old") if old else None
        seen = [d for path in existing or [] for d in _load(path, "--existing")]
        verdict = asyncio.run(
            evaluate(
                policies, target, old=previous, operation=op, user=user, team=team, existing=seen
            )
        )
    except InvalidInput as exc:
        _fail(str(exc), 2)
        return
    except KledError as exc:
        _fail(str(exc), 1)
        return
    if output == "json":
        sys.stdout.write(json.dumps(verdict, indent=2) + "\n")
    else:
        for warning in verdict["warnings"]:
            sys.stderr.write(f"Warning: {warning}\n")
        if verdict["allowed"]:
            sys.stdout.write("ALLOWED\n")
            for change in verdict["patch"]:
                value = "" if change["op"] == "remove" else f" {json.dumps(change['value'])}"
                sys.stdout.write(f"  {change['op']} {change['path']}{value}\n")
        else:
            sys.stdout.write(f"DENIED: {verdict['message']} (policy {verdict['policy']})\n")
    raise typer.Exit(0 if verdict["allowed"] else 1)


# ---- reports from the server -----------------------------------------------------------

REPORT_FORMATS = ("table", "json", "yaml")
REPORT_COLUMNS = ("TIME", "POLICY", "ACTION", "KIND/NAME", "ENV", "USER", "MESSAGE")


def fetch_violations(
    client: Client, team: str, policy: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """The server's report: a ``PolicyReport`` of one policy (404 if there is no such
    policy), or the team's ``ViolationList``; newest first."""
    if policy:
        path = f"/api/v1/teams/{team}/policies/{policy}/report"
    else:
        path = f"/api/v1/teams/{team}/violations"
    answer: dict[str, Any] = client.get(path, limit=limit)
    return answer


def _when(timestamp: Any) -> str:
    """``2026-11-23 01:32:05``: to the second, in UTC as stored; a table has no room for ms."""
    text = str(timestamp or "-")
    return text.replace("T", " ").split(".")[0].removesuffix("Z")


def violation_rows(items: list[dict[str, Any]]) -> list[list[str]]:
    """One table row per violation, under ``REPORT_COLUMNS``."""
    rows = [list(REPORT_COLUMNS)]
    for v in items:
        what = f"{str(v.get('kind') or '').lower()}/{v.get('name') or ''}"
        message = " ".join(str(v.get("message") or "").split())  # one line per violation
        rows.append(
            [
                _when(v.get("time")),
                str(v.get("policy") or "-"),
                str(v.get("action") or "-"),
                what,
                str(v.get("environment") or "-"),
                str(v.get("user") or "-"),
                message or "-",
            ]
        )
    return rows


def violations_section(client: Client, team: str, name: str, limit: int = 10) -> str:
    """The ``Violations:`` part of ``kled describe policy NAME``: its newest ``limit``."""
    items = fetch_violations(client, team, name, limit).get("items") or []
    if not items:
        return "Violations:  <none>"
    table = align(violation_rows(items))
    return "\n".join(["Violations:", *("  " + line for line in table.splitlines())])


@app.command("report")
def report(
    policy: Annotated[
        str | None,
        typer.Argument(metavar="[POLICY]", help="One policy (default: all of the team's)."),
    ] = None,
    team: TeamOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")] = "table",
    limit: Annotated[
        int,
        typer.Option("--limit", help="Newest N violations (at most 1000).", min=1, max=1000),
    ] = 100,
) -> None:
    """Show what the team's policies denied, warned about or recorded, newest first."""
    if output not in REPORT_FORMATS:
        raise InvalidInput(
            f"unknown output format {output!r} (use {', '.join(REPORT_FORMATS)})",
            field="--output",
        )
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        answer = fetch_violations(client, chosen, policy, limit)
    if output == "json":
        out(to_json(answer))
        return
    if output == "yaml":
        out(to_yaml(answer))
        return
    items = answer.get("items") or []
    if not items:
        which = f"policy {policy}" if policy else "the policies"
        note(f"no violations of {which} in team {chosen}")
        return
    out(align(violation_rows(items)))


if __name__ == "__main__":
    app()

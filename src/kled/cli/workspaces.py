"""``kled ws up|list|stop|start|delete|logs``: development environments from devcontainer.json.

``up`` takes a local folder or a git URL. A folder is read here first (the config found in
the spec's order, parsed, its features resolved), so a broken or missing config, or a
feature that cannot be fetched, is one line before anything is uploaded or created. The
folder is then packed (``.gitignore`` respected, ``.git`` left out, the same bytes for the
same files so an unchanged folder is not rebuilt), uploaded in parts the server skips when
it has them, and the ``Workspace`` applied; a git URL is applied as is and cloned on the
node. ``up`` waits until the workspace is Running (after postCreate) or Failed, showing its
phases and the lines its build and hooks print.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.cli import wsagent, wshost, wsimage, wsinit
from kled.cli.client import Client
from kled.cli.logs import stream_logs
from kled.cli.output import align, check_format, note, out, show, warn
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput, KledError, NotFound
from kled.resources.registry import RESET_AT, RESTARTED_AT
from kled.sync.ignore import Ignore
from kled.workspace import jsonc
from kled.workspace.devcontainer import load_config
from kled.workspace.discovery import find_configs, not_found, relative_name, select_config
from kled.workspace.features import resolve_features
from kled.workspace.projects import check_project, find_projects
from kled.workspace.variables import local_env_names

app = typer.Typer(no_args_is_help=True)
app.add_typer(wsimage.app, name="image", help="The preload image: kled ws image build.")

#: the API's body limit is 1 MiB: parts stay well under it
PART_SIZE = 768 * 1024
#: how often a waiting ``up``/``start``/``stop`` asks for the workspace's phase (one GET)
WAIT_POLL = 0.15
_GIT_URL = re.compile(r"^(https?|ssh|git|file)://|^[\w.-]+@[\w.-]+:")

NameArg = Annotated[str, typer.Argument(help="The workspace's name.")]


def is_git_url(source: str) -> bool:
    return bool(_GIT_URL.match(source))


def default_name(source: str) -> str:
    """A DNS label from the folder's or repository's name."""
    base = source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    label = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:63].strip("-")
    if not label:
        raise InvalidInput(f"cannot make a name from {source!r}: pass --name", field="--name")
    return label


def check_folder(folder: Path, config: str | None) -> dict[str, str]:
    """The folder's devcontainer.json read as the node will: errors here, before upload.
    Returns the values of the client's variables it names (``${localEnv:V}``), which the
    node resolves it with."""
    found = select_config(folder, config)
    if found is None:
        raise not_found(folder)
    resolved = load_config(folder, found, env=dict(os.environ), source=str(found))
    for warning in resolved.warnings:
        warn(str(warning))
    resolve_features(resolved)
    names = local_env_names(jsonc.load(found, source=str(found)).value)
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def pack(folder: Path) -> bytes:
    """The folder as a gzipped tar, the same bytes for the same files and modes."""
    ignore = Ignore.for_root(folder, [".git/"])
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk(folder, ignore):
            rel = path.relative_to(folder).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            info.pax_headers = {}
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)
    return buffer.getvalue()


def _walk(folder: Path, ignore: Ignore) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        rel_root = base.relative_to(folder).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not ignore.matches(prefix + d, True))
        for name in dirs:
            yield base / name
        for name in sorted(files):
            if not ignore.matches(prefix + name, False):
                yield base / name


def upload(client: Client, team: str, data: bytes) -> str:
    """Upload ``data`` in parts (those the server has are skipped); its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    base = f"/api/v1/teams/{team}/workspace-sources/{digest}"
    state = client.get(base)
    if state.get("complete"):
        return digest
    have = set(state.get("parts") or [])
    count = max(1, -(-len(data) // PART_SIZE))
    http = client._http  # raw bytes: the CLI's client sends JSON only
    for index in range(count):
        if index in have:
            continue
        chunk = data[index * PART_SIZE : (index + 1) * PART_SIZE]
        response = http.put(f"{base}/parts/{index}", content=chunk)
        if response.status_code >= 400:
            from kled.cli.client import error_from

            raise error_from(response)
    client.post(f"{base}/complete", None, parts=count)
    return digest


def _kept_metadata(existing: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the existing workspace's labels and annotations (an apply that
    left out the recreate annotation would make a new container)."""
    old = existing.get("metadata") or {}
    out = dict(metadata)
    for key in ("labels", "annotations"):
        if old.get(key):
            out[key] = dict(old[key])
    return out


#: what ``--provider`` may name (``ssh`` nodes run ``container``; ``kubernetes`` is a design)
PROVIDERS = ("container", "process")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _path(team: str, name: str = "") -> str:
    return f"/api/v1/teams/{team}/workspaces" + (f"/{name}" if name else "")


def _apply(client: Client, doc: dict[str, Any]) -> bool:
    """Apply ``doc``; False when it changed nothing (the workspace is as it was)."""
    answer = client.post("/api/v1/apply", doc) or {}
    return answer.get("result") != "unchanged"


@app.command()
def up(
    source: Annotated[str, typer.Argument(help="A local folder, or a git URL.")],
    name: Annotated[str | None, typer.Option("--name", help="The workspace's name.")] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="The devcontainer.json, relative to SOURCE.")
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Run it on this node.")] = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", help="container (default), or process: no container engine."),
    ] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="The git branch or tag.")] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project", help="No devcontainer.json: run this folder's Dockerfile (see configs)."
        ),
    ] = None,
    recreate: Annotated[
        bool, typer.Option("--recreate", help="A new container (volumes and files kept).")
    ] = False,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="A new container from fresh files: source and volumes go."),
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once applied.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for Running.", min=1.0)
    ] = 900.0,
    team: TeamOption = None,
) -> None:
    """Create or update a workspace and wait until it runs."""
    if provider == "kubernetes":
        raise InvalidInput(
            "--provider kubernetes is designed (docs/workspaces.md) but not available yet: "
            "use container or process",
            field="--provider",
        )
    chosen = STATE.team_for(team)
    spec: dict[str, Any] = {}
    if project is not None and config is not None:
        raise InvalidInput("--project and --config: give one of them", field="--project")
    if is_git_url(source):
        spec["source"] = {"git": source, **({"ref": ref} if ref else {})}
        label = name or default_name(source)
        data = None
    else:
        if ref:
            raise InvalidInput("--ref applies to a git URL only", field="--ref")
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise InvalidInput(f"{source}: not a folder nor a git URL", field="SOURCE")
        label = name or default_name(str(folder))
        if project is not None:
            check_project(folder, project)
            data = pack(folder)
        elif wsimage.wants_preload(folder, config):
            note(f"no devcontainer.json: the preload image {wsimage.DEFAULT_TAG}")
            data = wsimage.with_preload_config(pack(folder))
        else:
            local_env = check_folder(folder, config)
            wsinit.initialize(folder, config)  # the client's hook: before anything is sent
            if local_env:
                spec["localEnv"] = local_env
            data = pack(folder)
        spec["source"] = {"path": str(folder)}
        spec.update(wshost.requirements(folder, config))  # scheduled by them
    if config:
        spec["devcontainer"] = config
    if project is not None:
        spec["project"] = project.strip()
    if node:
        spec["node"] = node
    if provider:
        if provider not in PROVIDERS:
            raise InvalidInput(f"--provider: one of {', '.join(PROVIDERS)}", field="--provider")
        spec["provider"] = provider
    with STATE.client() as client:
        if data is not None:
            note(f"uploading {len(data) / 1024:.0f} KiB")
            spec["source"]["upload"] = upload(client, chosen, data)
        try:
            existing = client.get(_path(chosen, label))
        except NotFound:
            existing = None
        metadata: dict[str, Any] = {"name": label, "team": chosen}
        if existing is None:
            # yours: you (and team admins) enter it, its kled CLI is logged in as you
            me = client.get("/api/v1/whoami") or {}
            if me.get("team") == chosen and me.get("username"):
                spec["owner"] = me["username"]
        if existing is not None:
            kept = existing.get("spec") or {}
            kept = {k: v for k, v in kept.items() if k in ("env", "provider", "owner")}
            spec = {**kept, **spec, "running": True}
            metadata = _kept_metadata(existing, metadata)
            if (existing.get("status") or {}).get("phase") == "Failed":
                recreate = True  # another try: a new container, as --recreate makes
        if recreate or reset:
            metadata.setdefault("annotations", {})[RESTARTED_AT] = _now()
        if reset:
            metadata["annotations"][RESET_AT] = _now()
        doc = {"apiVersion": "kled.io/v1", "kind": "Workspace", "metadata": metadata, "spec": spec}
        since = time.time()
        # the phase it had before this apply is not the answer, however recent (an `up`
        # right after another would take the last one's Running for its own)
        before = ((existing or {}).get("status") or {}).get("phaseChangedAt") or None
        if not _apply(client, doc):
            since, before = 0.0, None  # unchanged: its phase now is the answer
        note(f"workspace {label} {'unchanged' if not since else 'applied'}")
        if no_wait:
            return
        stop = _show_output(chosen, label, since) if since else None
        # a clone over SSH on the node: the laptop's agent, until up stops waiting
        agent = wsagent.forward(chosen, label) if data is None and wsagent.wanted(source) else None
        try:
            _wait(client, chosen, label, ("Running",), timeout, since=since, stale=before)
        finally:
            if agent is not None:
                agent()
            if stop is not None:
                stop()


@app.command()
def configs(
    source: Annotated[str, typer.Argument(help="A local folder, or a git URL.")],
    ref: Annotated[str | None, typer.Option("--ref", help="The git branch or tag.")] = None,
) -> None:
    """What SOURCE can run: its devcontainer.json files (a monorepo has several) and the
    subprojects with a Dockerfile (`kled ws up SOURCE --project DIR`)."""
    if is_git_url(source):
        with tempfile.TemporaryDirectory(prefix="kled-configs-") as tmp:
            _list_configs(_shallow_clone(source, ref, Path(tmp) / "repo"), source)
        return
    if ref:
        raise InvalidInput("--ref applies to a git URL only", field="--ref")
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidInput(f"{source}: not a folder nor a git URL", field="SOURCE")
    _list_configs(folder, source)


def _shallow_clone(url: str, ref: str | None, into: Path) -> Path:
    args = ["git", "clone", "--quiet", "--depth", "1", *(["--branch", ref] if ref else [])]
    done = subprocess.run(
        [*args, "--", url, str(into)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise KledError(f"git clone of {url} failed: {lines[-1] if lines else done.returncode}")
    return into


def _list_configs(folder: Path, shown: str) -> None:
    found = find_configs(folder)
    projects = find_projects(folder)
    if not found and not projects:
        note(
            f"no devcontainer.json and no Dockerfile in {shown}: "
            f"`kled ws up` runs it in the preload image {wsimage.DEFAULT_TAG}"
        )
        return
    rows = [["KIND", "PATH", "UP WITH"]]
    try:
        chosen = select_config(folder)  # what `up` without --config runs
    except InvalidInput:
        chosen = None  # several in subfolders: --config picks one
    for path in found:
        rel = relative_name(folder, path)
        flag = "" if path == chosen else f" --config {rel}"
        rows.append(["config", rel, f"kled ws up {shown}{flag}"])
    for project in projects:
        where = (
            project.dockerfile if project.path == "." else f"{project.path}/{project.dockerfile}"
        )
        rows.append(["project", where, f"kled ws up {shown} --project {project.path}"])
    out(align(rows))


def _show_output(team: str, name: str, since: float) -> Callable[[], None]:
    """Print the build's and hooks' lines as they come, on stderr, beside the phases;
    returns what ends it (the stream closed, the thread joined)."""
    seconds = max(1, int(time.time() - since) + 2)
    done = threading.Event()
    client = STATE.client()

    def follow() -> None:
        path = f"{_path(team, name)}/logs"
        # only a display: however the stream ends (closed by ``stop`` included), quietly
        with contextlib.suppress(Exception):
            for entry in stream_logs(client, path, {"follow": "true", "since": f"{seconds}s"}):
                if done.is_set():
                    return
                print(f"  | {entry.get('line', '')}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=follow, name="ws-output", daemon=True)
    thread.start()

    def stop() -> None:
        time.sleep(0.3)  # the last lines of a hook that just ended
        done.set()
        client.close()
        # A read blocked on a quiet stream does not see the close: not waited for (the
        # thread is a daemon; its late line, if any, is dropped by ``done``).
        thread.join(0.05)

    return stop


def _wait(
    client: Client,
    team: str,
    name: str,
    phases: tuple[str, ...],
    timeout: float,
    *,
    since: float,
    stale: str | None = None,
) -> dict[str, Any]:
    """Poll the workspace until it is in one of ``phases``; Failed is an error. A phase
    set at ``stale`` (a ``phaseChangedAt``) is an old one, never the answer."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        doc: dict[str, Any] = client.get(_path(team, name))
        status = doc.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        changed = status.get("phaseChangedAt") or ""
        fresh = _after(changed, since) and changed != stale
        if phase != shown and (fresh or phase == "Pending"):
            extra = f" ({status['reason']})" if status.get("reason") and phase != "Failed" else ""
            note(f"{name}: {phase}{extra}")
            shown = phase
        if fresh and phase == "Failed":
            raise KledError(f"workspace {name} failed: {status.get('reason') or 'no reason given'}")
        if fresh and phase in phases:
            return doc
        if time.monotonic() > deadline:
            raise KledError(
                f"workspace {name} is still {phase} after {timeout:.0f}s; see `kled ws logs {name}`"
            )
        time.sleep(WAIT_POLL)


def _after(stamp: str, since: float) -> bool:
    if not stamp:
        return False
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return moment >= since - 1.0


@app.command("list")
def list_workspaces(
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
    team: TeamOption = None,
) -> None:
    """The team's workspaces: phase, node, source."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(_path(chosen))
    if output not in ("table", "wide"):
        out(show("Workspace", docs, output, single=False))
        return
    if not docs:
        note(f"no workspaces in team {chosen}")
        return
    rows = [["NAME", "PHASE", "NODE", "SOURCE", "REASON"]]
    for doc in docs:
        spec, status = doc.get("spec") or {}, doc.get("status") or {}
        source = spec.get("source") or {}
        rows.append(
            [
                doc["metadata"]["name"],
                str(status.get("phase") or "Pending"),
                str(status.get("node") or "-"),
                str(source.get("git") or source.get("path") or "-"),
                str(status.get("reason") or ""),
            ]
        )
    out(align(rows))


def _set_running(name: str, team: str | None, running: bool, wait: bool, timeout: float) -> None:
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        doc = client.get(_path(chosen, name))
        spec = dict(doc.get("spec") or {})
        spec["running"] = running
        since = time.time()
        metadata = _kept_metadata(doc, {"name": name, "team": chosen})
        changed = _apply(
            client, {"apiVersion": "kled.io/v1", "kind": "Workspace", "metadata": metadata,
                     "spec": spec},
        )  # fmt: skip
        if not changed:
            since = 0.0  # already as asked: its phase now is the answer
        if wait:
            _wait(
                client,
                chosen,
                name,
                ("Running",) if running else ("Stopped",),
                timeout,
                since=since,
            )
        else:
            note(f"workspace {name}: {'starting' if running else 'stopping'}")


NoWait = Annotated[bool, typer.Option("--no-wait", help="Return at once.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait.", min=1.0)]


@app.command()
def stop(
    name: NameArg, no_wait: NoWait = False, timeout: Timeout = 120.0, team: TeamOption = None
) -> None:
    """Stop a workspace's container; its files and volumes stay."""
    _set_running(name, team, False, not no_wait, timeout)


@app.command()
def start(
    name: NameArg, no_wait: NoWait = False, timeout: Timeout = 300.0, team: TeamOption = None
) -> None:
    """Start a stopped workspace again (postStartCommand runs)."""
    _set_running(name, team, True, not no_wait, timeout)


@app.command()
def delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    team: TeamOption = None,
) -> None:
    """Delete a workspace: its container, volumes and files on the node go too."""
    chosen = STATE.team_for(team)
    if not yes and sys.stdin.isatty():
        typer.confirm(f"delete workspace {name} with its volumes and files?", abort=True)
    with STATE.client() as client:
        client.delete(_path(chosen, name))
    note(f"workspace {name} deleted")


@app.command()
def logs(
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new lines.")] = False,
    team: TeamOption = None,
) -> None:
    """What the workspace's build and lifecycle commands printed."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        client.get(_path(chosen, name))  # 404 for a workspace that does not exist
        params = {"follow": "true" if follow else None}
        params = {k: v for k, v in params.items() if v is not None}
        for entry in stream_logs(client, f"{_path(chosen, name)}/logs", params):
            stream = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
            print(entry.get("line", ""), file=stream, flush=True)


def _exec_in(team: str, name: str, command: list[str], stdin: bool) -> None:
    from kled.cli.exec import run_exec

    route = f"{_path(team, name)}/exec"
    code = asyncio.run(run_exec(team, "", name, command, None, stdin, route=route))
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    raise typer.Exit(code)


def exec_command(
    ctx: typer.Context,
    name: NameArg,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", help="Send no stdin: the command reads EOF.")
    ] = False,
    team: TeamOption = None,
) -> None:
    """Run `-- CMD…` in a Running workspace as its remoteUser, in its workspaceFolder,
    with its remoteEnv; exits with the command's exit code."""
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("give the command after --: kled ws exec NAME -- CMD…", field="CMD")
    _exec_in(STATE.team_for(team), name, command, not no_stdin)


def ssh_command(
    ctx: typer.Context,
    name: NameArg,
    team: TeamOption = None,
) -> None:
    """SSH into a Running workspace with OpenSSH's `ssh` (a shell with a PTY; `-- CMD…`
    runs that instead and exits with its code), relayed through the API."""
    from kled.cli import wsssh

    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    chosen = STATE.team_for(team)
    argv = wsssh.ssh_argv(chosen, wsssh.check_name(name), command, STATE.context)
    env = dict(os.environ)
    # The proxy is another kled: it gets this run's server and token, not on its argv.
    if STATE.server:
        env["KLED_SERVER"] = STATE.server
    if STATE.token:
        env["KLED_TOKEN"] = STATE.token
    done = subprocess.run(argv, env=env, check=False)
    raise typer.Exit(done.returncode)


def proxy_command(name: NameArg, team: TeamOption = None) -> None:
    """Relay SSH on stdin/stdout to the workspace (OpenSSH's ProxyCommand; through the
    API, so it works off the mesh). Uses the CLI's own key (made on first use)."""
    from kled.cli import wsssh
    from kled.cli.exec import run_exec

    chosen = STATE.team_for(team)
    _, public = wsssh.ensure_key()
    route = f"{_path(chosen, wsssh.check_name(name))}/ssh"
    code = asyncio.run(run_exec(chosen, "", name, ["ssh", public], None, True, route=route))
    raise typer.Exit(code)


def ssh_config_command(name: NameArg, team: TeamOption = None) -> None:
    """Print the workspace's Host block for ~/.ssh/config (`ssh ws-NAME`, VS Code
    Remote-SSH, JetBrains Gateway): kled's key, the proxy through the API, its host key."""
    from kled.cli import wsssh

    chosen = STATE.team_for(team)
    with STATE.client() as client:
        client.get(_path(chosen, name))  # 404 for a workspace that does not exist
    out(wsssh.host_block(chosen, wsssh.check_name(name), STATE.context).rstrip("\n"))


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
app.command("exec", context_settings=_EXTRA)(exec_command)
app.command("ssh", context_settings=_EXTRA)(ssh_command)
app.command("proxy")(proxy_command)
app.command("ssh-config")(ssh_config_command)


@app.command()
def status(
    name: NameArg,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
    team: TeamOption = None,
) -> None:
    """One workspace: its phase (and why), node, source."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        doc = client.get(_path(chosen, name))
    if output not in ("table", "wide"):
        out(show("Workspace", [doc], output, single=True))
        return
    spec, state = doc.get("spec") or {}, doc.get("status") or {}
    source = spec.get("source") or {}
    rows = [
        ["phase", str(state.get("phase") or "Pending")],
        ["since", str(state.get("phaseChangedAt") or "-")],
        ["node", str(state.get("node") or "-")],
        ["address", str(state.get("ip") or "-")],
        ["source", str(source.get("git") or source.get("path") or "-")],
        ["config", str(spec.get("devcontainer") or "(found in the spec's order)")],
    ]
    if state.get("reason"):
        rows.append(["reason", str(state["reason"])])
    out(align(rows))

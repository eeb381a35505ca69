"""``kled intercept start|stop|list``: point an app's traffic at your own machine.

``start`` creates an ``Intercept`` (the control plane checks the app, its ports, the device
and clashes; docs/intercept.md). ``--env-file`` writes the environment the app's replicas
see — the environment's variables, its Configs and Secrets from ``envFrom``, then
``spec.env`` — so a local process behaves like a replica; a secret the user may not reveal
(only owners and admins may) is left out with a warning naming it. ``-- CMD…`` runs a
command with that environment and ends the intercept when it exits, Ctrl-C included, then
waits for the gateways as ``stop`` does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.agent.net import liveness
from kled.cli import clusterintercepts
from kled.cli.client import Client
from kled.cli.output import align, check_format, note, out, show, warn
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import Forbidden, InvalidInput, NotFound, Unavailable

app = typer.Typer(no_args_is_help=True)

PortOption = Annotated[
    list[str] | None,
    typer.Option("--port", "-p", help="SVC:LOCAL (or PORT): an app port and the local port."),
]
HeaderOption = Annotated[
    str | None,
    typer.Option("--header", help="NAME=VALUE: only requests with this header (personal)."),
]


NoWaitOption = Annotated[
    bool,
    typer.Option("--no-wait", help="Return at once, before the gateways have applied it."),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", help="Seconds to wait for every gateway of the team.", min=0.0),
]
ClusterOption = Annotated[
    str | None,
    typer.Option("--cluster", help="The Kled Cluster of svc/NAME."),
]
NamespaceOption = Annotated[
    str,
    typer.Option("--namespace", "-n", help="The namespace of svc/NAME in --cluster."),
]
#: how often the gateways' reports are read while waiting
POLL = 0.05


def parse_ports(items: list[str]) -> list[dict[str, int]]:
    ports: list[dict[str, int]] = []
    for item in items:
        svc, sep, local = item.partition(":")
        try:
            port = {"port": int(svc), "localPort": int(local if sep else svc)}
        except ValueError:
            raise InvalidInput(
                f"{item!r} is not SVC:LOCAL (two port numbers)", field="--port"
            ) from None
        ports.append(port)
    return ports


def parse_header(text: str) -> dict[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InvalidInput(f"{text!r} is not NAME=VALUE", field="--header")
    return {"name": name.strip(), "value": value.strip()}


def intercept_name(app_name: str, device: str, header_value: str | None = None) -> str:
    """``<app>-<device>[-<header value>]``, cut to a DNS label."""
    parts = [app_name, device] + ([header_value] if header_value else [])
    slug = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-+", "-", slug)[:63].rstrip("-")


def gateway_entry(doc: dict[str, Any]) -> str | None:
    """How the gateways name this Intercept in their reports; None while its device has
    no mesh address (no gateway can apply it before)."""
    meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    ip = (doc.get("status") or {}).get("deviceIP")
    if not ip:
        return None
    header = spec.get("header")
    match = (str(header["name"]), str(header["value"])) if header else None
    return liveness.intercept_entry(str(meta.get("environment")), str(spec["app"]), ip, match)


def wait_for_gateways(
    client: Client,
    team: str,
    what: str,
    entry: str | Callable[[], str | None],
    *,
    applied: bool,
    timeout: float,
    started: float,
) -> tuple[int, int, list[str]]:
    """Wait until every Ready gateway of ``team`` lists ``entry`` (``applied``), or none
    does; ``entry`` is read again each time when it is a function. Returns how many do as
    asked, how many gateways there are, and those falling back on it. A gateway that does
    not within ``timeout`` seconds is named in the error."""
    deadline = started + timeout
    while True:
        current = entry if isinstance(entry, str) else entry()
        gateways = [g for g in client.get(f"/api/v1/teams/{team}/gateways")["items"] if g["ready"]]
        if current is None:
            late = [g["node"] for g in gateways]
        else:
            late = [g["node"] for g in gateways if (current in g["intercepts"]) != applied]
        if current is not None and not late:
            fallback = [g["node"] for g in gateways if current in g["fallback"]]
            return len(gateways), len(gateways), fallback
        if time.monotonic() >= deadline:
            done = len(gateways) - len(late)
            if current is None:
                why = "its device has no mesh address yet (see `kled device list`)"
            else:
                why = f"not yet {'applied' if applied else 'removed'} by {', '.join(late)}"
            raise Unavailable(
                f"{what}: {done}/{len(gateways)} gateways after {timeout:g} s; {why} "
                "(see `kled node list`; --timeout waits longer)"
            )
        time.sleep(POLL)


def _decode(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return value


def app_environment(client: Client, team: str, env: str, name: str) -> dict[str, str]:
    """What the app's replicas see: env variables, then envFrom, then spec.env (last wins)."""
    base = f"/api/v1/teams/{team}/environments/{env}"
    try:
        doc: dict[str, Any] = client.get(f"{base}/apps/{name}")
    except NotFound:
        raise NotFound(f"app/{name} not found in {team}/{env}: see `kled get apps`") from None
    spec = doc.get("spec") or {}
    environment = client.get(f"/api/v1/teams/{team}/environments/{env}")
    result: dict[str, str] = dict((environment.get("spec") or {}).get("variables") or {})
    for source in spec.get("envFrom") or []:
        if source.get("config"):
            config = client.get(f"{base}/configs/{source['config']}")
            result.update({k: str(v) for k, v in (config.get("data") or {}).items()})
        elif source.get("secret"):
            try:
                secret = client.get(f"{base}/secrets/{source['secret']}", reveal="true")
            except Forbidden:
                warn(
                    f"secret/{source['secret']} not written: reading its values needs the "
                    "admin or owner role"
                )
                continue
            result.update({k: _decode(str(v)) for k, v in (secret.get("data") or {}).items()})
    result.update({k: str(v) for k, v in (spec.get("env") or {}).items()})
    return result


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:@%+,-]*", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_env_file(path: Path, variables: dict[str, str]) -> None:
    text = "".join(f"{k}={_quote(v)}\n" for k, v in sorted(variables.items()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _run_then_stop(command: list[str], variables: dict[str, str], stop: Any) -> int:
    """Run ``command``; whatever happens to it, end the intercept afterwards."""
    env = {**os.environ, **variables}
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        stop()
        raise InvalidInput(f"cannot run {command[0]!r}: {exc.strerror}", field="CMD") from None
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # The child got the same Ctrl-C; wait for it to finish, then clean up.
                proc.send_signal(signal.SIGINT)
    finally:
        stop()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def start(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app to intercept.")],
    to: Annotated[
        str, typer.Option("--to", help="The device (or ws/WORKSPACE) that receives the traffic.")
    ],
    port: PortOption = None,
    header: HeaderOption = None,
    on_device_offline: Annotated[
        str, typer.Option("--on-device-offline", help="fallback (to the replicas) or keep.")
    ] = "fallback",
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Write the app's environment here.")
    ] = None,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = 30.0,
    cluster: ClusterOption = None,
    namespace: NamespaceOption = "default",
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Point APP's traffic (or only requests with --header) at a device; `-- CMD` runs a
    command with the app's environment and ends the intercept when it exits. APP may be
    svc/NAME with --cluster C [-n NS]: a Kled Cluster's Service.

    Returns once every gateway of the team has applied it, and after CMD once every one
    has removed it again (--no-wait: at once)."""
    if on_device_offline not in ("fallback", "keep"):
        raise InvalidInput("must be fallback or keep", field="--on-device-offline")
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    chosen_team = STATE.team_for(team)
    service = clusterintercepts.service_name(app_name)
    match = parse_header(header) if header else None
    with STATE.client() as client:
        if service is not None:
            targets = clusterintercepts.targets(
                client, chosen_team, cluster, namespace, service, parse_ports(port or [])
            )
        else:
            chosen = STATE.env_for(env)
            targets = [clusterintercepts.Target(chosen, app_name, parse_ports(port or []))]
        first = targets[0]
        variables = (
            app_environment(client, chosen_team, first.environment, first.app)
            if env_file or command
            else {}
        )
        started = time.monotonic()
        made: list[tuple[str, str, str]] = []  # (environment, app, intercept name)

        def stop() -> None:
            ended = time.monotonic()
            for environment, app_of, name in made:
                path = f"/api/v1/teams/{chosen_team}/environments/{environment}/intercepts"
                try:
                    current = client.get(f"{path}/{name}")
                    client.delete(f"{path}/{name}")
                except NotFound:
                    continue  # ended by someone else meanwhile (`kled intercept stop`)
                out(f"intercept/{name} deleted: app/{app_of} is served by its replicas again")
                if not no_wait:
                    _wait_removed(client, chosen_team, environment, [current], timeout, ended)

        try:
            for target in targets:
                name = intercept_name(target.app, to, match["value"] if match else None)
                spec: dict[str, Any] = {
                    "app": target.app,
                    "device": to,
                    "ports": target.ports,
                    "onDeviceOffline": on_device_offline,
                }
                if match:
                    spec["header"] = match
                doc = {
                    "apiVersion": "kled.io/v1",
                    "kind": "Intercept",
                    "metadata": {
                        "name": name,
                        "team": chosen_team,
                        "environment": target.environment,
                    },
                    "spec": spec,
                }
                client.post(
                    f"/api/v1/teams/{chosen_team}/environments/{target.environment}/intercepts", doc
                )
                made.append((target.environment, target.app, name))
                what = (
                    f"requests with {match['name']}: {match['value']}" if match else "all traffic"
                )
                where = f"workspace/{to[3:]}" if to.startswith("ws/") else f"device/{to}"
                via = f" (service/{service} of cluster {cluster})" if service else ""
                out(f"intercept/{name} created: {what} to app/{target.app}{via} goes to {where}")
            if not no_wait:
                for environment, _, name in made:
                    _wait_started(client, chosen_team, environment, name, timeout, started)
            if env_file is not None:
                write_env_file(env_file, variables)
                note(f"wrote {len(variables)} variables to {env_file}")
        except KeyboardInterrupt:
            if not command:
                raise
            stop()  # Ctrl-C before the command started: the intercept ends all the same
            raise typer.Exit(130) from None

        if command:
            raise typer.Exit(_run_then_stop(command, variables, stop))


def _wait_started(
    client: Client, team: str, env: str, name: str, timeout: float, started: float
) -> None:
    what = f"intercept/{env}/{name}"

    def entry() -> str | None:
        return gateway_entry(
            client.get(f"/api/v1/teams/{team}/environments/{env}/intercepts/{name}")
        )

    done, total, fallback = wait_for_gateways(
        client, team, what, entry, applied=True, timeout=timeout, started=started
    )
    out(f"{what}: active on {done}/{total} gateways in {time.monotonic() - started:.2f} s")
    if fallback:
        warn(
            f"the device is silent at {', '.join(fallback)}: their traffic goes to the "
            "replicas until it answers (docs/intercept.md)"
        )


@app.command()
def stop(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The intercepted app.")],
    to: Annotated[str | None, typer.Option("--to", help="Only intercepts to this device.")] = None,
    header: HeaderOption = None,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = 30.0,
    cluster: ClusterOption = None,
    namespace: NamespaceOption = "default",
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """End the intercepts of APP (all, or those to --to DEVICE / with --header); APP may
    be svc/NAME with --cluster C [-n NS].

    Returns once every gateway of the team has removed them (--no-wait: at once)."""
    chosen_team = STATE.team_for(team)
    service = clusterintercepts.service_name(app_name)
    match = parse_header(header) if header else None
    with STATE.client() as client:
        if service is not None:
            targets = clusterintercepts.targets(
                client, chosen_team, cluster, namespace, service, []
            )
        else:
            targets = [clusterintercepts.Target(STATE.env_for(env), app_name, [])]
        started = time.monotonic()
        chosen_by_env: dict[str, list[dict[str, Any]]] = {}
        for target in targets:
            path = f"/api/v1/teams/{chosen_team}/environments/{target.environment}/intercepts"
            for doc in client.list_all(path):
                spec = doc.get("spec") or {}
                mine = spec.get("header") or {}
                if spec.get("app") != target.app or (to and spec.get("device") != to):
                    continue
                if match and (
                    str(mine.get("name", "")).lower() != match["name"].lower()
                    or str(mine.get("value", "")).strip() != match["value"]
                ):
                    continue
                chosen_by_env.setdefault(target.environment, []).append(doc)
        if not chosen_by_env:
            what = app_name if service is not None else f"app/{app_name}"
            raise NotFound(f"no intercept of {what} matches: see `kled intercept list`")
        for environment, chosen in chosen_by_env.items():
            path = f"/api/v1/teams/{chosen_team}/environments/{environment}/intercepts"
            for doc in chosen:
                with contextlib.suppress(NotFound):
                    client.delete(f"{path}/{doc['metadata']['name']}")
                out(f"intercept/{doc['metadata']['name']} deleted")
        if not no_wait:
            for environment, chosen in chosen_by_env.items():
                _wait_removed(client, chosen_team, environment, chosen, timeout, started)


def _wait_removed(
    client: Client,
    team: str,
    env: str,
    docs: list[dict[str, Any]],
    timeout: float,
    started: float,
) -> None:
    """Wait until no gateway of ``team`` still applies the (deleted) intercepts ``docs``."""
    for doc in docs:
        entry = gateway_entry(doc)
        if entry is None:
            continue  # never applied anywhere: its device had no address
        what = f"intercept/{env}/{doc['metadata']['name']}"
        done, total, _ = wait_for_gateways(
            client, team, what, entry, applied=False, timeout=timeout, started=started
        )
        took = time.monotonic() - started
        out(f"{what}: removed from {done}/{total} gateways in {took:.2f} s")


@app.command("list")
def list_intercepts(
    output: Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml or json.")] = (
        "table"
    ),
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """The intercepts of an environment, or of every environment of the team."""
    check_format(output)
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_or_none(env)
    path = f"/api/v1/teams/{chosen_team}/intercepts"
    if chosen_env:
        path = f"/api/v1/teams/{chosen_team}/environments/{chosen_env}/intercepts"
    with STATE.client() as client:
        docs = client.list_all(path)
    if not docs and output in ("table", "wide"):
        note(f"no intercepts in {chosen_team}/{chosen_env or '*'}")
        return
    if output not in ("table", "wide"):
        out(show("Intercept", docs, output, single=False))
        return
    rows = [["NAME", "ENV", "APP", "DEVICE", "PORTS", "HEADER", "PHASE", "GATEWAYS"]]
    for doc in docs:
        spec, status = doc.get("spec") or {}, doc.get("status") or {}
        ports = ",".join(f"{p['port']}:{p.get('localPort') or p['port']}" for p in spec["ports"])
        header = spec.get("header") or {}
        rows.append(
            [
                doc["metadata"]["name"],
                str(doc["metadata"].get("environment") or "-"),
                str(spec.get("app")),
                str(spec.get("device")),
                ports or "all",
                f"{header['name']}={header['value']}" if header else "-",
                str(status.get("phase") or "-"),
                str(status.get("gateways") or "-"),
            ]
        )
    out(align(rows))

"""``kled node add --ssh USER@HOST`` and ``kled node remove NAME``: a machine as a node.

Any Linux machine this CLI reaches by SSH (the OpenSSH client, ``BatchMode``: a key, never
a password prompt; host keys trusted on first use in Kled's own ``…/kled/ssh/known_hosts``,
never the user's) becomes a node: probe it (Linux, a ``python3`` of the bundle's version,
systemd or not), stream the bundle (``kled.cli.agentbundle``: the same Kled as this CLI, so
the machine needs no internet), write the join token to a 0600 file, start ``kled agent``
under systemd or a restart loop, and wait until the node is Ready. A failure after the
first write removes what was written, so a refused machine keeps nothing of Kled's.

How to reach each node again is kept on this laptop (``$XDG_DATA_HOME/kled/ssh-nodes/``):
``remove`` drains the node, waits for its replicas to move, stops the agent, forgets the
node on the server and removes its files. ``sshplan`` holds the scripts, this the running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.cli import agentbundle, sshplan
from kled.cli.client import Client
from kled.cli.output import note, out
from kled.cli.state import STATE
from kled.cli.wsssh import ssh_dir
from kled.errors import InvalidInput, KledError, NotFound, Unavailable

_TARGET = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.:_-]+$")
NODES = "/api/v1/nodes"


@dataclass
class Remote:
    """How to reach a machine: ``ssh -p PORT [-i IDENTITY] TARGET``."""

    target: str
    port: int = 22
    identity: str | None = None

    def argv(self, script: str) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
        known = ssh_dir() / "known_hosts"
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10"]
        argv += ["-p", str(self.port)]
        if self.identity:
            argv += ["-o", "IdentitiesOnly=yes", "-i", self.identity]
        return [*argv, self.target, script]

    def run(self, script: str, stdin: bytes | None = None, timeout: float = 600) -> str:
        ssh_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            done = subprocess.run(
                self.argv(script), input=stdin, capture_output=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise Unavailable("ssh is not installed here (Debian: openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{self.target}: no answer within {timeout:.0f} s") from None
        err = done.stderr.decode(errors="replace").strip().splitlines()
        if done.returncode == 255:
            raise Unavailable(
                f"cannot connect to {self.target}: {err[-1] if err else 'ssh failed'}"
            )
        if done.returncode != 0:
            raise Unavailable(f"{self.target}: {err[-1] if err else f'exit {done.returncode}'}")
        return done.stdout.decode(errors="replace")


def records_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kled" / "ssh-nodes"


def _save(remote: Remote, inst: sshplan.Install) -> None:
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {"remote": asdict(remote), "install": asdict(inst)}
    (folder / f"{inst.name}.json").write_text(json.dumps(body, indent=2) + "\n")


def _load(name: str) -> tuple[Remote, sshplan.Install] | None:
    path = records_dir() / f"{name}.json"
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    inst = body["install"]
    inst["agent_args"] = tuple(inst.get("agent_args") or ())
    return Remote(**body["remote"]), sshplan.Install(**inst)


def _ready(client: Client, name: str) -> bool:
    try:
        doc: dict[str, Any] = client.get(f"{NODES}/{name}")
    except NotFound:
        return False
    status = doc.get("status") or {}
    return status.get("phase") == "Ready" or (
        status.get("phase") is None and bool(status.get("ready"))
    )


def add(
    target: str,
    identity: Path | None,
    name: str | None,
    port: int,
    prefix: str | None,
    supervisor: str,
    agent_server: str | None,
    agent_args: list[str],
    timeout: float,
) -> None:
    if not _TARGET.match(target):
        raise InvalidInput(f"--ssh {target!r}: give USER@HOST", field="--ssh")
    if identity is not None and not identity.is_file():
        raise InvalidInput(f"--identity {identity}: no such key file", field="--identity")
    if supervisor not in sshplan.SUPERVISORS:
        raise InvalidInput(
            f"--supervisor must be one of {', '.join(sshplan.SUPERVISORS)}", field="--supervisor"
        )
    remote = Remote(target, port, str(identity) if identity else None)
    with STATE.client() as client:
        probe = sshplan.parse_probe(remote.run(sshplan.PROBE_SCRIPT, timeout=60))
        chosen = sshplan.node_name(name, probe)
        try:
            client.get(f"{NODES}/{chosen}")
        except NotFound:
            pass
        else:
            raise InvalidInput(f"node/{chosen} already exists: pass --name", field="--name")
        inst = sshplan.decide(
            probe,
            agentbundle.python_tag(),
            name=chosen,
            server=agent_server or client.server,
            prefix=prefix,
            supervisor=supervisor,
            agent_args=tuple(agent_args),
        )
        assert probe.python is not None
        token = str(client.post("/api/v1/node-tokens", {"ttl": "1h"})["token"])
        try:
            with tempfile.TemporaryDirectory(prefix="kled-bundle-") as tmp:
                note("packing this Kled")
                bundle = agentbundle.build(Path(tmp) / "bundle.tar.gz")
                note(f"copying {bundle.stat().st_size / 2**20:.0f} MiB to {target}:{inst.prefix}")
                remote.run(sshplan.unpack_script(inst, probe.python), stdin=bundle.read_bytes())
            remote.run(sshplan.token_script(inst), stdin=token.encode())
            remote.run(sshplan.start_script(inst), timeout=60)
            note(f"agent started ({inst.supervisor}); waiting for node/{chosen} to be Ready")
            deadline = time.monotonic() + timeout
            while not _ready(client, chosen):
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"node/{chosen} not Ready after {timeout:.0f} s "
                        f"(see {inst.prefix}/agent.log there)"
                    )
                time.sleep(1)
        except BaseException:
            _undo(remote, inst, client)
            raise
        _save(remote, inst)
    out(f"node/{chosen} added ({target}, {inst.supervisor})")


def _undo(remote: Remote, inst: sshplan.Install, client: Client) -> None:
    try:
        remote.run(sshplan.stop_script(inst), timeout=60)
    except KledError as e:
        note(f"could not clean {remote.target}:{inst.prefix}: {e}")
    with contextlib.suppress(KledError):
        client.delete(f"{NODES}/{inst.name}")


def _drain(client: Client, name: str, timeout: float) -> None:
    from kled.cli.nodes import _set_unschedulable, replicas_on

    _set_unschedulable(name, True)
    deadline = time.monotonic() + timeout
    while replicas_on(client, name):
        if time.monotonic() > deadline:
            note(f"replicas still on node/{name} after {timeout:.0f} s: removing it anyway")
            return
        time.sleep(1)


def remove(name: str, timeout: float) -> None:
    record = _load(name)
    if record is None:
        raise NotFound(
            f"node/{name} was not added with `kled node add --ssh` from here "
            f"(no {records_dir() / (name + '.json')}): use `kled node delete`"
        )
    remote, inst = record
    with STATE.client() as client:
        try:
            client.get(f"{NODES}/{name}")
            present = True
        except NotFound:
            present = False
        if present:
            note(f"draining node/{name}")
            _drain(client, name, timeout)
        remote.run(sshplan.stop_script(inst), timeout=60)
        if present:
            with contextlib.suppress(NotFound):
                client.delete(f"{NODES}/{name}")
    (records_dir() / f"{name}.json").unlink(missing_ok=True)
    out(f"node/{name} removed ({remote.target}:{inst.prefix} gone)")


def register(app: typer.Typer) -> None:
    """``add`` and ``remove`` on ``kled node``."""

    @app.command("add")
    def add_command(
        ssh: Annotated[str, typer.Option("--ssh", help="USER@HOST to turn into a node.")],
        identity: Annotated[
            Path | None, typer.Option("--identity", "-i", help="The SSH private key.")
        ] = None,
        name: Annotated[
            str | None, typer.Option("--name", help="Node name (default: its host name).")
        ] = None,
        port: Annotated[int, typer.Option("--port", "-p", help="SSH port.", min=1, max=65535)] = 22,
        prefix: Annotated[
            str | None,
            typer.Option("--prefix", help="Install folder there (default ~/.kled-agent/NAME)."),
        ] = None,
        supervisor: Annotated[
            str,
            typer.Option("--supervisor", help="auto, systemd or loop (no systemd)."),
        ] = "auto",
        agent_server: Annotated[
            str | None,
            typer.Option("--agent-server", help="Server URL as the machine reaches it."),
        ] = None,
        agent_arg: Annotated[
            list[str] | None,
            typer.Option("--agent-arg", help="More flags of `kled agent` there, repeatable."),
        ] = None,
        timeout: Annotated[
            float, typer.Option("--timeout", help="Seconds to wait for Ready.", min=1.0)
        ] = 120.0,
    ) -> None:
        """Install and start an agent on a machine over SSH; wait until it is Ready."""
        add(ssh, identity, name, port, prefix, supervisor, agent_server, agent_arg or [], timeout)

    @app.command("remove")
    def remove_command(
        name: str,
        timeout: Annotated[
            float, typer.Option("--timeout", help="Seconds to wait for replicas to move.", min=1.0)
        ] = 60.0,
    ) -> None:
        """Undo `kled node add --ssh`: drain, stop the agent, delete the node and its files."""
        remove(name, timeout)

"""The remote half of ``kled node add --ssh``: what runs on the far machine, as data.

Every step is one ``sh -c`` script sent over one SSH connection (the bundle and the join
token go on stdin, never in an argument, so neither shows in ``ps`` nor in a shell history);
this module only writes those scripts and reads the probe's answer, so that it is tested
without a machine. ``kled.cli.nodes_ssh`` runs them.

Layout on the far side, all under one prefix (``~/.kled-agent/<node>`` by default), so that
removing the prefix removes everything but a systemd unit::

    PREFIX/venv/      python3 -m venv --without-pip, the bundle unpacked in site-packages
    PREFIX/token      the join token, 0600
    PREFIX/run-agent  exec the agent with its flags
    PREFIX/data/      the agent's data dir (registration, replicas, logs)
    PREFIX/supervise  the restart loop, when there is no systemd (pid in PREFIX/supervisor.pid)

With systemd (and root) the agent runs as the unit ``kled-agent-<node>.service``
(``Restart=always``); otherwise a ``nohup setsid`` loop restarts it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from kled.errors import InvalidInput, Unavailable

PROBE_SCRIPT = r"""
echo "home=$HOME"
echo "host=$(hostname 2>/dev/null || uname -n)"
echo "uid=$(id -u)"
echo "kernel=$(uname -s)"
if command -v python3 >/dev/null 2>&1; then
  echo "python=$(python3 -c 'import platform,sys;print("%d.%d-%s" % (sys.version_info[0], sys.version_info[1], platform.machine()))')"
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; fi
"""  # noqa: E501
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SUPERVISORS = ("auto", "systemd", "loop")


@dataclass(frozen=True)
class Probe:
    """What the far machine said about itself."""

    home: str
    host: str
    uid: int
    kernel: str
    python: str | None
    systemd: bool


def parse_probe(text: str) -> Probe:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Probe(
        home=values.get("home", ""),
        host=values.get("host", ""),
        uid=int(values.get("uid", "-1") or -1),
        kernel=values.get("kernel", ""),
        python=values.get("python") or None,
        systemd=values.get("systemd") == "yes",
    )


@dataclass(frozen=True)
class Install:
    """One node's installation: where, under which name, supervised how."""

    name: str
    prefix: str
    server: str
    supervisor: str
    """``systemd`` or ``loop`` (``auto`` resolved by ``decide``)."""
    agent_args: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return f"kled-agent-{self.name}.service"


def node_name(name: str | None, probe: Probe) -> str:
    chosen = name or probe.host.split(".")[0].lower()
    if not _NAME.match(chosen):
        raise InvalidInput(
            f"node name {chosen!r}: lower-case letters, digits and '-', at most 63",
            field="--name",
        )
    return chosen


def decide(
    probe: Probe,
    want_python: str,
    *,
    name: str,
    server: str,
    prefix: str | None,
    supervisor: str,
    agent_args: tuple[str, ...] = (),
) -> Install:
    """Check the far machine can take the bundle, and settle prefix and supervisor."""
    if probe.kernel != "Linux":
        raise Unavailable(f"the machine runs {probe.kernel or 'an unknown system'}, not Linux")
    if probe.python is None:
        raise Unavailable("no python3 on the machine: install python3 there first")
    if probe.python != want_python:
        raise Unavailable(
            f"python3 there is {probe.python}, this Kled is built for {want_python}: "
            "install that Python there, or run kled node add from a matching machine"
        )
    if supervisor not in SUPERVISORS:
        raise InvalidInput(f"--supervisor must be one of {', '.join(SUPERVISORS)}")
    if supervisor == "systemd" and not (probe.systemd and probe.uid == 0):
        raise Unavailable("--supervisor systemd needs systemd running there and root")
    if supervisor == "auto":
        supervisor = "systemd" if probe.systemd and probe.uid == 0 else "loop"
    if prefix is None:
        if not probe.home.startswith("/"):
            raise Unavailable("the machine gives no home folder: pass --prefix")
        prefix = f"{probe.home.rstrip('/')}/.kled-agent/{name}"
    if not prefix.startswith("/") or any(c.isspace() for c in prefix) or "'" in prefix:
        raise InvalidInput(f"--prefix {prefix!r}: an absolute path without spaces")
    return Install(name, prefix.rstrip("/"), server, supervisor, agent_args)


def unpack_script(inst: Install, python: str) -> str:
    """Make the venv and unpack the bundle read from stdin."""
    p = shlex.quote(inst.prefix)
    minor = python.split("-")[0]
    site = f"{p}/venv/lib/python{minor}/site-packages"
    return (
        f"set -e; umask 022; mkdir -p {p}; python3 -m venv --without-pip {p}/venv; "
        f"tar -xzf - -C {site}"
    )


def token_script(inst: Install) -> str:
    """Write the join token read from stdin to PREFIX/token, 0600 from the start."""
    return f"set -e; umask 077; cat > {shlex.quote(inst.prefix)}/token"


def run_agent(inst: Install) -> str:
    """PREFIX/run-agent: the agent with its flags (the token from the file)."""
    p = inst.prefix
    argv = [
        f"{p}/venv/bin/python", "-m", "kled.agent", "--server", inst.server,
        "--token-file", f"{p}/token", "--name", inst.name, "--data-dir", f"{p}/data",
        *inst.agent_args,
    ]  # fmt: skip
    return "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + "\n"


def supervise_loop(inst: Install) -> str:
    p = shlex.quote(inst.prefix)
    return f"#!/bin/sh\nwhile :; do {p}/run-agent >>{p}/agent.log 2>&1; sleep 2; done\n"


def systemd_unit(inst: Install) -> str:
    return (
        "[Unit]\nDescription=Kled agent (node "
        f"{inst.name})\nAfter=network-online.target\n\n"
        f"[Service]\nExecStart={inst.prefix}/run-agent\nRestart=always\nRestartSec=2\n"
        "KillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def _write(path: str, text: str, mode: str) -> str:
    q = shlex.quote(path)
    return f"printf %s {shlex.quote(text)} > {q}; chmod {mode} {q}"


def start_script(inst: Install) -> str:
    """Write the scripts and start the supervisor."""
    p = shlex.quote(inst.prefix)
    parts = ["set -e", _write(f"{inst.prefix}/run-agent", run_agent(inst), "0755")]
    if inst.supervisor == "systemd":
        unit = f"/etc/systemd/system/{inst.unit}"
        parts += [
            _write(unit, systemd_unit(inst), "0644"),
            "systemctl daemon-reload",
            f"systemctl enable --now {shlex.quote(inst.unit)}",
        ]
    else:
        parts += [
            _write(f"{inst.prefix}/supervise", supervise_loop(inst), "0755"),
            f"nohup setsid {p}/supervise >/dev/null 2>&1 </dev/null & echo $! > {p}/supervisor.pid",
        ]
    return "; ".join(parts)


def stop_script(inst: Install) -> str:
    """Stop the agent (not the replicas it started) and remove every file of it."""
    p = shlex.quote(inst.prefix)
    if inst.supervisor == "systemd":
        unit = shlex.quote(inst.unit)
        stop = (
            f"systemctl disable --now {unit} 2>/dev/null || true; "
            f"rm -f /etc/systemd/system/{unit}; systemctl daemon-reload"
        )
    else:
        # setsid made the loop a group leader: its group is the loop and the agent.
        stop = (
            f"if [ -f {p}/supervisor.pid ]; then "
            f'kill -TERM -- "-$(cat {p}/supervisor.pid)" 2>/dev/null || true; sleep 1; '
            f'kill -KILL -- "-$(cat {p}/supervisor.pid)" 2>/dev/null || true; fi'
        )
    return f"{stop}; rm -rf {p}"

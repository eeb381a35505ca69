"""``kled node add --ssh``: a machine reached over real OpenSSH becomes a node, and goes.

Host 1 of the lab (``agentlab.lab_mesh``) is "the machine": Debian's ``sshd`` runs in its
network namespace with a throwaway host key and an authorized_keys in the test's folder;
host 2 is the laptop that runs ``kled``; the control plane is on host 3. The install goes to
a prefix of its own in the test's folder, so the agent really runs from the copied bundle
(its own venv, not this checkout). The node registers, becomes Ready, runs an App's
process replica; ``kled node remove`` stops it and removes every file. Bad input — a port
with no sshd, a key the machine does not accept — is one line, and nothing is left. sshd,
agents and replicas are killed at the end, even on failure.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_kled
from sshlab import PORT, sshd_on, sshd_skip_reason

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

MACHINE = 1


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    reason = sshd_skip_reason()
    if reason:
        pytest.skip(reason)
    with lab_mesh(tmp_path, 2, "sshnode") as m:
        yield m


@pytest.fixture
def sshd(mesh: Mesh, tmp_path: Path) -> Iterator[Path]:
    """sshd on host 1 at 198.18.0.1:2222; yields the folder with the client key ``id``."""
    with sshd_on(mesh, MACHINE, tmp_path / "sshd", tmp_path / "remote") as folder:
        yield folder


def _kled(mesh: Mesh, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return laptop_kled(mesh, home, mesh.server.admin_token, *args)


def _add_args(mesh: Mesh, folder: Path, prefix: Path, key: str = "id") -> list[str]:
    return [
        "node", "add", "--ssh", f"root@{mesh.lab.underlay_ip(MACHINE)}", "--port", str(PORT),
        "--identity", str(folder / key), "--name", "far", "--prefix", str(prefix),
        "--supervisor", "loop", "--timeout", "120",
        "--agent-arg=--network=off", "--agent-arg=--heartbeat=1",
    ]  # fmt: skip


def _nodes(mesh: Mesh) -> list[str]:
    docs = mesh.api("GET", "/api/v1/nodes")["items"]
    return [d["metadata"]["name"] for d in docs]


def test_a_machine_over_ssh_becomes_a_node_runs_a_replica_and_is_removed(
    mesh: Mesh, sshd: Path, tmp_path: Path
) -> None:
    home = tmp_path / "laptop"
    prefix = tmp_path / "remote" / "far"
    added = _kled(mesh, home, *_add_args(mesh, sshd, prefix))
    assert added.returncode == 0, added.stderr + added.stdout
    assert "node/far added" in added.stdout

    # the agent runs from the copy, with the token in a 0600 file and not on its command line
    assert (prefix / "token").stat().st_mode & 0o777 == 0o600
    agents = [
        p
        for p in psutil.process_iter(["cmdline"])
        if f"{prefix}/venv/bin/python" in (p.info["cmdline"] or [])
    ]
    assert agents, "no agent running from the copied venv"
    assert all(mesh.token not in " ".join(p.cmdline()) for p in agents)
    listed = _kled(mesh, home, "node", "list")
    assert "far" in listed.stdout and "Ready" in listed.stdout

    marker = tmp_path / "replica-ran"
    mesh.team("a", "100.93.0.0/16")
    mesh.app(
        "a",
        "worker",
        {"runtime": "process", "command": ["sh", "-c", f"echo $$ > {marker}; exec sleep 100000"]},
    )
    eventually(marker.exists, "the app's replica running on the ssh node")
    hosting = eventually(
        lambda: {r.get("node") for r in mesh.get_app("a", "worker")["status"]["replicas"]},
        "the replica's node in the app's status",
    )
    assert hosting == {"far"}

    removed = _kled(mesh, home, "node", "remove", "far", "--timeout", "30")
    assert removed.returncode == 0, removed.stderr + removed.stdout
    assert "node/far removed" in removed.stdout
    assert "far" not in _nodes(mesh)
    assert not prefix.exists()
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(prefix) in " ".join(p.info["cmdline"] or [])
    ]
    # drained before the agent stopped: its replica went with it
    replica = int(marker.read_text())
    assert not psutil.pid_exists(replica) or psutil.Process(replica).status() == "zombie"


def test_an_unreachable_machine_a_refused_key_or_no_python_is_one_line_and_leaves_nothing(
    mesh: Mesh, sshd: Path, tmp_path: Path
) -> None:
    home = tmp_path / "laptop"
    prefix = tmp_path / "remote" / "far"
    args = _add_args(mesh, sshd, prefix)
    wrong_port = [*args]
    wrong_port[wrong_port.index(str(PORT))] = "2299"
    refused = _kled(mesh, home, *wrong_port)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to root@198.18.0.1" in lines[0], refused.stderr

    bad_key = _kled(mesh, home, *_add_args(mesh, sshd, prefix, key="other"))
    assert bad_key.returncode != 0
    assert "Permission denied" in bad_key.stderr, bad_key.stderr
    assert len(bad_key.stderr.strip().splitlines()) == 1

    no_python = _kled(mesh, home, *_add_args(mesh, sshd, prefix, key="nopy"))
    assert no_python.returncode != 0
    assert no_python.stderr.strip().splitlines() == [
        "error: no python3 on the machine: install python3 there first"
    ], no_python.stderr

    assert not prefix.exists()
    assert "far" not in _nodes(mesh)
    never_added = _kled(mesh, home, "node", "remove", "far")
    assert never_added.returncode != 0 and "not added with" in never_added.stderr

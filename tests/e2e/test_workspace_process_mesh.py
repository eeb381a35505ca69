"""A ``process`` workspace on the team mesh, as a container workspace is on it.

Host 1 runs a real agent with its network layer; host 2 is the laptop; the control plane
is on host 3 (``agentlab.lab_mesh``). ``kled ws up --provider process`` puts a workspace on
node1 with no container: its sandbox joins its own pod namespace with a team IP (``kled
ws status``), its hostname resolves to that IP, ``wget http://api.dev/`` (the node's own
wget) reaches the app through the team's DNS, and once the laptop joined over WireGuard,
``<ws>.a.<zone>`` resolves to the IP, a server started in the workspace answers the laptop
there, and ``ssh -p 2222`` to that address gets in with the owner's key, as the workspace's
user in its folder. ``delete`` takes the name away.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_ifname, laptop_kled, serve_cmd
from netlab import sh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.xdist_group("netns"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("busybox", "wget", "ssh", "ssh-keygen")),
        reason="the workspace uses the node's wget and busybox httpd; the laptop, ssh",
    ),
]

TEAM_A_BLOCK = "100.92.0.0/16"


def test_a_process_workspace_is_on_the_mesh_by_its_name(tmp_path: Path) -> None:
    with lab_mesh(tmp_path, 2, "wspmesh") as mesh:
        _run(mesh, tmp_path)


def _run(mesh: Mesh, tmp_path: Path) -> None:
    name = f"proc{secrets.token_hex(3)}"
    mesh.start_agent(1)
    mesh.team("a", TEAM_A_BLOCK)
    token = mesh.user_token("a", "alice")
    mesh.app("a", "api", {"command": serve_cmd(), "ports": [{"port": 80, "targetPort": 8080}]})
    eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    folder = tmp_path / name
    (folder / ".devcontainer").mkdir(parents=True)
    config = {"image": "ignored:latest", "postStartCommand": "hostname"}
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    home = tmp_path / "laptop"
    mesh.lab.ifnames.add(laptop_ifname(home))

    def kled(*args: str) -> str:
        done = laptop_kled(mesh, home, token, *args)
        assert done.returncode == 0, f"kled {args}: {done.stderr}"
        return done.stdout

    try:
        up = laptop_kled(mesh, home, token, "ws", "up", str(folder), "--provider", "process")
        assert up.returncode == 0, up.stderr + mesh.dump_logs()
        ip = mesh.api("GET", f"/api/v1/teams/a/workspaces/{name}")["status"]["ip"]
        assert ip.startswith("100.92.")
        status = kled("ws", "status", name)
        assert ["address", ip] in [line.split() for line in status.splitlines()]

        # Inside: its own address under its own name, and the app by name.
        assert kled("ws", "exec", name, "--", "getent", "hosts", name).split()[0] == ip
        tried: list[str] = []

        def fetched() -> bool:
            got = laptop_kled(mesh, home, token, "ws", "exec", name, "--",
                              "wget", "-q", "-O-", "http://api.dev/")  # fmt: skip
            tried.append(got.stdout + got.stderr)
            return got.returncode == 0 and got.stdout.startswith("api-")

        assert any(fetched() for _ in range(20)), f"api.dev from inside the workspace: {tried}"

        # A server in the workspace, as its user (busybox httpd goes to the background).
        kled("ws", "exec", name, "--", "sh", "-c",
             "mkdir -p /tmp/www && echo -n ws-proc > /tmp/www/index.html"
             " && busybox httpd -p 9000 -h /tmp/www")  # fmt: skip

        kled("device", "join", "laptop")
        config_doc = mesh.api("GET", "/api/v1/teams/a/devices/laptop/wireguard")
        dns_ip, _, dns_port = config_doc["dns"].rpartition(":")
        fqdn = f"{name}.{config_doc['zone']}"

        def resolved() -> str:
            out = sh("ip", "netns", "exec", mesh.lab.host(2), "dig", "+short", "+time=1",
                     "+tries=1", "-p", dns_port, f"@{dns_ip}", fqdn)  # fmt: skip
            return out.strip()

        assert eventually(resolved, f"{fqdn} from the laptop") == ip
        answered = eventually(
            lambda: mesh.ask(mesh.lab.host(2), ip, 9000, count=1) == ["ws-proc"],
            "the workspace answering the laptop over the mesh",
        )
        assert answered

        # Its own SSH port in its pod, straight from the laptop: the owner's key, as dev.
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kled("user", "key", "add", f"{key}.pub")

        def direct() -> str:
            done = subprocess.run(
                ["ip", "netns", "exec", mesh.lab.host(2), "ssh", "-F", "none", "-p", "2222",
                 "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=5", f"anyone@{ip}", "--", "id", "-un; pwd"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return done.stdout if done.returncode == 0 else ""

        assert eventually(direct, "ssh -p 2222 to the workspace's address").split() == [
            "dev", f"/workspaces/{name}",
        ]  # fmt: skip

        kled("ws", "delete", name, "--yes")
        eventually(lambda: resolved() == "", f"{fqdn} gone with the workspace")
        sandboxes = mesh.root / "node1" / "wsprocess" / "sandboxes"
        eventually(lambda: not any(sandboxes.glob(f"*-{name}")), "the sandbox removed")
    except BaseException:
        print(mesh.dump_logs())
        raise
    finally:
        # a sandbox left by a failure: its pid 1 (the tree goes with it)
        for pidfile in (mesh.root / "node1" / "wsprocess" / "sandboxes").glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

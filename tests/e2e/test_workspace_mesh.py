"""A workspace on the team mesh: it reaches an app by name, a joined laptop reaches it by its.

Host 1 runs a real agent (with its network layer) and podman; host 2 is the laptop; the
control plane runs on host 3 (``agentlab.lab_mesh``). ``kled ws up`` from the laptop puts a
busybox workspace on node1: it gets its own pod namespace with a team IP (shown by ``kled ws
status``), ``wget http://api.dev/`` inside it reaches the app through the team's DNS, and,
once the laptop joined the mesh over WireGuard, ``<ws>.a.<zone>`` resolves to that IP and a
server started in the workspace answers the laptop there, as does its own SSH port (2222)
to alice's key; ``kled intercept start api --to ws/NAME`` sends the app's traffic to that
server until ``stop``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_ifname, laptop_kled, serve_cmd
from netlab import sh

from imagekit import busybox_image, podman

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

TEAM_A_BLOCK = "100.91.0.0/16"
APPLETS = ("sh", "sleep", "echo", "cat", "mkdir", "wget", "httpd", "hostname")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 2, "wsmesh") as m:
        yield m


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    tag = f"localhost/kled-test-wsmesh:{secrets.token_hex(4)}"
    busybox_image(tmp_path / "image", tag, APPLETS, dirs=("tmp", "root", "workspaces"))
    yield tag
    podman("rmi", "-f", tag)


def test_a_workspace_reaches_apps_by_name_and_a_laptop_reaches_it_by_its_name(
    mesh: Mesh, image: str, tmp_path: Path
) -> None:
    name = f"box{secrets.token_hex(3)}"
    container = f"kled-ws-a-{name}"
    mesh.start_agent(1)
    mesh.team("a", TEAM_A_BLOCK)
    token = mesh.user_token("a", "alice")
    mesh.app("a", "api", {"command": serve_cmd(), "ports": [{"port": 80, "targetPort": 8080}]})
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    folder = tmp_path / name
    (folder / ".devcontainer").mkdir(parents=True)
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps({"image": image}))
    home = tmp_path / "laptop"
    mesh.lab.ifnames.add(laptop_ifname(home))
    try:
        up = laptop_kled(mesh, home, token, "ws", "up", str(folder))
        assert up.returncode == 0, up.stderr + mesh.dump_logs()
        doc = mesh.api("GET", f"/api/v1/teams/a/workspaces/{name}")
        ip = doc["status"]["ip"]
        assert ip.startswith("100.91.")
        status = laptop_kled(mesh, home, token, "ws", "status", name)
        assert ["address", ip] in [line.split() for line in status.stdout.splitlines()]

        # Inside: its own address, and the app by name through the team's DNS.
        shown = laptop_kled(mesh, home, token, "ws", "exec", name, "--", "hostname", "-i")
        assert ip in shown.stdout.split(), shown.stdout + shown.stderr

        tried: list[str] = []

        def fetched() -> bool:
            got = laptop_kled(mesh, home, token, "ws", "exec", name, "--",
                              "wget", "-q", "-O-", "http://api.dev/")  # fmt: skip
            tried.append(got.stdout + got.stderr)
            return got.returncode == 0 and got.stdout.startswith("api-")

        assert any(fetched() for _ in range(20)), f"api.dev from inside the workspace: {tried}"

        # A server in the workspace (busybox httpd goes to the background by itself).
        served = laptop_kled(mesh, home, token, "ws", "exec", name, "--", "sh", "-c",
                             "mkdir -p /tmp/www && echo -n ws-box > /tmp/www/index.html"
                             " && httpd -p 9000 -h /tmp/www")  # fmt: skip
        assert served.returncode == 0, served.stderr

        joined = laptop_kled(mesh, home, token, "device", "join", "laptop")
        assert joined.returncode == 0, joined.stderr + mesh.dump_logs()
        config = mesh.api("GET", "/api/v1/teams/a/devices/laptop/wireguard")
        dns_ip, _, dns_port = config["dns"].rpartition(":")
        fqdn = f"{name}.{config['zone']}"

        def resolved() -> str:
            out = sh("ip", "netns", "exec", mesh.lab.host(2), "dig", "+short", "+time=1",
                     "+tries=1", "-p", dns_port, f"@{dns_ip}", fqdn)  # fmt: skip
            return out.strip()

        assert eventually(resolved, f"{fqdn} from the laptop") == ip

        def answered() -> bool:
            return mesh.ask(mesh.lab.host(2), ip, 9000, count=1) == ["ws-box"]

        assert eventually(answered, "the workspace answering the laptop over the mesh")

        # Alice's own key, straight to the workspace's SSH port over the mesh (no API hop).
        key = tmp_path / "id_alice"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)  # fmt: skip
        added = laptop_kled(mesh, home, token, "user", "key", "add", f"{key}.pub")
        assert added.returncode == 0, added.stderr

        def ssh_in() -> str:
            done = subprocess.run(
                ["ip", "netns", "exec", mesh.lab.host(2), "ssh", "-F", "none", "-p", "2222",
                 "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=5", f"alice@{ip}", "--", "hostname"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr  # the last one is in the failure
            return done.stdout.strip()

        assert eventually(ssh_in, "ssh -p 2222 to the workspace over the mesh") == name

        # An intercept to the workspace: the app's traffic goes to its server, then back.
        def lands(where: str) -> bool:
            answers = mesh.ask(mesh.lab.host(2), service_ip, 80, count=2)
            return all(a.startswith(where) for a in answers)

        assert eventually(lambda: lands("api-"), "the replica answering the laptop")
        started = laptop_kled(mesh, home, token, "intercept", "start", "api", "-e", "dev",
                              "--to", f"ws/{name}", "--port", "80:9000")  # fmt: skip
        assert started.returncode == 0, started.stderr + mesh.dump_logs()
        assert f"goes to workspace/{name}" in started.stdout
        assert "active on 1/1 gateways" in started.stdout, started.stdout
        assert lands("ws-box"), "the replica answered right after `intercept start` returned"
        stopped = laptop_kled(mesh, home, token, "intercept", "stop", "api", "-e", "dev")
        assert stopped.returncode == 0, stopped.stderr
        assert lands("api-"), "the workspace answered after `intercept stop` returned"

        gone = laptop_kled(mesh, home, token, "ws", "delete", name, "--yes")
        assert gone.returncode == 0, gone.stderr
        eventually(lambda: resolved() == "", f"{fqdn} gone with the workspace")
    except BaseException:
        print(mesh.dump_logs())
        raise
    finally:
        podman("rm", "-f", "-t", "0", container)

"""scp, sftp, agent forwarding and ``kled ws forward`` into a workspace, with OpenSSH's own
clients through ``kled ws ssh-config``'s ProxyCommand (so through the API); users' keys
(the owner's gets in, another member's does not, through the proxy and on the
workspace's own port 2222); ``spec.idleTimeout``.

A real ``kled server``, a real ``kled agent`` on podman, and an image made on the spot: the
static busybox, an ``/etc/passwd`` with the user ``dev`` (uid 1000, remoteUser) and, to
look at a forwarded agent from inside, this machine's ``ssh-add`` with the libraries it
links (nothing of Kled's or of sshd's in the image).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostkit import Hosts, eventually

from cli.clikit import free_port
from imagekit import BUSYBOX, PODMAN, podman

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("workspaces"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh", "scp", "sftp", "ssh-agent", "ssh-add")),
        reason="needs OpenSSH's clients and ssh-agent (openssh-client)",
    ),
]

TEAM = f"wsacc-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-test-wsacc:{TEAM}"
APPLETS = ("sh", "sleep", "echo", "cat", "ls", "id", "stat", "httpd", "mkdir", "env", "test")


def _libraries(binary: str) -> list[Path]:
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    found = re.findall(r"(/\S+) \(0x", done.stdout)
    return [Path(p) for p in found]


def make_image(workdir: Path) -> None:
    """busybox, the user dev, and ssh-add with its libraries, imported as ``IMAGE``."""
    if PODMAN is None or BUSYBOX is None:
        pytest.skip("needs podman and busybox-static")
    root = workdir / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    ssh_add = shutil.which("ssh-add")
    assert ssh_add is not None
    for path in [Path(ssh_add), *_libraries(ssh_add)]:
        target = root / str(path.resolve()).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path.resolve(), target)
        if path.resolve() != path:  # the loader's and the libraries' own names
            alias = root / str(path).lstrip("/")
            alias.parent.mkdir(parents=True, exist_ok=True)
            if not alias.exists():
                alias.symlink_to(path.resolve())
    for folder in ("tmp", "root", "workspaces", "etc", "home/dev/www"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\ndev:x:1000:\n")
    (root / "home" / "dev" / "www" / "index.html").write_text("served from the workspace\n")

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if info.name.startswith("./home/dev"):
            info.uid = info.gid = 1000
        return info

    tarball = workdir / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".", filter=owner)
    done = podman("import", str(tarball), IMAGE)
    if done.returncode != 0:
        pytest.skip(f"podman import failed here: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("wsacc")
    make_image(root / "image")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("accnode")
        eventually(lambda: h.node_phase("accnode") == "Ready", "node accnode Ready")
        folder = root / "shop"
        (folder / ".devcontainer").mkdir(parents=True)
        config = {"image": IMAGE, "remoteUser": "dev"}
        (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
        up = h.cli("ws", "up", str(folder), timeout=600)
        assert up.code == 0, up
        yield h
    finally:
        h.close([])
        podman("rm", "-f", "-t", "0", f"kled-ws-{TEAM}-shop")
        podman("rmi", "-f", IMAGE)


@pytest.fixture(scope="module")
def config(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("accfg") / "config"
    path.write_text(hosts.cli.ok("ws", "ssh-config", "shop"))
    return path


def run(
    hosts: Hosts, *argv: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True,
        env={**hosts.cli.env, **(env or {})}, timeout=120,
    )  # fmt: skip


def test_scp_both_ways_as_remote_user(hosts: Hosts, config: Path, tmp_path: Path) -> None:
    local = tmp_path / "notes.txt"
    local.write_text("copied in\n" * 1000)
    up = run(hosts, "scp", "-F", str(config), str(local), "ws-shop:/home/dev/notes.txt")
    assert up.returncode == 0, up.stderr
    seen = run(hosts, "ssh", "-F", str(config), "ws-shop", "--", "stat", "-c", "'%u:%g %s'",
               "/home/dev/notes.txt")  # fmt: skip
    assert seen.stdout == f"1000:1000 {len(local.read_text())}\n", seen.stderr
    back = tmp_path / "back.txt"
    down = run(hosts, "scp", "-F", str(config), "ws-shop:/home/dev/notes.txt", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_text() == local.read_text()
    # as dev, not as the node's root: root's home is closed to it
    refused = run(hosts, "scp", "-F", str(config), str(local), "ws-shop:/root/notes.txt")
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr


def test_sftp_batch_starts_in_the_workspace_folder(
    hosts: Hosts, config: Path, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    batch = tmp_path / "batch"
    batch.write_text(
        "pwd\ncd /home/dev\nmkdir box\nput a.txt box/a.txt\nrename box/a.txt box/b.txt\n"
        "ls box\nget box/b.txt got.txt\nrm box/b.txt\nrmdir box\n"
    )
    done = subprocess.run(
        ["sftp", "-F", str(config), "-b", str(batch), "ws-shop"],
        capture_output=True, text=True, env=hosts.cli.env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Remote working directory: /workspaces/shop" in done.stdout
    assert "box/b.txt" in done.stdout
    assert (tmp_path / "got.txt").read_text() == "alpha\n"
    gone = run(hosts, "ssh", "-F", str(config), "ws-shop", "--", "ls", "/home/dev")
    assert "box" not in gone.stdout.split()


def test_agent_forwarding_lists_the_key_inside(hosts: Hosts, config: Path, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        eventually(sock.exists, "ssh-agent listening")
        key = tmp_path / "id_test"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent-key",
                        "-f", str(key)], check=True)  # fmt: skip
        env = {"SSH_AUTH_SOCK": str(sock)}
        assert run(hosts, "ssh-add", str(key), env=env).returncode == 0
        inside = run(hosts, "ssh", "-A", "-F", str(config), "ws-shop", "--", "sh", "-c",
                     "'ssh-add -l; stat -c %u \"$SSH_AUTH_SOCK\"'", env=env)  # fmt: skip
        assert inside.returncode == 0, inside.stderr
        listed, owner = inside.stdout.splitlines()
        assert "agent-key" in listed and "ED25519" in listed
        assert owner == "1000"
        # without -A there is no agent inside
        plain = run(hosts, "ssh", "-F", str(config), "ws-shop", "--", "sh", "-c",
                    "'echo ${SSH_AUTH_SOCK:-none}'", env=env)  # fmt: skip
        assert plain.stdout == "none\n"
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_ws_forward_reaches_a_server_on_the_workspaces_localhost(hosts: Hosts) -> None:
    started = hosts.cli("ws", "exec", "shop", "--", "httpd", "-p", "127.0.0.1:8123",
                        "-h", "/home/dev/www")  # fmt: skip
    assert started.code == 0, started
    port = free_port()
    forward = hosts.cli.popen("ws", "forward", "shop", f"{port}:8123")
    try:

        def fetched() -> str | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text
            except httpx.HTTPError:
                return None

        assert eventually(fetched, "the forward answers") == "served from the workspace\n"
    finally:
        forward.terminate()
        forward.wait(timeout=20)


def test_forward_with_a_bad_port_is_one_line(hosts: Hosts) -> None:
    done = hosts.cli("ws", "forward", "shop", "80:http")
    assert done.code == 2
    assert done.err.strip().splitlines() == [
        "error: LOCAL[:REMOTE]: '80:http' is not LOCAL[:REMOTE] with ports from 1 to 65535"
    ]


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True)  # fmt: skip
    return path


def test_users_keys_owner_gets_in_another_member_is_refused(
    hosts: Hosts, config: Path, tmp_path: Path
) -> None:
    tokens = {}
    for user in ("ann", "bob"):
        hosts.cli.ok("user", "create", user, "--role", "member")
        tokens[user] = hosts.cli.ok("token", "create", f"{user}-t", "--user", user).strip()
    url = f"{hosts.url}/api/v1/teams/{TEAM}/workspaces/shop"
    admin = {"Authorization": f"Bearer {hosts.token}"}
    doc = httpx.get(url, headers=admin, timeout=10).json()
    doc["spec"]["owner"] = "ann"
    assert httpx.put(url, json=doc, headers=admin, timeout=10).status_code == 200
    keys = {user: _keygen(tmp_path / f"id_{user}", f"{user}@laptop") for user in ("ann", "bob")}
    for user, key in keys.items():
        added = hosts.cli("user", "key", "add", f"{key}.pub", env={"KLED_TOKEN": tokens[user]})
        assert added.code == 0 and added.out.startswith("key SHA256:"), added
    listed = hosts.cli("user", "key", "list", env={"KLED_TOKEN": tokens["ann"]})
    assert "ann@laptop" in listed.out and "bob@laptop" not in listed.out, listed
    # bob may not manage ann's keys, nor add a file that is no key (one line, nothing sent)
    theirs = hosts.cli("user", "key", "list", "--user", "ann", env={"KLED_TOKEN": tokens["bob"]})
    assert theirs.code != 0 and "only ann or a team admin" in theirs.err
    bad = hosts.cli("user", "key", "add", str(config), env={"KLED_TOKEN": tokens["bob"]})
    assert bad.code == 2 and bad.err.startswith("error: FILE: ") and bad.err.count("\n") == 1

    def with_key(key: Path) -> Path:
        lines = [
            f"  IdentityFile {key}" if line.strip().startswith("IdentityFile ") else line
            for line in config.read_text().splitlines()
        ]
        path = tmp_path / f"config-{key.name}"
        path.write_text("\n".join(lines) + "\n")
        return path

    # through the admin's proxy: ann's own key gets in, bob's is refused
    inside = run(hosts, "ssh", "-F", str(with_key(keys["ann"])), "ws-shop", "--", "id", "-un")
    assert (inside.returncode, inside.stdout) == (0, "dev\n"), inside.stderr
    refused = run(hosts, "ssh", "-F", str(with_key(keys["bob"])), "ws-shop", "--", "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    # bob's own proxy is refused before any key is tried; ann's works
    as_bob = hosts.cli("ws", "ssh", "shop", "--", "true", env={"KLED_TOKEN": tokens["bob"]})
    assert as_bob.code == 255 and "only they and team admins may enter it" in as_bob.err
    as_ann = hosts.cli("ws", "ssh", "shop", "--", "echo", "hi", env={"KLED_TOKEN": tokens["ann"]})
    assert (as_ann.code, as_ann.out) == (0, "hi\n"), as_ann
    # straight to the workspace's own address, port 2222, no proxy: the same keys
    ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}",
                f"kled-ws-{TEAM}-shop").stdout.strip()  # fmt: skip
    assert ip, "the workspace container has no address on podman's network"

    def direct(key: Path, *command: str) -> subprocess.CompletedProcess[str]:
        return run(hosts, "ssh", "-F", "none", "-p", "2222", "-i", str(key),
                   "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "ConnectTimeout=10", f"anyone@{ip}", "--", *command)  # fmt: skip

    seen = eventually(lambda: direct(keys["ann"], "id", "-un").stdout, "the direct SSH port")
    assert seen == "dev\n"
    assert "Permission denied" in direct(keys["bob"], "true").stderr
    # a removed key no longer gets in, through the proxy or directly
    ann_id = listed.out.split()[3]
    gone = hosts.cli("user", "key", "remove", ann_id, env={"KLED_TOKEN": tokens["ann"]})
    assert gone.code == 0, gone
    after = run(hosts, "ssh", "-F", str(with_key(keys["ann"])), "ws-shop", "--", "true")
    assert after.returncode == 255
    # (no allowed user has a key left: the port closes, so the refusal is not "denied")
    eventually(lambda: direct(keys["ann"], "true").returncode == 255, "ann's key refused")


def test_idle_timeout_stops_an_unused_workspace_and_a_session_keeps_it(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = tmp_path / "nap"
    (folder / ".devcontainer").mkdir(parents=True)
    config = {"image": IMAGE, "remoteUser": "dev"}
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    assert hosts.cli("ws", "up", str(folder), timeout=600).code == 0
    url = f"{hosts.url}/api/v1/teams/{TEAM}/workspaces/nap"
    admin = {"Authorization": f"Bearer {hosts.token}"}

    def workspace() -> dict[str, Any]:
        return dict(httpx.get(url, headers=admin, timeout=10).json())

    try:
        doc = workspace()
        doc["spec"]["idleTimeout"] = "30s"
        assert httpx.put(url, json=doc, headers=admin, timeout=10).status_code == 200
        # an SSH session longer than the timeout keeps it running
        held = hosts.cli("ws", "ssh", "nap", "--", "sleep", "40", timeout=120)
        assert held.code == 0, held
        assert workspace()["status"]["phase"] == "Running"
        # then, unused: stopped, and turned off so that `kled ws start` brings it back
        eventually(lambda: workspace()["status"].get("phase") == "Stopped", "idle stop")
        stopped = workspace()
        assert stopped["status"]["reason"] == "idle for 30s"
        assert stopped["spec"]["running"] is False
        status = hosts.cli.ok("ws", "status", "nap")
        assert "idle for 30s" in status
        # an agent restarted meanwhile reports the same reason, not a bare "Stopped"
        log = hosts.root / "accnode.log"
        mark = log.stat().st_size
        hosts.kill_agent("accnode", signal.SIGTERM)
        hosts.start_agent("accnode", join=False)

        def reported() -> str:
            after = log.read_bytes()[mark:].decode(errors="replace")
            return next((ln for ln in after.splitlines() if "/nap: Stopped" in ln), "")

        assert eventually(reported, "the restarted agent reports nap").endswith("idle for 30s")
        assert workspace()["status"]["reason"] == "idle for 30s"
        hosts.cli.ok("ws", "start", "nap")
        eventually(lambda: workspace()["status"].get("phase") == "Running", "started again")
        assert "reason" not in workspace()["status"]
    finally:
        hosts.cli("ws", "delete", "nap", "--yes", timeout=120)

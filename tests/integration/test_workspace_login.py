"""The client's side of a workspace and the ``kled`` CLI inside it, for real: ``kled ws up``
against a ``kled server`` and a root ``kled agent`` (the ``process`` provider: the
workspace runs on this host, so the venv's ``kled`` runs inside it).

- ``initializeCommand`` runs on the client, in the folder, before anything is sent (what
  it writes there is uploaded); its output is shown as it comes; an object's commands run
  at the same time, each line named; a failing one stops ``up`` with the hook's name, exit
  code and last line, and no workspace is made.
- A member's workspace is theirs (``kled ws up`` names them its owner); inside it
  ``KLED_SERVER``, ``KLED_TEAM`` and ``KLED_TOKEN`` log the CLI in as them: it lists the
  team's workspaces, says who it is, and cannot do what a member cannot. The token is not
  in the session's env file on the node. Another member may neither enter it nor name
  someone else the owner of theirs. After ``kled ws delete`` the token is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hostkit import Hosts, eventually

from cli.clikit import Cli, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("workspaces"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process provider needs a root agent"),
]

TEAM = f"wsl-{random.randint(10**5, 10**6)}"
NODE = "loginnode"
UP_TIMEOUT = 300  # guards a hang only
#: a call to the team's API with the environment the workspace gives: METHOD KIND
CALL = """
import json, os, sys, urllib.error, urllib.request
url = f"{os.environ['KLED_SERVER']}/api/v1/teams/{os.environ['KLED_TEAM']}/{sys.argv[2]}"
body = json.dumps({"metadata": {"name": "mallory"}, "spec": {"role": "owner"}}).encode()
request = urllib.request.Request(
    url, method=sys.argv[1], data=body if sys.argv[1] == "POST" else None,
    headers={"Authorization": "Bearer " + os.environ["KLED_TOKEN"],
             "Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(request) as answer:
        items = json.load(answer).get("items") or []
        print(answer.status, *(i["metadata"]["name"] for i in items))
except urllib.error.HTTPError as e:
    print(e.code)
"""
#: the process provider ignores it (with a warning); a config needs one
IMAGE = "localhost/not-used-by-process:1"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("wslogin")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent(NODE)
        eventually(lambda: h.node_phase(NODE) == "Ready", f"node {NODE} Ready")
        yield h
    finally:
        h.close([])
        for pidfile in (root / NODE / "wsprocess" / "sandboxes").glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), 9)


def member(hosts: Hosts, name: str, home: Path) -> tuple[Cli, str]:
    """A CLI logged in as a new member ``name`` of the team, and its token."""
    hosts.cli.ok("user", "create", name, "--role", "member")
    token = hosts.cli.ok("token", "create", f"{name}-t", "--user", name).strip()
    home.mkdir(parents=True, exist_ok=True)
    cli = Cli(home)
    cli.ok("login", "--server", hosts.url, "--token", token, "--team", TEAM)
    return cli, token


def write_folder(folder: Path, config: dict[str, object]) -> Path:
    (folder / ".devcontainer").mkdir(parents=True)
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    return folder


def test_initialize_command_runs_on_the_client_before_the_upload(
    hosts: Hosts, tmp_path: Path
) -> None:
    config = {
        "image": IMAGE,
        "initializeCommand": {
            "stamp": "echo stamping; pwd > made-on-client",
            "word": ["sh", "-c", "echo ${localEnv:INIT_WORD} > word"],
        },
    }
    folder = write_folder(tmp_path / "init", config)
    up = hosts.cli(
        "ws", "up", str(folder), "--provider", "process",
        env={"INIT_WORD": "laptop"}, timeout=UP_TIMEOUT,
    )  # fmt: skip
    assert up.code == 0, up
    assert "  | stamp: stamping" in up.err  # its output, each line named
    assert up.err.index("running initializeCommand in") < up.err.index("uploading")
    # it ran in the folder on this machine, before the folder was packed
    assert (folder / "made-on-client").read_text().strip() == str(folder)
    inside = hosts.cli.ok("ws", "exec", "init", "--", "cat", "made-on-client", "word")
    assert inside.split() == [str(folder), "laptop"]
    hosts.cli.ok("ws", "delete", "init", "--yes")


def test_a_failing_initialize_command_stops_up_and_sends_nothing(
    hosts: Hosts, tmp_path: Path
) -> None:
    config = {
        "image": IMAGE,
        "initializeCommand": "echo checking the laptop; echo no docker here >&2; exit 3",
    }
    folder = write_folder(tmp_path / "broken", config)
    up = hosts.cli("ws", "up", str(folder), "--provider", "process", timeout=UP_TIMEOUT)
    assert up.code == 1, up
    assert "  | checking the laptop" in up.err  # shown as it ran
    last = up.err.strip().splitlines()[-1]
    assert last == (
        "error: initializeCommand exited with code 3: checking the laptop | no docker here"
    ), up.err
    assert "uploading" not in up.err
    gone = hosts.cli("ws", "status", "broken")
    assert gone.code == 1 and "not found" in gone.err, gone


def test_the_cli_inside_is_logged_in_as_the_owner_until_the_workspace_goes(
    hosts: Hosts, tmp_path: Path
) -> None:
    ann, _ = member(hosts, "ann", tmp_path / "ann")
    folder = write_folder(tmp_path / "mine", {"image": IMAGE})
    up = ann("ws", "up", str(folder), "--provider", "process", timeout=UP_TIMEOUT)
    assert up.code == 0, up
    doc = hosts.api(f"/api/v1/teams/{TEAM}/workspaces/mine")
    assert doc["spec"]["owner"] == "ann"

    def inside(cli: Cli, script: str) -> tuple[int, str, str]:
        done = cli("ws", "exec", "mine", "--", "sh", "-c", script)
        return done.code, done.out, done.err

    code, out, err = inside(ann, 'echo "$KLED_SERVER $KLED_TEAM"; echo "$KLED_TOKEN"')
    assert code == 0, err
    where, token = out.splitlines()
    assert where == f"{hosts.url} {TEAM}"
    assert token.startswith("kled_")
    # the API from inside with nothing but that environment (the sandbox shows the node's
    # /usr, not this checkout's venv: the preload image has the kled CLI itself)
    code, out, err = inside(ann, f"python3 -c {shlex.quote(CALL)} GET workspaces")
    assert code == 0, err
    assert out.split() == ["200", "mine"]
    code, out, err = inside(ann, f"python3 -c {shlex.quote(CALL)} GET apps")
    assert (code, out.split()) == (0, ["200"]), err  # the team's apps: none
    who = httpx.get(f"{hosts.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.json() == {"username": "ann", "team": TEAM, "role": "member", "serverAdmin": False}
    code, out, err = inside(ann, f"python3 -c {shlex.quote(CALL)} POST users")
    assert out.split()[:1] == ["403"], (out, err)  # a member's token: no more than a member
    # not in the session's env file the node keeps
    session_env = hosts.root / NODE / "workspaces" / TEAM / "mine" / "session.env"
    assert session_env.exists() and token not in session_env.read_text()

    # bob, another member, may not enter ann's workspace, nor make one of his ann's
    bob, bob_token = member(hosts, "bob", tmp_path / "bob")
    refused = bob("ws", "exec", "mine", "--", "true")
    assert refused.code == 1 and "only they and team admins may enter it" in refused.err
    theirs = write_folder(
        tmp_path / "framed", {"image": IMAGE, "postCreateCommand": "echo $KLED_TOKEN"}
    )
    bob.ok("ws", "up", str(theirs), "--provider", "process", "--no-wait")
    framed = hosts.api(f"/api/v1/teams/{TEAM}/workspaces/framed")
    assert framed["spec"]["owner"] == "bob"
    framed["spec"]["owner"] = "ann"
    bobs = httpx.put(
        f"{hosts.url}/api/v1/teams/{TEAM}/workspaces/framed",
        json={k: framed[k] for k in ("apiVersion", "kind", "metadata", "spec")},
        headers={"Authorization": f"Bearer {bob_token}"},
    )
    assert bobs.status_code == 403, bobs.text
    assert "only ann and team admins at their role or above may write" in bobs.text
    hosts.cli.ok("ws", "delete", "framed", "--yes")

    ann.ok("ws", "delete", "mine", "--yes")
    refused_after = httpx.get(
        f"{hosts.url}/api/v1/teams/{TEAM}/workspaces",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert refused_after.status_code == 401, refused_after.text


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A repository served by a real sshd on a loopback port that takes only the key
    ``id`` (the URL, and the key's path)."""
    folder = tmp_path / "gitssh"
    folder.mkdir()
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)],
                       check=True)  # fmt: skip
    (folder / "authorized_keys").write_text((folder / "id.pub").read_text())
    work = folder / "work"
    (work / ".devcontainer").mkdir(parents=True)
    (work / ".devcontainer" / "devcontainer.json").write_text(json.dumps({"image": IMAGE}))
    (work / "hello.txt").write_text("private hello\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.test"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(folder / "private.git")],
                   check=True)  # fmt: skip
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    with open(folder / "sshd.log", "wb") as log:
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        eventually(lambda: (folder / "sshd.pid").exists() or sshd.poll() is not None, "sshd")
        assert sshd.poll() is None, (folder / "sshd.log").read_text()
        yield f"ssh://root@127.0.0.1:{port}{folder / 'private.git'}", folder / "id"
    finally:
        sshd.kill()
        sshd.wait()


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent of the laptop (its socket), killed at the end."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        eventually(lambda: sock.exists(), "ssh-agent's socket")
        yield str(sock)
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.skipif(
    shutil.which("/usr/sbin/sshd") is None or shutil.which("ssh-agent") is None,
    reason="needs Debian's openssh-server and openssh-client",
)
def test_a_private_repository_is_cloned_with_the_laptops_ssh_agent(
    hosts: Hosts, git_server: tuple[str, Path], ssh_agent: str
) -> None:
    url, key = git_server
    # no agent forwarded: the node has no key the server takes
    alone = hosts.cli("ws", "up", url, "--name", "noagent", "--provider", "process",
                      env={"SSH_AUTH_SOCK": ""}, timeout=UP_TIMEOUT)  # fmt: skip
    assert alone.code == 1, alone
    assert "git clone of ssh://" in alone.err and "Permission denied" in alone.err, alone.err
    hosts.cli.ok("ws", "delete", "noagent", "--yes")
    # the laptop's agent holds the key: forwarded for the clone, the repository is there
    subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": ssh_agent},
                   check=True, capture_output=True)  # fmt: skip
    up = hosts.cli("ws", "up", url, "--provider", "process",
                   env={"SSH_AUTH_SOCK": ssh_agent}, timeout=UP_TIMEOUT)  # fmt: skip
    assert up.code == 0, up
    assert "cloning with the SSH agent kled ws up forwards" in up.err
    inside = hosts.cli.ok("ws", "exec", "private", "--", "cat", "hello.txt")
    assert inside == "private hello\n"
    # the agent was for the clone only: no socket left on the node
    folder = hosts.root / NODE / "workspaces" / TEAM / "private"
    assert (folder / "known_hosts").exists() and not (folder / "agent.sock").exists()
    hosts.cli.ok("ws", "delete", "private", "--yes")

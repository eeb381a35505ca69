"""A private repository's workspace: ``kled ws up ssh://…`` with the laptop's SSH agent
relayed to the node for the clone, beside the same repository's ``file://`` URL (no SSH,
no agent) and a plain ``git clone`` of the SSH URL with the agent at hand.

One ``kled server`` and one root ``kled agent`` on this machine (the ``process`` provider:
no image), a real ``sshd`` on a loopback port that takes only one key, a real ``ssh-agent``
holding it, a repository of ``--files`` small files. Each measure is the median of
``--runs`` (a new workspace name each time, deleted after):

- ``up_ssh_agent``: ``kled ws up ssh://…`` to Running (the CLI waits for placement, opens
  the agent stream; the node clones through it);
- ``up_file``: ``kled ws up file://…`` of the same bare repository (the peer: the same
  workspace without SSH);
- ``clone_direct``: ``git clone ssh://…`` on this machine with ``SSH_AUTH_SOCK`` the agent
  (what the clone itself costs);
- ``relay_cost``: ``up_ssh_agent - up_file``.

    python bench/ws_git_agent.py [--runs 3] [--files 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests"
sys.path[:0] = [str(HERE), str(HERE / "integration")]

from hostkit import Hosts, eventually  # noqa: E402

from cli.clikit import free_port  # noqa: E402

IMAGE = "localhost/not-used-by-process:1"


def _repo(folder: Path, files: int) -> Path:
    work = folder / "work"
    (work / ".devcontainer").mkdir(parents=True)
    (work / ".devcontainer" / "devcontainer.json").write_text(json.dumps({"image": IMAGE}))
    for i in range(files):
        path = work / f"src/{i % 50:02d}/f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"line {i}\n" * 20)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@example.test"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    bare = folder / "private.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def _sshd(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)],
                       check=True)  # fmt: skip
    (folder / "authorized_keys").write_text((folder / "id.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    eventually(lambda: (folder / "sshd.pid").exists(), "sshd")
    return proc, port


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("/usr/sbin/sshd") is None:
        sys.exit("needs root (the process provider) and Debian's openssh-server")
    team = f"wsgit-{random.randint(10**5, 10**6)}"
    root = Path(tempfile.mkdtemp(prefix="kled-bench-wsgit-"))
    bare = _repo(root, args.files)
    sshd, port = _sshd(root)
    sock = root / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    hosts = Hosts(root, ["--embedded-nats", "--nats-port", str(free_port())], team)
    try:
        eventually(lambda: sock.exists(), "ssh-agent")
        laptop = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(root / "id")], env=laptop, check=True)
        hosts.start_server()
        hosts.cli.ok("team", "create", team)
        hosts.start_agent("gitnode")
        eventually(lambda: hosts.node_phase("gitnode") == "Ready", "node Ready")
        ssh_url = f"ssh://root@127.0.0.1:{port}{bare}"
        file_url = f"file://{bare}"
        env = {**hosts.cli.env, "SSH_AUTH_SOCK": str(sock)}
        kled = [str(Path(sys.executable).parent / "kled")]
        times: dict[str, list[float]] = {"up_ssh_agent": [], "up_file": [], "clone_direct": []}
        known = root / "known_hosts"
        ssh_cmd = f"ssh -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known}"
        for run in range(args.runs):
            for key, url in (("up_ssh_agent", ssh_url), ("up_file", file_url)):
                name = f"{key.replace('_', '-')}-{run}"
                up = [*kled, "ws", "up", url, "--name", name, "--provider", "process"]
                times[key].append(_timed(up, env))
                hosts.cli.ok("ws", "delete", name, "--yes")
            target = root / f"direct-{run}"
            direct = ["git", "clone", "-q", ssh_url, str(target)]
            times["clone_direct"].append(_timed(direct, {**laptop, "GIT_SSH_COMMAND": ssh_cmd}))
            shutil.rmtree(target)
        result = {k: round(statistics.median(v), 3) for k, v in times.items()}
        result["relay_cost"] = round(result["up_ssh_agent"] - result["up_file"], 3)
        result.update(runs=args.runs, files=args.files, samples=times)
        print(json.dumps(result, indent=2))
    finally:
        hosts.close([])
        agent.kill()
        sshd.kill()
        for pidfile in (root / "gitnode" / "wsprocess" / "sandboxes").glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), 9)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

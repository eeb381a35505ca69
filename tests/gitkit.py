"""Real git repositories for tests and benchmarks: a bare origin, a work tree, git daemon.

``Origin`` makes a bare repository and a clone to commit from; ``commit`` writes files
(``None`` deletes one), commits and pushes, and returns the new commit. ``daemon`` serves
the origin over ``git://`` on 127.0.0.1 with Debian's ``git daemon`` on a free port.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def app_yaml(name: str, env: str = "dev", replicas: int = 1, **meta: object) -> str:
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "environment": env, **meta},
        "spec": {"command": ["sleep", "3600"], "replicas": replicas},
    }
    return yaml.safe_dump(doc)


class Origin:
    def __init__(self, root: Path, branch: str = "main") -> None:
        self.root = root
        self.bare = root / "origin.git"
        self.work = root / "work"
        self.branch = branch
        git("init", "--quiet", "--bare", "-b", branch, str(self.bare))
        git("init", "--quiet", "-b", branch, str(self.work))
        git("config", "user.email", "dev@example.com", cwd=self.work)
        git("config", "user.name", "Dev", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: Mapping[str, str | None], message: str = "change") -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", ".", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", f"HEAD:{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str) -> None:
        git("tag", name, cwd=self.work)
        git("push", "--quiet", "origin", name, cwd=self.work)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def daemon(origin: Origin) -> Iterator[str]:
    """``git daemon`` serving ``origin`` on loopback; yields its git:// URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
            f"--port={port}", f"--base-path={origin.root}", str(origin.root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}/origin.git"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

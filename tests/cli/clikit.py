"""Helpers for testing the CLI as a user runs it: ``kled`` as a subprocess.

``Cli`` runs ``kled`` with its own config file (``KLED_CONFIG``) and home, and none of the
caller's ``KLED_*`` variables; ``ServerProcess`` runs ``kled server`` itself as a process,
for what only a real process shows (the first-start token, ``kill -9``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).parents[2]
KLED = ROOT / ".venv" / "bin" / "kled"
if not KLED.exists():
    KLED = Path(sys.executable).parent / "kled"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


class Cli:
    """Runs ``kled`` with its own config file and no KLED_* from the outside."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.config = home / "kled-config.yaml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
        self.env.update(
            KLED_CONFIG=str(self.config),
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            COLUMNS="200",
            NO_COLOR="1",
        )

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Result:
        done = subprocess.run(
            [str(KLED), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"kled {' '.join(args)}: {result}"
        return result.out

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(KLED), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``kled server`` as a child process, its stdout collected line by line."""

    def __init__(self, cli: Cli, data_dir: Path, port: int, *extra: str) -> None:
        self.cli = cli
        self.data_dir = data_dir
        self.port = port
        self.extra = extra  # more ``kled server`` flags (--database, --nats...)
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ServerProcess:
        self.lines, self.errors = [], []
        self.proc = self.cli.popen(
            "server",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra,
        )
        for stream, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=_drain, args=(stream, sink), daemon=True).start()
        for _ in range(600):  # the server is up when it answers, however long that takes
            if self.proc.poll() is not None:
                code, why = self.proc.returncode, self.errors[-20:]
                raise AssertionError(f"kled server exited {code}: {self.lines} {why}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"kled server did not answer: {self.lines}")

    def output(self, wait_for: str) -> str:
        for _ in range(300):
            text = "\n".join(self.lines)
            if wait_for in text:
                return text
            time.sleep(0.05)
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self.proc = None
        return code


def _drain(stream: IO[str] | None, sink: list[str]) -> None:
    """Collect a child's output, so that a full pipe never blocks it."""
    if stream is None:
        return
    for line in stream:
        sink.append(line.rstrip("\n"))


def wait_for(condition: Callable[[], bool], what: str = "condition") -> None:
    """Wait until ``condition()`` holds; polls, with a generous give-up bound."""
    for _ in range(1200):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met")

"""Helpers of the hosts tests: ``kled server`` and ``kled agent`` as real processes.

``Hosts`` runs one control plane (``kled server`` with its Message Office) and agents
(``kled agent``, each with its own name and data dir) as child processes, and reads what a
user would read through the CLI. Replicas outlive their agents by design, so every test
command ends in ``sleep <marker>``: teardown finds and kills them (and anything else whose
command line names this run's folder) by command line.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from cli.clikit import KLED, Cli, free_port


def eventually(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll until ``check()`` is truthy and return it; the bound only guards against a hang."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, IndexError, TypeError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what} (last: {last!r})")


def processes(match: Callable[[list[str]], bool]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if cmd and p.info["status"] != psutil.STATUS_ZOMBIE and match(cmd):
            found.append(p)
    return found


def sleepers(marker: int) -> list[psutil.Process]:
    """The replica processes of one test app: ``sleep <marker>``."""
    return processes(lambda cmd: cmd[-2:] == ["sleep", str(marker)])


def marker() -> int:
    return random.randint(7_000_000, 7_999_999)


def app_doc(name: str, marker_: int, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    script = f"echo hello from $0; echo oops from $0 >&2; exec sleep {marker_}"
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {"command": ["sh", "-c", script, name], "replicas": replicas, **spec},
    }


class Hosts:
    """One control plane and its agents, all real processes under ``root``."""

    def __init__(self, root: Path, server_args: list[str], team: str) -> None:
        self.root = root
        self.cli = Cli(root / "home")
        self.cli.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_args = server_args
        self.team = team
        self.server: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""

    # ---- the control plane ------------------------------------------------------------

    def start_server(self) -> None:
        args = [str(KLED), "server", "--data-dir", str(self.root / "server")]
        args += ["--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        self.server = subprocess.Popen(
            [*args, *self.server_args],
            stdout=subprocess.PIPE,
            stderr=open(self.root / "server.log", "a"),  # noqa: SIM115 - the child owns it
            text=True,
            env=self.cli.env,
        )
        out = self.server.stdout
        threading.Thread(target=lambda: self.lines.extend(out or []), daemon=True).start()
        eventually(self._healthy, "kled server answers", timeout=60)
        token_file = self.root / "server" / "admin.token"
        self.token = token_file.read_text().strip()
        self.cli.ok("login", "--server", self.url, "--token", self.token, "--team", self.team)

    def server_exit(self) -> str:
        """Why the server is gone, if it is: its exit code and the end of its log."""
        if self.server is None or self.server.poll() is None:
            return ""
        tail = (self.root / "server.log").read_text(errors="replace").splitlines()[-15:]
        return f"\nkled server exited with {self.server.returncode}:\n" + "\n".join(tail)

    def _healthy(self) -> bool:
        if self.server is not None and self.server.poll() is not None:
            raise AssertionError(f"kled server exited: {self.lines}")
        return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        if self.server is None:
            return
        if self.server.poll() is None:
            self.server.send_signal(sig)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None

    # ---- agents -----------------------------------------------------------------------

    def start_agent(
        self, name: str, *, join: bool = True, labels: str = "", extra: tuple[str, ...] = ()
    ) -> None:
        args = [str(KLED), "agent", "--name", name, "--data-dir", str(self.root / name)]
        # several agents on one machine: the team meshes are the e2e tests' (hosts as netns)
        args += ["--heartbeat", "0.5", "--log-level", "info", "--network", "off"]
        if join:
            made = self.cli("node", "token", "create", "--ttl", "10m")
            assert made.code == 0, f"kled node token create: {made}{self.server_exit()}"
            token = made.out.strip()
            args += ["--server", self.url, "--token", token]
        if labels:
            args += ["--labels", labels]
        args += extra
        with open(self.root / f"{name}.log", "ab") as log:
            self.agents[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.cli.env
            )

    def start_team_node(
        self, node: str, *, env: str | None = "dev", context: bool = False, **agent: Any
    ) -> None:
        """The common start: the server, the team, ``env`` (the context's with ``context``)
        and one agent ``node`` (``agent``: :meth:`start_agent`'s options), waited Ready."""
        self.start_server()
        self.cli.ok("team", "create", self.team)
        if env is not None:
            self.cli.ok("env", "create", env)
            if context:
                self.cli.ok("context", "set", "--env", env)
        self.start_agent(node, **agent)
        eventually(lambda: self.node_phase(node) == "Ready", f"node {node} Ready")

    def kill_agent(self, name: str, sig: int = signal.SIGKILL, grace: float = 30) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:  # a loaded machine's podman can outlast a stop
            proc.kill()
            proc.wait()

    # ---- reading what the user sees ---------------------------------------------------

    def api(self, path: str) -> Any:
        response = httpx.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def app(self, name: str, env: str = "dev") -> dict[str, Any]:
        doc: dict[str, Any] = self.api(f"/api/v1/teams/{self.team}/environments/{env}/apps/{name}")
        return doc

    def replicas(self, name: str, env: str = "dev") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.app(name, env).get("status", {}).get("replicas") or []
        return found

    def running(self, name: str, count: int, env: str = "dev") -> list[dict[str, Any]] | None:
        """The replicas when exactly ``count`` are Running (and the app says so)."""
        doc = self.app(name, env)
        status = doc.get("status") or {}
        reps = status.get("replicas") or []
        ok = (
            status.get("phase") == "Running"
            and status.get("readyReplicas") == count
            and len(reps) == count
            and all(r.get("state") == "Running" for r in reps)
        )
        return reps if ok else None

    def node_phase(self, name: str) -> str:
        try:
            doc = self.api(f"/api/v1/nodes/{name}")
        except httpx.HTTPStatusError as e:
            proc = self.agents.get(name)
            if e.response.status_code == 404 and proc is not None and proc.poll() is not None:
                # never registered and gone: say why now, not after the caller's timeout
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"agent {name} exited {proc.returncode}:\n{tail}") from e
            raise
        return str((doc.get("status") or {}).get("phase"))

    def apply(self, doc: dict[str, Any], env: str = "dev") -> None:
        import yaml

        self.cli.ok("apply", "-f", "-", "-e", env, stdin=yaml.safe_dump(doc))

    # ---- teardown ---------------------------------------------------------------------

    def close(self, markers: list[int]) -> None:
        for name in list(self.agents):
            self.kill_agent(name, signal.SIGTERM)
        self.stop_server()
        root = str(self.root)
        leftovers = processes(lambda cmd: any(root in part for part in cmd))
        for m in markers:
            leftovers += sleepers(m)
        for p in leftovers:
            if p.pid != os.getpid():
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        psutil.wait_procs(leftovers, timeout=10)

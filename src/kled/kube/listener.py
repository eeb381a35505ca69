"""The HTTPS listener of the cluster API: the control plane's app, on a TLS port of its own.

The plain API port stays as it is (the CLI and the console use it); this second uvicorn
server serves the same ASGI application over TLS so that kubectl sends its token. Its
address is the API's host and the API's port + 1 (an ephemeral port when the API's is 0,
as in tests, or when that one is taken); ``port`` and ``ca_pem`` are what kubeconfigs are
made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import uvicorn

from kled.kube import tls, upgrade

log = logging.getLogger(__name__)


class KubeListener:
    def __init__(self, data_dir: Path, host: str, api_port: int) -> None:
        self.host = host
        self.material = tls.ensure(data_dir / "kube-tls", host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, api_port + 1 if api_port else 0))
        except OSError as e:  # taken: any free port (kubeconfigs name the port they got)
            log.warning("kube listener: %s:%d: %s; using a free port", host, api_port + 1, e)
            self._socket.bind((host, 0))
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def ca_pem(self) -> bytes:
        return self.material.ca_pem

    async def start(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            ssl_certfile=str(self.material.cert_file),
            ssl_keyfile=str(self.material.key_file),
            http=upgrade.protocol_for(upgrade.state_of(app)),  # kubectl's SPDY port-forward
        )
        self.server = uvicorn.Server(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[self._socket]))
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        self._socket.close()

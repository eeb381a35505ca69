"""Settings of the server as one typed tree.

Read, in this order of precedence: command-line flags, environment variables
(``KLED_DATA_DIR``, ``KLED_LISTEN``, ``KLED_DATABASE``...), then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kled"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KLED_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="state and keys")
    listen: str = Field("127.0.0.1:7080", description="TCP address of the API, host:port")
    socket: Path | None = Field(None, description="Unix socket of the API; <data-dir>/kled.sock")
    database: str | None = Field(
        None, description="database URL; sqlite:///<data-dir>/kled.db by default"
    )
    secret_key: str | None = Field(None, description="Fernet key for secrets at rest")
    max_body_bytes: int = Field(1024 * 1024, description="largest request body accepted")
    keep_events: int = Field(
        100_000, ge=1, description="events the log keeps; a watch from before them gets 410"
    )
    compact_seconds: float = Field(
        60.0, gt=0, description="how often the event log is compacted to keep_events"
    )
    watch_cache: bool = Field(True, description="answer reads from memory (the watch cache)")
    log_json: bool = Field(False, description="log as JSON lines")
    # -- the Message Office (NATS JetStream) --
    embedded_nats: bool = Field(False, description="run a nats-server with JetStream in data-dir")
    nats_url: str | None = Field(None, description="an existing NATS cluster, nats://host:4222")
    nats_port: int = Field(0, description="port of the embedded nats-server (0: a free one)")
    nats_user: str | None = Field(None, description="user for --nats")
    nats_password: str | None = Field(None, description="password for --nats")
    nats_creds: str | None = Field(None, description="credentials file for --nats")
    nats_tls_ca: str | None = Field(None, description="CA bundle to verify NATS")
    nats_tls_cert: str | None = Field(None, description="client certificate for NATS")
    nats_tls_key: str | None = Field(None, description="client key for NATS")
    nats_advertise: str | None = Field(
        None, description="NATS URL told to agents (default: the host agents reached the API at)"
    )
    node_not_ready_seconds: float = Field(
        10.0, description="a node without heartbeats for this long is NotReady"
    )
    node_reschedule_seconds: float = Field(
        30.0, description="replicas of a NotReady node move after this grace period"
    )
    dev_grace_seconds: float = Field(
        60.0, gt=0, description="a dev session not renewed for this long ends: its app is restored"
    )
    # -- the mesh --
    dns_listen: str = Field("127.0.0.1:0", description="DNS server address, host:port")
    dns_upstreams: list[str] = Field(
        default_factory=list, description="resolvers for other names (default: /etc/resolv.conf)"
    )
    zone: str = Field("kled.internal", description="DNS zone of the team meshes")

    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'kled.db'}"

    def socket_path(self) -> Path:
        return self.socket or self.data_dir / "kled.sock"

    def listen_address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            from kled.errors import InvalidInput

            raise InvalidInput(f"{self.listen!r} is not host:port", field="--listen")
        return host.strip("[]") or "0.0.0.0", int(port)

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
    log_json: bool = Field(False, description="log as JSON lines")

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

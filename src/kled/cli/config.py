"""The CLI's own configuration: named contexts, as a kubeconfig has.

A context says which server to talk to (its URL, and the Unix socket when the server is on
this machine), with which token, and for which team and environment by default. The file
lives at ``~/.config/kled/config.yaml`` (``$XDG_CONFIG_HOME`` honoured, ``$KLED_CONFIG``
overrides the path) and is written with mode 0600 because it holds bearer tokens::

    current-context: local
    contexts:
    - name: local
      server: http://127.0.0.1:7080
      socket: /home/me/.local/share/kled/kled.sock
      token: kled_...
      team: acme
      environment: dev
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kled.errors import InvalidInput, NotFound


def config_path() -> Path:
    """Where the CLI keeps its contexts."""
    explicit = os.environ.get("KLED_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kled" / "config.yaml"


@dataclass
class Context:
    """One server, one identity, and the defaults used with them."""

    name: str
    server: str
    token: str = ""
    socket: str | None = None
    team: str | None = None
    environment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "server": self.server}
        for key in ("socket", "token", "team", "environment"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Context:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput(f"{where}: each context needs a name", field="contexts")
        values = {
            key: (str(raw[key]) if raw.get(key) is not None else None)
            for key in ("socket", "team", "environment")
        }
        return cls(
            name=raw["name"],
            server=str(raw.get("server") or ""),
            token=str(raw.get("token") or ""),
            **values,
        )


@dataclass
class CliConfig:
    """The whole file: contexts and which one is current."""

    path: Path
    current: str | None = None
    contexts: list[Context] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None = None) -> CliConfig:
        """The config at ``path`` (default :func:`config_path`); empty if there is none."""
        where = path or config_path()
        try:
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(where)
        except OSError as e:
            raise InvalidInput(f"cannot read {where}: {e.strerror}", field="config") from e
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InvalidInput(f"{where} is not valid YAML: {e}", field="config") from e
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where} must be a mapping", field="config")
        contexts = [Context.from_dict(c, str(where)) for c in raw.get("contexts") or []]
        current = raw.get("current-context")
        return cls(where, str(current) if current else None, contexts)

    def save(self) -> None:
        """Write atomically with mode 0600: the file holds bearer tokens."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any] = {
            "current-context": self.current,
            "contexts": [c.to_dict() for c in self.contexts],
        }
        text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def find(self, name: str) -> Context | None:
        return next((c for c in self.contexts if c.name == name), None)

    def get(self, name: str) -> Context:
        found = self.find(name)
        if found is None:
            known = ", ".join(c.name for c in self.contexts) or "none"
            raise NotFound(f"no context named {name!r} in {self.path} (known: {known})")
        return found

    def put(self, context: Context) -> None:
        """Add ``context``, or replace the one of the same name in place."""
        for i, existing in enumerate(self.contexts):
            if existing.name == context.name:
                self.contexts[i] = context
                return
        self.contexts.append(context)

    def remove(self, name: str) -> Context:
        context = self.get(name)
        self.contexts.remove(context)
        if self.current == name:
            self.current = None
        return context

    def active(self, override: str | None = None) -> Context | None:
        """The context to use: ``override`` (``--context``), else the current one."""
        name = override or self.current
        if not name:
            return None
        return self.get(name)

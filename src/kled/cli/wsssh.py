"""SSH into workspaces with the real OpenSSH client: keys, the Host block, the proxy.

``kled ws ssh NAME`` runs ``ssh`` with ``ProxyCommand kled ws proxy NAME``; the proxy opens
the workspace's ``ssh`` stream through the API (``…/workspaces/{name}/ssh``) and relays the
SSH bytes on stdin/stdout, so it works whether or not the laptop is on the mesh. The API
checks who asks (who may exec may connect) and hands the client's public key to the SSH
server the node's agent runs for that one connection (``agent/wsssh.py``), which accepts no
other key and no password.

The key is the CLI's own (``$XDG_DATA_HOME/kled/ssh/id_ed25519``, made on first use, 0600);
workspaces' host keys are remembered in ``…/kled/ssh/known_hosts`` under the alias
``kled-ws-<team>-<name>`` (trusted on first use, checked after). ``kled ws ssh-config``
prints the same settings as a Host block for ``~/.ssh/config`` (VS Code Remote-SSH,
JetBrains Gateway, plain ``ssh ws-NAME``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kled.errors import InvalidInput, Unavailable


def ssh_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kled" / "ssh"


def ensure_key() -> tuple[Path, str]:
    """The CLI's SSH key (made once): its path and its public key line."""
    folder = ssh_dir()
    private = folder / "id_ed25519"
    public = folder / "id_ed25519.pub"
    if not private.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        tmp = folder / f".id_ed25519.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public.write_text(line.decode() + " kled\n")
        tmp.replace(private)
    if not public.exists():
        key_obj = serialization.load_ssh_private_key(private.read_bytes(), None)
        line = key_obj.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public.write_text(line.decode() + " kled\n")
    return private, " ".join(public.read_text().split()[:2])


def host_alias(team: str, name: str) -> str:
    return f"ws-{name}"


def _kled_argv() -> list[str]:
    """How to run this same kled again (from ssh, as ProxyCommand)."""
    found = shutil.which("kled")
    here = Path(sys.argv[0])
    if here.name == "kled" and here.exists():
        return [str(here.resolve())]
    if found:
        return [found]
    return [sys.executable, "-m", "kled.cli.main"]


def options(team: str, name: str, context: str | None = None) -> list[tuple[str, str]]:
    """The ssh options for one workspace, as (keyword, value)."""
    private, _ = ensure_key()
    proxy = [*_kled_argv()]
    if context:
        proxy += ["--context", context]
    proxy += ["ws", "proxy", name, "--team", team]
    return [
        ("HostName", f"kled-ws-{team}-{name}"),
        ("ProxyCommand", shlex.join(proxy)),
        ("IdentityFile", str(private)),
        ("IdentitiesOnly", "yes"),
        ("PasswordAuthentication", "no"),
        ("HostKeyAlias", f"kled-ws-{team}-{name}"),
        ("UserKnownHostsFile", str(ssh_dir() / "known_hosts")),
        ("StrictHostKeyChecking", "accept-new"),
        ("LogLevel", "ERROR"),
    ]


def host_block(team: str, name: str, context: str | None = None) -> str:
    lines = [f"Host {host_alias(team, name)}"]
    for keyword, value in options(team, name, context):
        if any(c.isspace() for c in value) and keyword != "ProxyCommand":
            value = f'"{value}"'
        lines.append(f"  {keyword} {value}")
    return "\n".join(lines) + "\n"


def ssh_argv(team: str, name: str, command: list[str], context: str | None = None) -> list[str]:
    """``ssh`` with every option on its command line (no ~/.ssh/config needed)."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise Unavailable("no ssh client: install OpenSSH's (Debian: openssh-client)")
    argv = [ssh, "-F", "none"]
    for keyword, value in options(team, name, context):
        argv += ["-o", f"{keyword}={value}"]
    if not command and sys.stdin.isatty():
        argv.append("-t")
    argv.append(host_alias(team, name))
    if command:
        argv += ["--", shlex.join(command)]
    return argv


def check_name(name: str) -> str:
    if not name or name.startswith("-") or any(c.isspace() for c in name):
        raise InvalidInput(f"not a workspace name: {name!r}", field="NAME")
    return name

"""``userEnvProbe``: the environment a user's login shell would have, as the reference
reads it.

Images put much of their environment in shell start-up files (``/etc/profile``,
``/etc/profile.d/*``, ``~/.profile``, ``~/.bashrc``: a language manager's ``PATH``, a
tool's home). The reference CLI runs the remote user's shell once, with the flags the
``userEnvProbe`` property names (default ``loginInteractiveShell``: ``-lic``), prints its
environment between two markers, and uses that environment as the base of every
lifecycle command and session, with ``remoteEnv`` on top. This module is the pure part:
the argv to run, the parsing of its output, and the merge; the agent runs the argv.

Two rules are the reference's: ``PWD`` is dropped (each command has its own folder), and
``PATH`` keeps the container's entries the shell's start-up files left out, inserted where
they were (``merge_path``; ``/sbin`` folders only for root). The reference gets the same
effect for root another way, by rewriting ``PATH=`` lines of the image's
``/etc/profile``; Kled never edits the image's files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: the shell's flags for each ``userEnvProbe`` mode; ``none`` runs no probe
PROBE_FLAGS = {
    "loginInteractiveShell": "-lic",
    "loginShell": "-lc",
    "interactiveShell": "-ic",
}
DEFAULT_MODE = "loginInteractiveShell"
DEFAULT_SHELL = "/bin/sh"
#: how long a probe may take; the reference gives up after 10 s too (a shell waiting
#: for input in its start-up files)
PROBE_TIMEOUT = 10.0
_SBIN = re.compile(r"/sbin(/|$)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def probe_argv(shell: str, mode: str | None, marker: str) -> list[str] | None:
    """The command that prints the environment of ``shell`` started as ``mode`` asks,
    NUL-separated between two ``marker``s; None for ``none``."""
    flags = PROBE_FLAGS.get(mode or DEFAULT_MODE)
    if flags is None:
        return None
    script = f"echo -n {marker}; cat /proc/self/environ; echo -n {marker}"
    return [shell or DEFAULT_SHELL, flags, script]


def parse_probe(output: str, marker: str) -> dict[str, str]:
    """The environment between the markers of ``output`` ({} when there is none)."""
    start = output.find(marker)
    end = output.find(marker, start + len(marker)) if start != -1 else -1
    if start == -1 or end == -1:
        return {}
    env: dict[str, str] = {}
    for item in output[start + len(marker) : end].split("\0"):
        key, eq, value = item.partition("=")
        if eq and key:
            env[key] = value
    return env


def merge_path(probed: str, container: str, root: bool) -> str:
    """The probe's ``PATH`` with the container's entries it lacks, each inserted after the
    last entry of the container's found before it (the reference's rule); a non-root user
    does not get the container's ``/sbin`` folders added."""
    entries = probed.split(":")
    at = 0
    for entry in container.split(":"):
        if entry in entries:
            at = entries.index(entry) + 1
        elif root or not _SBIN.search(entry):
            entries.insert(at, entry)
            at += 1
    return ":".join(entries)


def user_env(
    probed: Mapping[str, str], container_env: Mapping[str, str], user: str | None
) -> dict[str, str]:
    """The base environment of hooks and sessions: the probe's, without ``PWD``, its
    ``PATH`` merged with the container's. Variables an env file cannot carry (a value over
    several lines, a name like bash's exported ``BASH_FUNC_f%%``) are left out."""
    env = {
        k: v
        for k, v in probed.items()
        if k != "PWD" and _NAME.match(k) and "\n" not in v and "\r" not in v
    }
    if env.get("PATH") and container_env.get("PATH"):
        root = user in (None, "", "root", "0")
        env["PATH"] = merge_path(env["PATH"], container_env["PATH"], root)
    return env


def login_shell(passwd: str, user: str | None) -> str:
    """The shell ``/etc/passwd`` gives ``user`` (a name or a uid; none: root)."""
    wanted = user or "root"
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and wanted in (fields[0], fields[2]) and fields[6].strip():
            return fields[6].strip()
    return DEFAULT_SHELL

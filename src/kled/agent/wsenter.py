"""Reaching into a running workspace container from the node, without the image's help.

The workspace SSH server (``agent/wsssh.py``) serves three things that ``podman exec``
cannot: SFTP (``agent/wssftp.py``), a forwarded ssh-agent socket, and TCP connections to
the workspace's own ``127.0.0.1``. Each needs the container's namespaces, found through its
main process (``/proc/PID``):

- **files**: the container's filesystem is ``/proc/PID/root`` (its mounts included, volumes
  and the source); a process that joins its mount namespace (``enter``) sees it as ``/``;
- **users**: remoteUser's uid, gid and groups are read from the container's own
  ``/etc/passwd`` and ``/etc/group`` (a name, a uid, or ``uid:gid``, as ``podman exec
  --user`` takes them), so files land owned as a session's would;
- **network**: a socket made by a thread that joined ``/proc/PID/ns/net`` belongs to the
  workspace's network namespace (``connect_inside``), so ``localhost`` is the workspace's.

``setns`` is called through libc (Python 3.11 has no ``os.setns``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


class EnterError(OSError):
    """The container cannot be entered (gone, or no such user in it)."""


@dataclass(frozen=True)
class Account:
    """Who a session runs as inside the container."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def container_pid(engine: list[str], container: str) -> int:
    """The container's main process (on the node), from ``engine inspect``."""
    done = subprocess.run(
        [*engine, "inspect", "--format", "{{json .State.Pid}}", container],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        pid = int(json.loads(done.stdout.strip() or "0"))
    except ValueError:
        pid = 0
    if done.returncode != 0 or pid <= 0:
        raise EnterError(f"container {container} is not running")
    return pid


def _table(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def account(root: Path, user: str | None) -> Account:
    """remoteUser (``name``, ``uid`` or ``uid:gid``; None: root) in the filesystem ``root``."""
    spec = user or "0"
    name, _, group = spec.partition(":")
    passwd = _table(root / "etc" / "passwd")
    row = next((r for r in passwd if len(r) >= 6 and (r[0] == name or r[2] == name)), None)
    if row is not None:
        uid, gid, home, login = int(row[2]), int(row[3]), row[5] or "/", row[0]
    elif name.isdigit():
        uid, gid, home, login = int(name), int(name), "/", ""
    else:
        raise EnterError(f"no user {name} in the workspace's /etc/passwd")
    if group:
        found = next((r for r in _table(root / "etc" / "group") if r[0] == group), None)
        if found is not None and len(found) >= 3:
            gid = int(found[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise EnterError(f"no group {group} in the workspace's /etc/group")
    extra = {
        int(r[2])
        for r in _table(root / "etc" / "group")
        if len(r) >= 4 and login and login in r[3].split(",") and r[2].isdigit()
    }
    return Account(uid=uid, gid=gid, groups=tuple(sorted(extra | {gid})), home=home)


def _setns(path: str, kind: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, kind) != 0:
            err = ctypes.get_errno()
            raise EnterError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _same(path_a: str, path_b: str) -> bool:
    try:
        return os.stat(path_a).st_ino == os.stat(path_b).st_ino
    except OSError:
        return False


def enter(pid: int, who: Account, workdir: str | None) -> None:
    """Become remoteUser inside the container: its user namespace (if it has its own), its
    mount namespace (``/`` is the container's), its ids, its folder. The calling process
    must be single-threaded and must have imported everything it will need."""
    ns = f"/proc/{pid}/ns"
    if not _same(f"{ns}/user", "/proc/self/ns/user"):
        _setns(f"{ns}/user", CLONE_NEWUSER)
    _setns(f"{ns}/mnt", CLONE_NEWNS)
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)
    for folder in (workdir, who.home, "/"):
        if folder:
            try:
                os.chdir(folder)
                break
            except OSError:
                continue


def join_net(pid: int) -> None:
    """The calling thread joins the network namespace of process ``pid`` (only that
    thread: namespaces are per thread; use a thread of its own)."""
    _setns(f"/proc/{pid}/ns/net", CLONE_NEWNET)


def connect_inside(pid: int, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection made from the container's network namespace (a thread of its own
    joins it, makes the socket and ends; the socket stays in that namespace)."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            join_net(pid)
            result.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as err:  # handed to the caller
            result.append(err)

    worker = threading.Thread(target=run, name="kled-ws-connect", daemon=True)
    worker.start()
    worker.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    outcome.settimeout(None)
    return outcome

"""Network namespaces: the team gateways, the pods and, in tests, whole hosts.

A namespace is named in ``/run/netns`` (``ip netns``), so that it outlives the agent and a
restarted agent adopts it by name; a host reboot empties that folder, which is how the agent
knows it must rebuild. All functions are idempotent: ensuring what exists and deleting what
is gone are not errors.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import TypeVar

from kled.agent.net.command import run
from kled.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
#: files here are bind-mounted over /etc by ``ip netns exec`` (e.g. a pod's resolv.conf)
ETC_NETNS_DIR = "/etc/netns"
_MAX_NAME = 200


def made_in(netns_path: str, make: Callable[[], T]) -> T:
    """What ``make`` returns when called inside the namespace at ``netns_path``.

    Sockets keep the namespace they were made in, so the agent makes them in a thread of
    their own that alone enters the namespace (``setns``) and ends right after: no other
    code of the agent ever runs there. ``make``'s exception is raised here, as an OSError.
    """
    result: list[T | BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    thread = threading.Thread(target=enter_and_make, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    got = result[0] if result else OSError(f"nothing made in {netns_path}")
    if isinstance(got, BaseException):
        raise OSError(f"cannot make a socket in {netns_path}: {got}") from got
    return got


def check_name(name: str) -> str:
    if not name or len(name) > _MAX_NAME or "/" in name or name in (".", ".."):
        raise InvalidInput(f"{name!r} is not a valid network namespace name", field="netns")
    return name


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, check_name(name)))


async def ensure(name: str) -> bool:
    """Create the namespace with its loopback up; True when it was created now."""
    check_name(name)
    created = False
    if not exists(name):
        await run(["ip", "netns", "add", name])
        log.info("netns created name=%s", name)
        created = True
    await run(["ip", "-n", name, "link", "set", "lo", "up"])
    return created


async def delete(name: str) -> None:
    """Delete the namespace and its /etc/netns files; virtual interfaces inside go with it."""
    shutil.rmtree(os.path.join(ETC_NETNS_DIR, check_name(name)), ignore_errors=True)
    if not exists(name):
        return
    try:
        await run(["ip", "netns", "delete", name])
    except NotFound:
        return
    log.info("netns deleted name=%s", name)


async def names(prefix: str = "") -> list[str]:
    """Named namespaces on this machine that start with ``prefix``."""
    out = await run(["ip", "-j", "netns", "list"])
    entries = json.loads(out) if out.strip() else []
    return sorted(e["name"] for e in entries if str(e["name"]).startswith(prefix))


async def sysctl(netns: str | None, key: str, value: str) -> None:
    """Set a sysctl as seen from ``netns`` (``net.*`` keys are per namespace)."""
    await run(["sysctl", "-q", "-w", f"{key}={value}"], netns=netns)


async def pids(name: str) -> list[int]:
    """Processes running inside the namespace (pods' processes are the runtime's to stop)."""
    if not exists(name):
        return []
    out = await run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split() if p.isdigit()]

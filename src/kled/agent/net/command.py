"""Running the host's network tools (``ip``, ``wg``, ``wireguard-go``, ``nft``), the one seam.

The network layer drives the host through the standard command-line tools rather than
through netlink libraries: ``ip -j``, ``wg`` and ``nft -j`` have stable, documented
interfaces, work identically inside any network namespace (``ip netns exec``), and what the
agent does can be replayed by hand when debugging. Every call goes through ``run`` here, which
translates failures into Kled's errors once:

- the tool is not installed → ``Unavailable``
- "does not exist" / "cannot find" → ``NotFound``
- "exists" → ``Conflict``
- anything else → ``TemporaryError`` (a reconciler retries)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

from kled.errors import Conflict, NotFound, TemporaryError, Unavailable

log = logging.getLogger(__name__)

#: wireguard-go refuses to start where a kernel module could exist unless told otherwise
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}

_NOT_FOUND = ("does not exist", "cannot find", "no such file", "not found", "no such device")
_EXISTS = ("file exists", "already exists")


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the named network namespace (or the current one)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


def require(tool: str) -> str:
    """The full path of ``tool``, or ``Unavailable`` naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        raise Unavailable(f"{tool} is not installed on this host; install it and retry")
    return path


async def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> str:
    """Run a tool to completion and return its standard output.

    ``check=False`` returns the output of a failing command instead of raising, for probes.
    """
    full = in_netns(netns, argv)
    require(full[0])
    if netns is not None:
        require(argv[0])
    proc_env = {**os.environ, **env} if env else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=proc_env,
        )
    except OSError as exc:
        raise Unavailable(f"cannot run {full[0]}: {exc}") from exc
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    text = out.decode(errors="replace")
    if proc.returncode == 0 or not check:
        return text
    message = err.decode(errors="replace").strip() or text.strip()
    raise _translate(full, message)


def _translate(argv: Sequence[str], message: str) -> Exception:
    lowered = message.lower()
    what = f"{' '.join(argv)}: {message}"
    if "operation not permitted" in lowered or "permission denied" in lowered:
        return Unavailable(f"{what} (the agent needs root for host networking)")
    if any(s in lowered for s in _EXISTS):
        return Conflict(what)
    if any(s in lowered for s in _NOT_FOUND):
        return NotFound(what)
    return TemporaryError(what, delay=2.0)

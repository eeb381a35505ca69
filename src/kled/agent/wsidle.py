"""Inactivity of a workspace, for ``spec.idleTimeout``: when it was last used.

"Used" is an SSH connection open or an exec started: the SSH server of each connection
(``agent/wsssh.py``) touches the workspace's ``activity`` file when it starts and every
``TOUCH_EVERY`` seconds while it stays open, the exec server when a ``kled ws exec``
starts, and the agent when the workspace comes up Running. So the file's age is how long
the workspace has been unused (give or take ``TOUCH_EVERY``); past the timeout the agent
stops it and reports Stopped with the reason ``idle for 30m``, and the control plane turns
``spec.running`` off, so that ``kled ws start`` starts it again. A file is the channel
because the SSH servers are processes of their own.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

ACTIVITY = "activity"
#: the reason of the idle stop, kept while the workspace stays stopped (an agent that
#: restarts meanwhile reports it, not a bare "Stopped")
STOPPED = "idle-stop"
#: how often an open SSH connection says it is there
TOUCH_EVERY = 10.0


def touch(folder: Path) -> None:
    """Now is the workspace's last use (nothing if its folder is gone)."""
    path = folder / ACTIVITY
    with contextlib.suppress(FileNotFoundError):
        try:
            os.utime(path)
        except FileNotFoundError:
            path.touch()


def mark_stopped(folder: Path, reason: str) -> None:
    with contextlib.suppress(OSError):
        (folder / STOPPED).write_text(reason)


def stopped_reason(folder: Path) -> str | None:
    """Why the agent stopped the workspace as idle, if it did and it was not started since."""
    try:
        return (folder / STOPPED).read_text().strip() or None
    except OSError:
        return None


def clear_stopped(folder: Path) -> None:
    (folder / STOPPED).unlink(missing_ok=True)


def idle_seconds(folder: Path, now: float | None = None) -> float | None:
    """Seconds since the last use; None if it was never marked."""
    try:
        mtime = (folder / ACTIVITY).stat().st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def duration_text(seconds: int) -> str:
    """``30m``, ``2h``, ``45s``: the timeout as it is usually written."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def due(folder: Path, timeout: int | None, now: float | None = None) -> str | None:
    """The stop's reason if the workspace has been unused for ``timeout`` seconds."""
    # here, not at the top: the SSH stream's own process (``wsssh``) imports this module,
    # and the resources' pydantic models would add a quarter second to every connection
    from kled.resources.workspacestate import IDLE_PREFIX

    if not timeout:
        return None
    idle = idle_seconds(folder, now)
    if idle is None or idle < timeout:
        return None
    return IDLE_PREFIX + duration_text(timeout)

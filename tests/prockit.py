"""Finding the processes a test started, by a marker argument on their command line."""

from __future__ import annotations

import psutil


def processes_with(arg: str) -> list[int]:
    """Pids of the live (not zombie) processes with ``arg`` among their arguments."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if arg in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.pid)
    return found


def one_other(arg: str, old_pid: int) -> bool:
    """Exactly one live process with ``arg``, and not ``old_pid``: it was restarted.

    One look at the process table: two looks could see the old process, then none.
    """
    found = processes_with(arg)
    return len(found) == 1 and found != [old_pid]

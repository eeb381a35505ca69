"""Keeping one header router process per team gateway, matched to the team's intercepts.

The gateway layer calls ``ensure_router`` before it applies rules that redirect to the
router, and ``stop_router`` after it applied rules that no longer do, so that no redirected
connection ever finds the port closed. The router (``header_router``) is a separate process
started with ``ip netns exec <team ns>``, in its own session, so that it outlives an agent
restart; a restarted agent adopts it by its pid file, after checking that the pid is still
that router (pids are reused). A config change is written atomically and announced with
SIGHUP; ``ensure_router`` returns once the router has acknowledged the new digest, so the
caller's next step (the nft transaction, or a test's request) sees the new routes.

Files, beside the team's key in the state folder: ``<team>.router.json`` (config),
``.json.loaded`` (digest acknowledged by the router), ``.pid`` and ``.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from kled.agent.net.command import in_netns, require
from kled.agent.net.header_router import render_config
from kled.errors import TemporaryError
from kled.resources.netstate import TeamNetwork

log = logging.getLogger(__name__)


def read_activity(folder: Path, team: str) -> tuple[dict[str, int], list[str]]:
    """What the team's router last wrote: connections counted and apps with held ones."""
    try:
        data = json.loads(RouterFiles(folder, team).activity.read_text())
        counts = {str(k): int(v) for k, v in (data.get("connections") or {}).items()}
        return counts, sorted(str(k) for k in data.get("waiting") or [])
    except (OSError, ValueError, TypeError, AttributeError):
        return {}, []


MODULE = "kled.agent.net.header_router"
#: how long a started or signalled router may take to acknowledge its config
ACK_SECONDS = 10.0


@dataclass(frozen=True)
class RouterFiles:
    folder: Path
    team: str

    @property
    def config(self) -> Path:
        return self.folder / f"{self.team}.router.json"

    @property
    def ack(self) -> Path:
        return self.folder / f"{self.team}.router.json.loaded"

    @property
    def activity(self) -> Path:
        """Connections counted and held for apps that may scale to zero (the router's)."""
        return self.folder / f"{self.team}.router.json.activity"

    @property
    def pid(self) -> Path:
        return self.folder / f"{self.team}.router.pid"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.team}.router.log"


def running_pid(files: RouterFiles) -> int | None:
    """The pid of this team's router if it is alive (and really it), else None."""
    try:
        pid = int(files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if (
        not _alive(pid)
        or MODULE.encode() not in cmdline
        or str(files.config).encode() not in cmdline
    ):
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def ensure_router(netns: str, team: TeamNetwork, folder: Path) -> int:
    """Start or reload the team's router so that it serves ``team``'s personal intercepts;
    its pid. Call only when ``render_config(team)`` is not None."""
    config = render_config(team)
    if config is None:
        raise ValueError(f"team {team.team} has no personal intercepts to route")
    files = RouterFiles(folder, team.team)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(config, indent=1, sort_keys=True)
    try:
        changed = files.config.read_text() != text
    except OSError:
        changed = True
    if changed:
        _write_atomic(files.config, text)
    pid = running_pid(files)
    if pid is None:
        pid = await _start(netns, files)
        log.info("teamgateway/%s header router started pid=%d", team.team, pid)
    elif changed or _acked(files) != config["digest"]:
        os.kill(pid, signal.SIGHUP)
        log.info("teamgateway/%s header router reloaded digest=%s", team.team, config["digest"])
    await _wait_ack(files, str(config["digest"]), pid)
    return pid


async def _start(netns: str, files: RouterFiles) -> int:
    argv = in_netns(netns, [sys.executable, "-m", MODULE, "--config", str(files.config)])
    require(argv[0])
    # A dead router's acknowledgement must not pass for the new one's.
    files.ack.unlink(missing_ok=True)
    with open(files.log, "ab") as log_file:
        # A session of its own: the router must survive the agent (traffic keeps flowing
        # through an agent restart) and must not get the agent's terminal signals.
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
    # `ip netns exec` execs the command itself, so this pid is the router's.
    _write_atomic(files.pid, str(proc.pid))
    return proc.pid


def _acked(files: RouterFiles) -> str | None:
    try:
        return files.ack.read_text().strip()
    except OSError:
        return None


async def _wait_ack(files: RouterFiles, digest: str, pid: int) -> None:
    for _ in range(int(ACK_SECONDS / 0.02)):
        if _acked(files) == digest:
            return
        # Only whether it lives: right after the fork, its cmdline is still the agent's.
        if not _alive(pid):
            break
        await asyncio.sleep(0.02)
    tail = ""
    with contextlib.suppress(OSError):
        tail = files.log.read_text(errors="replace")[-500:].strip()
    raise TemporaryError(
        f"header router of team {files.team} did not take its config ({files.log}): {tail}",
        delay=2.0,
    )


def stop_router(folder: Path, team: str, *, drain: bool = True) -> None:
    """Stop the team's router, if any. With ``drain`` it finishes open connections first
    (up to its DRAIN_SECONDS) while new ones already follow the new rules."""
    files = RouterFiles(folder, team)
    pid = running_pid(files)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if drain else signal.SIGKILL)
        log.info("teamgateway/%s header router stopped pid=%d", team, pid)
    for path in (files.pid, files.config, files.ack, files.activity):
        path.unlink(missing_ok=True)

"""The terminal of ``kled dev``: event lines, and a live status line on a TTY.

``render`` (pure) turns a ``Snapshot`` of the session into one line — its state, the last
sync from the laptop (files, bytes, ms), the restarts of the dev command and the
forwards. ``View`` prints the session's event lines and the command's output; on a
terminal it keeps that status line at the bottom with Rich's ``Live`` (lines scroll above
it, and it is gone when the session ends); elsewhere (a pipe, a file, CI) it prints the
event lines only, as they come.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text


@dataclass(frozen=True)
class LastSync:
    files: int
    bytes: int
    ms: float


@dataclass(frozen=True)
class Snapshot:
    app: str
    #: swapping, starting, syncing, running, reconnecting, restoring, …
    state: str
    last: LastSync | None = None
    restarts: int = 0
    #: "8080→80" for a port, "web:9000→8000" for a reverse port
    forwards: tuple[str, ...] = ()


def size(count: int) -> str:
    """Bytes as people read them: 812 B, 1.2 KiB, 3.4 MiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render(snap: Snapshot) -> str:
    parts = [f"{snap.app}: {snap.state}"]
    if snap.last is None:
        parts.append("no sync yet")
    else:
        last = snap.last
        parts.append(f"last sync {last.files} file(s), {size(last.bytes)} in {last.ms:.0f} ms")
    parts.append(f"{snap.restarts} restart(s)")
    if snap.forwards:
        parts.append("ports " + ", ".join(snap.forwards))
    return " · ".join(parts)


class View:
    """Where the session's lines go; with a live status line when ``out`` is a TTY."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        out: TextIO | None = None,
        *,
        live: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.snapshot = snapshot
        self.live = self.out.isatty() if live is None else live
        self._console = console or Console(file=self.out, highlight=False, soft_wrap=True)
        self._live: Live | None = None

    def _status(self) -> Text:
        return Text(render(self.snapshot()), style="bold")

    def start(self) -> None:
        if self.live and self._live is None:
            self._live = Live(
                get_renderable=self._status,
                console=self._console,
                refresh_per_second=4,
                transient=True,
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def line(self, text: str) -> None:
        if self._live is not None:
            self._console.print(Text(text))  # above the status line
        else:
            self.out.write(text + "\n")
            self.out.flush()

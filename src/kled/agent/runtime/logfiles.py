"""Captured output of replicas: files with size-based rotation, forwarded line by line.

A replica writes its stdout and stderr straight into files opened in append mode, not
into pipes held by the agent, so it survives the agent's restarts. The agent follows
those files, turns each complete line into a ``LogLine`` for the Message Office, and
rotates a file that grew past its limit by copying it aside and truncating it in place
(the writer, in append mode, simply continues at the new end). A line written in the
instant between the last read and the truncation can be missed in the forwarded stream;
it is still in the rotated copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from kled.agent.runtime.base import LogSink
from kled.resources.hoststate import LogLine

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")
_MAX_LINE = 16 * 1024


def log_path(directory: Path, stream: Stream) -> Path:
    return directory / f"{stream}.log"


def open_for_child(directory: Path, stream: Stream) -> int:
    """A file descriptor the child writes its ``stream`` to (append mode)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(log_path(directory, stream), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def rotate(path: Path, keep: int) -> None:
    """Copy ``path`` to ``path.1`` (shifting older copies up to ``keep``) and truncate it."""
    if keep < 1:
        with contextlib.suppress(OSError):
            os.truncate(path, 0)
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    # the copy is as private as the file: a replica's output may hold what it was given
    fd = os.open(path.with_name(f"{path.name}.1"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as dst, path.open("rb") as src:
        shutil.copyfileobj(src, dst)
    os.truncate(path, 0)


def tail_lines(directory: Path, stream: Stream, n: int) -> list[str]:
    """The last ``n`` lines of a stream, reaching into the newest rotated copy if needed."""
    if n <= 0:
        return []
    path = log_path(directory, stream)
    lines: list[str] = []
    for p in (path.with_name(f"{path.name}.1"), path):
        with contextlib.suppress(OSError):
            lines += p.read_bytes().decode("utf-8", "replace").splitlines()
    return lines[-n:]


class LogFollower:
    """Follows one replica's two files, forwarding new lines and rotating the files."""

    def __init__(
        self,
        replica_id: str,
        directory: Path,
        sink: LogSink,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 3,
        from_end: bool = False,
        seq: int = 0,
    ) -> None:
        self.replica_id = replica_id
        self.directory = directory
        self.sink = sink
        self.max_bytes = max_bytes
        self.keep = keep
        self.seq = seq
        self._offsets: dict[Stream, int] = {}
        self._partial: dict[Stream, bytes] = {s: b"" for s in STREAMS}
        for s in STREAMS:
            size = 0
            if from_end:
                with contextlib.suppress(OSError):
                    size = log_path(directory, s).stat().st_size
            self._offsets[s] = size

    def poll(self, *, flush: bool = False) -> None:
        """Forward what was written since the last call; rotate a file over its limit."""
        for stream in STREAMS:
            path = log_path(self.directory, stream)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            offset = self._offsets[stream]
            if size < offset:  # truncated by someone else: start over
                offset = 0
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read(size - offset)
                offset += len(data)
                self._emit(stream, data)
            if flush and self._partial[stream]:
                self._emit(stream, b"\n")
            if size > self.max_bytes:
                try:
                    rotate(path, self.keep)
                    offset = 0
                except OSError as err:
                    log.warning("replica/%s: log rotation failed: %s", self.replica_id, err)
            self._offsets[stream] = offset

    def _emit(self, stream: Stream, data: bytes) -> None:
        buf = self._partial[stream] + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > _MAX_LINE:  # a line with no end in sight is cut, not held forever
            lines.append(rest)
            rest = b""
        self._partial[stream] = rest
        for raw in lines:
            self.seq += 1
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.sink(LogLine(replica_id=self.replica_id, stream=stream, line=line, seq=self.seq))

    async def run(self, interval: float = 0.5) -> None:
        while True:
            try:
                self.poll()
            except Exception:
                log.exception("replica/%s: log follower failed", self.replica_id)
            await asyncio.sleep(interval)

"""The sync engine: change-to-remote latency, initial sync, idle CPU, and the tar-per-change peer.

A ``SyncSession`` in this process syncs a temporary folder into a remote, first a local
``python -m kled.sync.remote`` child, then (when rootful podman works) a busybox container
that sees the host's ``/usr`` for ``python3``, through ``podman exec -i``. Measured:

- change→remote, p50/p99: one file edited 30 times; a burst of 100 files written at once,
  10 times (the time until the last of the 100 has landed). "Landed" is the remote's reply
  that the file is renamed into place, taken from the session's ``on_batch``; the clock
  starts before the write, so the watcher's detection is included;
- the initial sync of 10,000 files (100 dirs of 100 small files) into an empty remote;
- CPU of the idle session (this process) and of the remote over 5 s, with a small tree
  and with the 10,000-file tree;
- the peer in the same run: one ``podman exec -i C tar -x`` per change into the same
  container (what Skaffold and Compose Watch do), timed from the write to tar's exit. It is
  given its change for free (no watcher), which favours it.

Prints one JSON document on stdout. ``python bench/sync.py [--edits 30] [--files 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from kled.sync.channel import Link, open_process
from kled.sync.session import Batch, SyncSession, new_token

SRC = str(Path(__file__).resolve().parents[1] / "src")


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": ms(values, 0.5), "p99_ms": ms(values, 0.99)}


class Landed:
    """When each path last landed on the remote, from the session's ``on_batch``."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.event = asyncio.Event()

    def __call__(self, batch: Batch) -> None:
        now = time.monotonic()
        if batch.direction == "up":
            for p in batch.paths:
                self.at[p] = now
            self.event.set()

    async def wait(self, paths: list[str], since: float, timeout: float = 10) -> float:
        deadline = since + timeout
        while True:
            if all(self.at.get(p, 0) >= since for p in paths):
                return max(self.at[p] for p in paths) - since
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(paths)} paths did not land in {timeout}s")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.5)


async def edits(local: Path, landed: Landed, count: int) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.monotonic()
        (local / "src" / "main.py").write_text(f"print({i})\n" * 20)
        out.append(await landed.wait(["src/main.py"], t0))
        await asyncio.sleep(0.05)
    return out


async def bursts(
    local: Path, landed: Landed, count: int, size: int = 100
) -> tuple[list[float], list[float]]:
    """(write→all landed, how long the writes themselves took) per burst."""
    out, writing = [], []
    for b in range(count):
        names = [f"burst/f{i:03}.py" for i in range(size)]
        t0 = time.monotonic()
        for name in names:
            (local / name).write_text(f"x = {b}\n" * 10)
        writing.append(time.monotonic() - t0)
        out.append(await landed.wait(names, t0, timeout=20))
        await asyncio.sleep(0.1)
    return out, writing


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def measure_session(
    local: Path,
    connect: Callable[[], Awaitable[Link]],
    token: str,
    n_edits: int,
    n_bursts: int,
    remote_pid: Callable[[], int | None],
) -> dict[str, Any]:
    landed = Landed()
    (local / "src").mkdir(parents=True, exist_ok=True)
    (local / "burst").mkdir(exist_ok=True)
    (local / "src" / "main.py").write_text("print()\n")
    async with SyncSession(local, connect, token=token, on_batch=landed) as s:
        await s.wait_synced(timeout=60)
        one = await edits(local, landed, n_edits)
        burst, writing = await bursts(local, landed, n_bursts)
        await s.wait_synced(timeout=30)
        idle = await idle_cpu(remote_pid())
        return {
            "remote_watch": s.remote_watch,
            "one_file": stats(one),
            "burst_100_files": {**stats(burst), "of_which_writing_p50_ms": ms(writing, 0.5)},
            "idle_cpu_percent": idle,
        }


async def initial_sync(
    base: Path,
    connect_for: Callable[[Path], Callable[[], Awaitable[Link]]],
    token: str,
    n_files: int,
    remote_pid: Callable[[], int | None],
) -> dict[str, Any]:
    local, remote = base / "init-local", base / "init-remote"
    per = 100
    total = 0
    for d in range(max(1, n_files // per)):
        folder = local / f"d{d:03}"
        folder.mkdir(parents=True)
        for i in range(per):
            data = f"# module {d}.{i}\n" * 40
            (folder / f"m{i:03}.py").write_text(data)
            total += len(data)
    remote.mkdir()
    t0 = time.monotonic()
    async with SyncSession(local, connect_for(remote), token=token) as s:
        await s.wait_synced(timeout=300)
        took = time.monotonic() - t0
        idle = await idle_cpu(remote_pid())
    count = sum(len(files) for _, _, files in os.walk(remote))
    return {
        "files": count,
        "bytes": total,
        "seconds": round(took, 2),
        "files_per_second": round(count / took),
        "idle_cpu_percent_with_this_tree": idle,
    }


async def idle_cpu(pid: int | None, seconds: float = 5) -> dict[str, float | None]:
    """CPU of this process (the session) and of the remote, idle, over ``seconds``."""
    me = psutil.Process()
    remote = psutil.Process(pid) if pid else None
    before = (cpu_seconds(me), cpu_seconds(remote) if remote else 0.0)
    await asyncio.sleep(seconds)
    after = (cpu_seconds(me), cpu_seconds(remote) if remote else 0.0)
    return {
        "session": round((after[0] - before[0]) / seconds * 100, 2),
        "remote": round((after[1] - before[1]) / seconds * 100, 2) if remote else None,
    }


# --- the container and the peer -------------------------------------------------------


def podman_flags() -> tuple[list[str], list[str]]:
    from kled.agent.runtime.container import engine_flags

    podman = shutil.which("podman")
    assert podman is not None
    return engine_flags(podman)


def podman(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    flags, _ = podman_flags()
    return subprocess.run(["podman", *flags, *args], input=stdin, capture_output=True, check=False)


def start_container(work: Path) -> tuple[str, str] | str:
    """(container, image), or why there is none."""
    busybox = shutil.which("busybox")
    if shutil.which("podman") is None or busybox is None or os.geteuid() != 0:
        return "needs podman, busybox (static) and root"
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "tar", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    for d in ("usr", "tmp", "app", "peer", "opt/kled"):
        (root / d).mkdir(parents=True, exist_ok=True)
    tarball = work / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    image = f"localhost/kled-bench-sync:{os.getpid()}"
    name = f"kled-bench-sync-{os.getpid()}"
    done = podman("import", str(tarball), image)
    if done.returncode != 0:
        return f"podman import failed: {done.stderr.decode().strip()}"
    _, run_flags = podman_flags()
    done = podman(
        "run",
        "-d",
        "--name",
        name,
        *run_flags,
        "-v",
        "/usr:/usr:ro",
        "-v",
        f"{SRC}:/opt/kled:ro",
        image,
        "sleep",
        "900",
    )
    if done.returncode != 0:
        podman("rmi", "-f", image)
        return f"podman run failed: {done.stderr.decode().strip()}"
    return name, image


def container_remote_pid() -> int | None:
    """The remote's python3 inside the container, as the host sees it (the newest one)."""
    found = [
        p
        for p in psutil.process_iter(["cmdline", "create_time"])
        if (p.info["cmdline"] or [])[-2:] == ["kled.sync.remote", "/app"]
    ]
    return max(found, key=lambda p: p.info["create_time"]).pid if found else None


def tar_of(local: Path, names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            tar.add(local / name, arcname=name)
    return buf.getvalue()


def peer(local: Path, container: str, n_edits: int, n_bursts: int) -> dict[str, Any]:
    (local / "src").mkdir(parents=True, exist_ok=True)
    (local / "burst").mkdir(exist_ok=True)
    one, burst = [], []
    for i in range(n_edits):
        t0 = time.monotonic()
        (local / "src" / "main.py").write_text(f"print({i})\n" * 20)
        done = podman(
            "exec",
            "-i",
            container,
            "tar",
            "-x",
            "-C",
            "/peer",
            stdin=tar_of(local, ["src/main.py"]),
        )
        assert done.returncode == 0, done.stderr
        one.append(time.monotonic() - t0)
    for b in range(n_bursts):
        names = [f"burst/f{i:03}.py" for i in range(100)]
        t0 = time.monotonic()
        for name in names:
            (local / name).write_text(f"x = {b}\n" * 10)
        done = podman(
            "exec", "-i", container, "tar", "-x", "-C", "/peer", stdin=tar_of(local, names)
        )
        assert done.returncode == 0, done.stderr
        burst.append(time.monotonic() - t0)
    return {"one_file": stats(one), "burst_100_files": stats(burst)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    token = new_token()
    result: dict[str, Any] = {"bench": "sync", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="kled-bench-sync-") as tmp:
        work = Path(tmp)
        pids: list[int] = []

        def local_remote(root: Path) -> Callable[[], Awaitable[Link]]:
            async def connect() -> Link:
                link = await open_process(
                    [sys.executable, "-m", "kled.sync.remote", str(root)],
                    {"KLED_SYNC_TOKEN": token, "PYTHONPATH": SRC},
                )
                if link.pid:
                    pids.append(link.pid)
                return link

            return connect

        try:
            (work / "remote").mkdir()
            result["process_remote"] = await measure_session(
                work / "local",
                local_remote(work / "remote"),
                token,
                args.edits,
                args.bursts,
                lambda: pids[-1] if pids else None,
            )
            result["initial_sync"] = await initial_sync(
                work, local_remote, token, args.files, lambda: pids[-1] if pids else None
            )
            made = start_container(work)
            if isinstance(made, str):
                result["container"] = {"skipped": made}
            else:
                name, image = made
                try:
                    flags, _ = podman_flags()

                    async def into_container() -> Link:
                        return await open_process(
                            [
                                "podman",
                                *flags,
                                "exec",
                                "-i",
                                "-e",
                                f"KLED_SYNC_TOKEN={token}",
                                "-e",
                                "PYTHONPATH=/opt/kled",
                                name,
                                "/usr/bin/python3",
                                "-m",
                                "kled.sync.remote",
                                "/app",
                            ]
                        )

                    kled = await measure_session(
                        work / "c-local",
                        into_container,
                        token,
                        args.edits,
                        args.bursts,
                        container_remote_pid,
                    )
                    tar = peer(work / "p-local", name, args.edits, args.bursts)
                    result["container"] = {
                        "kled_sync": kled,
                        "peer_podman_exec_tar_per_change": tar,
                        "peer_over_kled_p50": {
                            k: round(tar[k]["p50_ms"] / max(kled[k]["p50_ms"], 0.1), 1)
                            for k in ("one_file", "burst_100_files")
                        },
                    }
                finally:
                    podman("rm", "-f", "-t", "0", name)
                    podman("rmi", "-f", image)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

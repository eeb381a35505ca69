"""Sync sessions between real folders through a real remote process (and a real container)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from imagekit import busybox_image
from kled.agent.runtime.container import engine_flags
from kled.sync.channel import Link, open_process
from kled.sync.plan import Strategy
from kled.sync.session import Batch, SyncSession, new_token

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tree(root: Path) -> dict[str, Any]:
    """Everything under root: files by content and mode, dirs, symlinks by target."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            try:
                if full.is_symlink():
                    out[rel] = ("link", os.readlink(full))
                elif full.is_dir():
                    out[rel] = ("dir",)
                else:
                    out[rel] = ("file", full.read_bytes(), full.stat().st_mode & 0o777)
            except FileNotFoundError:
                continue  # changing under us: a later look decides
    return out


def files(root: Path) -> dict[str, bytes]:
    return {k: v[1] for k, v in tree(root).items() if v[0] == "file"}


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


class Remote:
    """Starts ``python -m kled.sync.remote`` as the session asks; can be cut and held off."""

    def __init__(self, root: Path, token: str, watch: str = "") -> None:
        self.root, self.token, self.watch = root, token, watch
        self.pids: list[int] = []
        self.allowed = asyncio.Event()
        self.allowed.set()

    async def connect(self) -> Link:
        await self.allowed.wait()
        link = await open_process(
            [sys.executable, "-m", "kled.sync.remote", str(self.root)],
            {"KLED_SYNC_TOKEN": self.token, "PYTHONPATH": SRC, "KLED_SYNC_WATCH": self.watch},
        )
        assert link.pid is not None
        self.pids.append(link.pid)
        return link

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pids[-1], signal.SIGKILL)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    return local, remote


@contextlib.asynccontextmanager
async def session(
    local: Path, remote: Path, watch: str = "", **kw: Any
) -> AsyncIterator[tuple[SyncSession, Remote, list[Batch]]]:
    token = new_token()
    peer = Remote(remote, token, watch)
    batches: list[Batch] = []
    s = SyncSession(local, peer.connect, token=token, on_batch=batches.append, **kw)
    await s.start()
    try:
        yield s, peer, batches
    finally:
        peer.allowed.set()
        await s.stop()
        for pid in peer.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.MIRROR_LOCAL, {"both": b"L", "same": b"s", "lonly": b"l"}),
        (Strategy.MIRROR_REMOTE, {"both": b"R", "same": b"s", "ronly": b"r"}),
        (Strategy.PREFER_LOCAL, {"both": b"L", "same": b"s", "lonly": b"l", "ronly": b"r"}),
        (Strategy.PREFER_REMOTE, {"both": b"R", "same": b"s", "lonly": b"l", "ronly": b"r"}),
        (Strategy.PREFER_NEWEST, {"both": b"R", "same": b"s", "lonly": b"l", "ronly": b"r"}),
        (
            Strategy.KEEP_ALL,
            {"both": b"L", "both.conflict-*": b"R", "same": b"s", "lonly": b"l", "ronly": b"r"},
        ),
    ],
)
async def test_initial_strategies(
    dirs: tuple[Path, Path], strategy: Strategy, expected: dict[str, bytes]
) -> None:
    local, remote = dirs
    write(local / "both", "L", mtime=1_000_000)
    write(remote / "both", "R", mtime=2_000_000)
    write(local / "same", "s", mtime=5)
    write(remote / "same", "s", mtime=9)
    write(local / "lonly", "l")
    write(remote / "ronly", "r")
    async with session(local, remote, strategy=strategy) as (s, _, batches):
        await s.wait_synced()
        got = {
            (k.split(".conflict-")[0] + ".conflict-*" if ".conflict-" in k else k): v
            for k, v in files(local).items()
        }
        assert got == expected
        assert tree(local) == tree(remote)
        assert all("same" not in b.paths for b in batches), "equal bytes were sent again"


async def test_edits_deletes_dirs_modes_and_symlinks_flow_both_ways(
    dirs: tuple[Path, Path],
) -> None:
    local, remote = dirs
    write(local / "app/main.py", "print(1)")
    async with session(local, remote) as (s, _, batches):
        await s.wait_synced()
        write(local / "app/main.py", "print(2)")
        await eventually(lambda: files(remote).get("app/main.py") == b"print(2)", "edit up")
        write(remote / "app/generated.txt", "from the container")
        await eventually(lambda: (local / "app/generated.txt").exists(), "new file down")
        (local / "empty").mkdir()
        await eventually(lambda: (remote / "empty").is_dir(), "empty dir up")
        os.chmod(local / "app/main.py", 0o755)
        await eventually(
            lambda: (remote / "app/main.py").stat().st_mode & 0o777 == 0o755, "mode up"
        )
        (local / "link").symlink_to("app/main.py")
        await eventually(lambda: (remote / "link").is_symlink(), "symlink up")
        (remote / "app/generated.txt").unlink()
        await eventually(lambda: not (local / "app/generated.txt").exists(), "delete down")
        (local / "empty").rmdir()
        await eventually(lambda: not (remote / "empty").exists(), "delete up")
        write(remote / "app/main.py", "print(3)")
        await eventually(lambda: files(local).get("app/main.py") == b"print(3)", "edit down")
        await eventually(lambda: s.idle, "idle")
        await asyncio.sleep(0.5)
        assert tree(local) == tree(remote)
        before = len(batches)
        await asyncio.sleep(0.5)
        assert len(batches) == before, f"changes bounced back: {batches[before:]}"
        assert s.problems == []


@pytest.mark.parametrize("watch", ["watchfiles", "inotify", "poll"])
async def test_remote_changes_come_back_whatever_the_remote_watches_with(
    dirs: tuple[Path, Path], watch: str
) -> None:
    local, remote = dirs
    async with session(local, remote, watch=watch, exclude=["cache"]) as (s, _, batches):
        await s.wait_synced()
        assert s.remote_watch == watch
        write(remote / "a.txt", "1")
        await eventually(lambda: files(local).get("a.txt") == b"1", "new file down")
        write(remote / "a.txt", "2")
        await eventually(lambda: files(local).get("a.txt") == b"2", "edit down")
        staged = remote.parent / "staged"
        for i in range(20):
            write(staged / "deep" / f"{i}.txt", str(i))
        staged.rename(remote / "pkg")
        await eventually(lambda: len(files(local)) == 21, "a directory moved in, whole")
        write(remote / "cache/x", "excluded")
        (remote / "a.txt").unlink()
        await eventually(lambda: not (local / "a.txt").exists(), "delete down")
        await eventually(lambda: s.idle, "idle")
        await asyncio.sleep(0.3)
        assert not (local / "cache").exists()
        quiet = len(batches)
        await asyncio.sleep(0.4)
        assert len(batches) == quiet, "the remote reported our own writes back"


async def test_excludes_and_gitignore_are_not_synced(dirs: tuple[Path, Path]) -> None:
    local, remote = dirs
    write(local / ".gitignore", "*.pyc\nbuild/\n")
    write(local / "a.pyc", "x")
    write(local / "build/out", "x")
    write(local / "node_modules/m.js", "x")
    write(local / "keep.py", "k")
    write(remote / "node_modules/remote.js", "the container's own")
    async with session(local, remote, exclude=["node_modules"]) as (s, _, _b):
        await s.wait_synced()
        assert sorted(files(remote)) == [".gitignore", "keep.py", "node_modules/remote.js"]
        write(local / "b.pyc", "x")
        write(local / "keep.py", "k2")
        await eventually(lambda: files(remote)["keep.py"] == b"k2", "edit up")
        assert not (remote / "b.pyc").exists()


async def test_a_conflict_keeps_both_and_a_delete_never_beats_an_edit(
    dirs: tuple[Path, Path],
) -> None:
    local, remote = dirs
    write(local / "a.txt", "base")
    write(local / "b.txt", "base")
    async with session(local, remote) as (s, peer, _b):
        await s.wait_synced()
        peer.allowed.clear()
        peer.kill()
        await eventually(lambda: s.state in ("disconnected", "connecting"), "disconnect")
        write(local / "a.txt", "local edit")
        write(remote / "a.txt", "remote edit")
        (local / "b.txt").unlink()
        write(remote / "b.txt", "remote edit of b")
        peer.allowed.set()
        await s.wait_synced(after=1)
        got = files(local)
        assert got["a.txt"] == b"local edit"
        assert got["b.txt"] == b"remote edit of b"
        kept = [k for k in got if k.startswith("a.txt.conflict-")]
        assert len(kept) == 1 and got[kept[0]] == b"remote edit"
        assert tree(local) == tree(remote)


async def test_a_symlink_escaping_the_root_is_refused(dirs: tuple[Path, Path]) -> None:
    local, remote = dirs
    write(local / "x.txt", "x")
    async with session(local, remote) as (s, _, _b):
        await s.wait_synced()
        (local / "evil").symlink_to("/etc")
        (local / "ok").symlink_to("x.txt")
        await eventually(lambda: (remote / "ok").is_symlink(), "safe symlink up")
        await eventually(lambda: any(p.startswith("evil:") for p in s.problems), "refusal")
        assert not (remote / "evil").exists() and not (remote / "evil").is_symlink()
        (remote / "up").symlink_to("../../..")
        await eventually(lambda: any(p.startswith("up:") for p in s.problems), "refused here")
        assert not (local / "up").is_symlink()
        write(local / "x.txt", "still syncing")
        await eventually(lambda: files(remote)["x.txt"] == b"still syncing", "goes on")


@pytest.mark.slow
async def test_ten_thousand_files_then_the_directory_renamed_as_one_batch(
    dirs: tuple[Path, Path],
) -> None:
    local, remote = dirs
    for d in range(100):
        (local / "tree" / f"d{d:03}").mkdir(parents=True)
        for i in range(100):
            (local / "tree" / f"d{d:03}" / f"f{i:03}.py").write_text(f"# {d} {i}\n" * 3)
    async with session(local, remote) as (s, _, batches):
        started = time.monotonic()
        await s.wait_synced(timeout=120)
        took = time.monotonic() - started
        assert len(files(remote)) == 10_000
        assert took < 30, f"initial sync of 10,000 files took {took:.1f}s"
        first = len(batches)
        (local / "tree").rename(local / "moved")
        await eventually(
            lambda: (
                len(files(remote)) == 10_000
                and (remote / "moved").is_dir()
                and not (remote / "tree").exists()
            ),
            "rename up",
            timeout=60,
        )
        await eventually(lambda: s.idle, "idle")
        after = batches[first:]
        assert sum(b.bytes for b in after) == 0, "renamed files were uploaded again"
        assert len(after) <= 3, f"the rename took {len(after)} batches"
        assert tree(local) == tree(remote)


async def test_killing_the_remote_mid_sync_loses_and_duplicates_nothing(
    dirs: tuple[Path, Path],
) -> None:
    local, remote = dirs
    write(local / "seed", "seed")
    async with session(local, remote) as (s, peer, _b):
        await s.wait_synced()
        (local / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
        for i in range(1500):
            write(local / "many" / f"{i:04}.txt", f"file {i}\n" * 50)
        await eventually(
            lambda: (remote / "many").is_dir() or (remote / "big.bin").exists(), "the batch started"
        )
        peer.kill()
        write(remote / "made-while-down", "remote")
        write(local / "seed", "edited while down")
        await s.wait_synced(after=1, timeout=90)
        assert s.connects >= 2
        assert files(local)["made-while-down"] == b"remote"
        assert files(remote)["seed"] == b"edited while down"
        assert len([k for k in files(remote) if k.startswith("many/")]) == 1500
        assert tree(local) == tree(remote)
        leftovers = [k for k in tree(remote) if ".kled-sync-" in k or ".conflict-" in k]
        assert leftovers == []


# --- through a real container --------------------------------------------------------

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert PODMAN is not None
    flags, _ = engine_flags(PODMAN)
    done = subprocess.run([PODMAN, *flags, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {args[0]}: {done.stderr.strip()}")
    return done


@pytest.fixture
def container(tmp_path: Path) -> Any:
    """A busybox container that sees the host's /usr (for python3) and Kled's source."""
    tag = busybox_image(
        tmp_path,
        f"localhost/kled-test-sync:{os.getpid()}-{time.monotonic_ns()}",
        ("sh", "sleep", "cat", "ls", "tar", "mkdir"),
        dirs=("usr", "tmp", "app", "opt/kled"),
        links=(("lib", "usr/lib"), ("lib64", "usr/lib64")),
    )
    name = f"kled-sync-test-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    _, run_flags = engine_flags(PODMAN)
    try:
        podman(
            "run",
            "-d",
            "--name",
            name,
            *run_flags,
            "-v",
            "/usr:/usr:ro",
            "-v",
            f"{SRC}:/opt/kled:ro",
            tag,
            "sleep",
            "600",
        )
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", "-f", tag, check=False)


def podman_exec_remote(name: str, token: str) -> list[str]:
    assert PODMAN is not None
    flags, _ = engine_flags(PODMAN)
    return [
        PODMAN,
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


async def test_sync_into_a_podman_container(tmp_path: Path, container: str) -> None:
    local = tmp_path / "local"
    write(local / "api/main.py", "print('v1')")
    token = new_token()

    async def connect() -> Link:
        return await open_process(podman_exec_remote(container, token))

    def in_container(path: str) -> str:
        return podman("exec", container, "cat", path, check=False).stdout

    async with SyncSession(local, connect, token=token) as s:
        await s.wait_synced(timeout=60)
        assert s.remote_watch == "inotify", "no watchfiles in the image: inotify via ctypes"
        assert in_container("/app/api/main.py") == "print('v1')"
        write(local / "api/main.py", "print('v2')")
        await eventually(lambda: in_container("/app/api/main.py") == "print('v2')", "edit in")
        podman("exec", container, "sh", "-c", "echo made-inside > /app/api/out.txt")
        await eventually(lambda: (local / "api/out.txt").exists(), "change out", timeout=10)
        assert (local / "api/out.txt").read_text() == "made-inside\n"


async def test_a_file_over_the_limit_is_named_and_skipped(dirs: tuple[Path, Path]) -> None:
    local, remote = dirs
    (local / "huge.bin").write_bytes(b"x" * 5000)
    write(local / "small.txt", "s")
    async with session(local, remote, max_file_size=4096) as (s, _, _b):
        await s.wait_synced()
        assert files(remote) == {"small.txt": b"s"}
        assert s.problems == ["huge.bin: skipped: 5000 bytes is over the limit"]
        write(local / "small.txt", "goes on")
        await eventually(lambda: files(remote)["small.txt"] == b"goes on", "still syncing")


async def test_a_remote_that_never_answers_does_not_hang_the_session(tmp_path: Path) -> None:
    async def connect() -> Link:
        return await open_process(["sh", "-c", "exit 3"])

    s = SyncSession(tmp_path, connect, token=new_token())
    await s.start()
    await eventually(lambda: s.state == "disconnected", "gave up on a dead remote", timeout=10)
    started = time.monotonic()
    await s.stop()
    assert time.monotonic() - started < 5 and s.state == "stopped"

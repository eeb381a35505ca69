"""Container images for tests, built here: no registry is reachable from these machines.

``busybox_image`` imports a root filesystem holding the static busybox (and whatever
folders or symlinks a test adds) as a local podman image, and skips the test, saying why,
where rootful podman or busybox is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from kled.agent.runtime.container import engine_flags

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    """Run podman with the flags this host needs (runtime, cgroup manager)."""
    if PODMAN is None:
        pytest.skip("podman is not installed")
    flags, _ = engine_flags(PODMAN)
    return subprocess.run([PODMAN, *flags, *args], capture_output=True, text=True, check=False)


def busybox_image(
    workdir: Path,
    tag: str,
    applets: Iterable[str] = ("sh", "sleep", "echo"),
    *,
    dirs: Iterable[str] = (),
    links: Iterable[tuple[str, str]] = (),
) -> str:
    """``tag`` imported from a busybox root filesystem made under ``workdir``.

    ``applets`` become symlinks in /bin, ``dirs`` empty folders, ``links`` (name, target)
    symlinks at the root. The caller removes the image (``podman("rmi", "-f", tag)``).
    """
    if PODMAN is None or BUSYBOX is None or os.geteuid() != 0:
        pytest.skip("needs root, podman and busybox-static")
    root = workdir / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    for name, target in links:
        (root / name).symlink_to(target)
    for folder in dirs:
        (root / folder).mkdir(parents=True, exist_ok=True)
    tarball = workdir / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    done = podman("import", str(tarball), tag)
    if done.returncode != 0:
        pytest.skip(f"podman import failed here: {done.stderr.strip()}")
    return tag

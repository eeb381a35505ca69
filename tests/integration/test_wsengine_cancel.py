"""A workspace container's removal that the agent's shutdown cancels half-way, with real
podman: the removal finishes rather than leaving the container's process running with no
container record to remove it by (found as a `sleep` of a deleted workspace outliving
every CI run: `kled ws delete` then the agent stopped within the 5 s `rm -t` grace)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from pathlib import Path

import pytest

from imagekit import busybox_image, podman
from kled.agent.wsengine import WorkspaceEngine
from prockit import processes_with


async def test_a_cancelled_removal_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = str(random.randint(10**6, 10**7))
    image = busybox_image(tmp_path, f"localhost/kled-test-wscancel:{marker}")
    engine = WorkspaceEngine(owner=f"test-{marker}", engine="podman")
    name = engine.container_name("t", f"c{marker}")
    try:
        # PID 1 ignores SIGTERM, as `sleep` does: `rm -t 5` waits the whole grace
        started = podman("run", *engine.run_flags, "-d", "--name", name, image, "sleep", marker)
        assert started.returncode == 0, started.stderr
        assert processes_with(marker), "the container's process runs"

        removal = asyncio.create_task(engine.remove(name))
        await asyncio.sleep(1.0)  # podman is inside the grace now
        removal.cancel()
        with pytest.raises(asyncio.CancelledError):
            await removal

        assert processes_with(marker) == []
        assert podman("container", "exists", name).returncode != 0
    finally:
        podman("rm", "-f", "-t", "0", name)
        podman("rmi", "-f", image)
        for pid in processes_with(marker):  # what a failed removal left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

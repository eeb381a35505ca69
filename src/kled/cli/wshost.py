"""devcontainer.json's ``hostRequirements`` as ``kled ws up`` sends them: in the Workspace's
``spec.hostRequirements``, so that the scheduler places the workspace on a node that has
them (``control/wsfit.py``). The config is read as the node will read it; memory becomes a
Kled quantity (``8gb`` → ``8Gi``, as the reference counts a gb), a GPU wanted with a size is a
GPU wanted (nodes say only whether they have one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kled.errors import KledError
from kled.resources.quantities import format_memory
from kled.workspace.devcontainer import load_config
from kled.workspace.discovery import select_config


def requirements(folder: Path, config: str | None) -> dict[str, Any]:
    """``{"hostRequirements": {...}}`` for the folder's config, or ``{}`` (none, or no
    config: the preload image, a project's Dockerfile)."""
    try:
        found = select_config(folder, config)
        if found is None:
            return {}
        wanted = load_config(folder, found, env=dict(os.environ), source=str(found))
    except KledError:
        return {}
    host = wanted.config.host_requirements
    if host is None:
        return {}
    out: dict[str, Any] = {}
    if host.cpus:
        out["cpus"] = host.cpus
    if host.memory_bytes:
        out["memory"] = format_memory(host.memory_bytes)
    if host.gpu is not None and host.gpu is not False:
        out["gpu"] = "optional" if host.gpu == "optional" else True
    return {"hostRequirements": out} if out else {}

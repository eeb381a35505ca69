"""What a node must offer a workspace: devcontainer.json's ``hostRequirements``, as the
Workspace carries it (``spec.hostRequirements``) for the scheduler.

``kled ws up`` copies it from the folder's devcontainer.json (``cpus``, ``memory`` as a
Kled quantity, ``gpu``); it can also be written by hand, as for a git source, whose config
is read on the node only after placement. ``storage`` is not checked (nodes do not report
free disk). ``control/wsfit.py`` compares it with each node.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kled.resources.fields import Memory
from kled.resources.meta import Bool, Int, KledModel


class WorkspaceHostRequirements(KledModel):
    cpus: Int | None = Field(default=None, ge=1)
    """CPUs the node must have (allocatable)."""
    memory: Memory | None = None
    """Memory the node must have (allocatable), as ``8Gi``."""
    gpu: Bool | Literal["optional"] | None = None
    """True: only a node with a GPU (capability ``gpu`` or label ``kled.io/gpu=true``);
    ``optional``: any node."""

"""Does a node meet a workspace's ``hostRequirements``? And, when none does, why not.

devcontainer.json's ``hostRequirements`` are minimums of the machine (``cpus``, ``memory``,
``gpu``), so they are compared with what the node offers (its allocatable CPU and memory,
``nodes.node_info``), not with what other workloads use: a workspace is a developer's
machine, not a metered replica. A node that has not said its size is not limited (as for
apps). ``gpu: true`` wants a node with the capability ``gpu`` or the label
``kled.io/gpu=true``; ``optional`` wants nothing. The reason a workspace stays Pending
reads like an app's (``scheduling.py``): ``insufficient memory on 2 nodes (needs 8Gi)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kled.control.scheduling import NodeInfo
from kled.resources.quantities import format_cpu, format_memory, parse_memory

GPU_LABEL = "kled.io/gpu"
GPU_CAPABILITY = "gpu"


@dataclass(frozen=True)
class Needs:
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    gpu: bool = False


def needs_of(spec: Mapping[str, Any]) -> Needs:
    wanted = spec.get("hostRequirements") or {}
    cpus, memory = wanted.get("cpus"), wanted.get("memory")
    return Needs(
        cpu_millicores=int(cpus) * 1000 if cpus else None,
        memory_bytes=parse_memory(memory) if memory else None,
        gpu=wanted.get("gpu") is True,
    )


def has_gpu(node: NodeInfo) -> bool:
    return GPU_CAPABILITY in node.capabilities or node.labels.get(GPU_LABEL) == "true"


def _short(node: NodeInfo, needs: Needs) -> tuple[bool, bool, bool]:
    """(short of cpu, of memory, of a GPU)."""
    cpu = (
        needs.cpu_millicores is not None
        and node.cpu_millicores is not None
        and node.cpu_millicores < needs.cpu_millicores
    )
    memory = (
        needs.memory_bytes is not None
        and node.memory_bytes is not None
        and node.memory_bytes < needs.memory_bytes
    )
    return cpu, memory, needs.gpu and not has_gpu(node)


def fits(node: NodeInfo, spec: Mapping[str, Any]) -> bool:
    return not any(_short(node, needs_of(spec)))


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def shortfall(spec: Mapping[str, Any], eligible: Iterable[NodeInfo]) -> str | None:
    """Why none of ``eligible`` (nodes that fit in every other way) meets the
    requirements; None if some does, or there are none to blame."""
    needs = needs_of(spec)
    shorts = [_short(n, needs) for n in eligible]
    if not shorts or any(not any(s) for s in shorts):
        return None
    memory = format_memory(needs.memory_bytes or 0)
    cpu = format_cpu(needs.cpu_millicores or 0)
    parts = []
    if count := sum(s[1] for s in shorts):
        parts.append(f"insufficient memory on {_nodes(count)} (needs {memory})")
    if count := sum(s[0] for s in shorts):
        parts.append(f"insufficient cpu on {_nodes(count)} (needs {cpu})")
    if count := sum(s[2] for s in shorts):
        parts.append(f"no GPU on {_nodes(count)} (hostRequirements.gpu)")
    return "; ".join(parts)

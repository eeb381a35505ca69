"""Handing many nodes' desired states to a sink at once.

The sinks in front of the Message Office (``WorkspaceSink`` → ``HostStateComposer`` →
the KV bucket) recompute every host's network on each call, so a round of scheduling that
changes many nodes gives them all in one ``put_many`` where the sink has one: one
recomputation instead of one per node (with 100 agents, that recomputation was most of the
control plane's CPU). A sink with only ``put`` gets them one by one.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from kled.resources.hoststate import HostDesiredState


async def put_all(sink: object, states: Mapping[str, HostDesiredState]) -> None:
    """``states`` (node → desired state) into ``sink``; raises what the sink raised."""
    if not states:
        return
    many = getattr(sink, "put_many", None)
    if many is not None:
        result = many(dict(states))
        if inspect.isawaitable(result):
            await result
        return
    for node, state in states.items():
        result = sink.put(node, state)  # type: ignore[attr-defined]
        if inspect.isawaitable(result):
            await result

"""Taking down what an agent left running on its host (``kled down``).

An agent that stops leaves its replicas and its team networks in place, by design: its
next start adopts them, so an agent restart never restarts an app. When the host is done
with Kled — ``kled down`` after ``kled up`` — they must go: every replica the runtimes
find in the agent's data dir is stopped, and every team gateway and pod namespace of the
host is removed (the network layer converged to an empty network). What the control plane
stores is untouched, so the next ``kled up`` starts the same apps again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from kled.agent.agent import default_runtimes
from kled.agent.net.host import HostNetworkLayer
from kled.resources.netstate import HostNetwork

log = logging.getLogger(__name__)


@dataclass
class Teardown:
    stopped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        replicas = f"{len(self.stopped)} replica{'s' if len(self.stopped) != 1 else ''}"
        spaces = f"{len(self.removed)} network namespace{'s' if len(self.removed) != 1 else ''}"
        return f"stopped {replicas}, removed {spaces}"


async def teardown(data_dir: str | Path, network: HostNetworkLayer | None) -> Teardown:
    """Stop every replica of the agent at ``data_dir`` and remove its team networks."""
    done = Teardown()
    for runtime in default_runtimes(Path(data_dir)):
        for replica_id in await runtime.adopt():
            await runtime.stop(replica_id)
            done.stopped.append(replica_id)
        await runtime.detach()
    if network is not None:
        report = await network.apply(HostNetwork())
        done.removed = sorted(report.removed)
    log.info("agent teardown: %s", done.summary())
    return done

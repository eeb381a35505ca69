"""The control plane on an existing NATS: ``kled server --nats nats://127.0.0.1:4222``.

That server has no per-node accounts, so agents get the operator's connection; its
streams and buckets are shared with whoever else uses it, so the names here (node, team)
are unique to this run and nothing assumes the streams start empty.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest
from hostkit import Hosts, app_doc, eventually, marker, sleepers

# in order, on one worker: each test starts from the state the previous one left
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("hosts-system-nats")]

SYSTEM_NATS = ("127.0.0.1", 4222)
RUN = random.randint(10**5, 10**6)
TEAM = f"sysnats-{RUN}"
NODE = f"sys-{RUN}"
APP = marker()


def _nats_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(SYSTEM_NATS) == 0


# Session scope, not module: xdist may run other modules' tests between these on the
# same worker, and pytest tears a module fixture down when the module changes; these
# tests build on one another's state, so their hosts must outlive such interleaving.
@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if not _nats_up():
        pytest.skip("no NATS server at 127.0.0.1:4222")
    h = Hosts(tmp_path_factory.mktemp("sysnats"), ["--nats", "nats://127.0.0.1:4222"], TEAM)
    try:
        h.start_team_node(NODE)
        yield h
    finally:
        h.close([APP])


def test_an_app_runs_and_logs_through_the_system_nats(hosts: Hosts) -> None:
    assert "Message Office on nats://127.0.0.1:4222" in "\n".join(hosts.lines)
    hosts.apply(app_doc("api", APP, replicas=2))
    reps = eventually(lambda: hosts.running("api", 2), "api 2/2 Running")
    assert {r["node"] for r in reps} == {NODE}
    assert len(sleepers(APP)) == 2
    eventually(
        lambda: "[api-1] hello from api" in hosts.cli.ok("logs", "api", "-e", "dev"),
        "api's lines in kled logs",
    )


def test_the_agent_killed_and_restarted_adopts_on_the_system_nats(hosts: Hosts) -> None:
    before = {p.pid for p in sleepers(APP)}
    hosts.kill_agent(NODE)
    hosts.start_agent(NODE, join=False)
    eventually(lambda: "adopt" in (hosts.root / f"{NODE}.log").read_text().lower(), "adopted")
    assert hosts.cli.ok("app", "scale", "api", "1", "-e", "dev").strip() == "app/api scaled to 1"
    eventually(lambda: hosts.running("api", 1), "api 1/1 Running")
    eventually(lambda: len(sleepers(APP)) == 1, "one process left")
    assert {p.pid for p in sleepers(APP)} <= before
    hosts.cli.ok("delete", "app", "api", "-e", "dev")
    eventually(lambda: not sleepers(APP), "api stopped")
    hosts.cli.ok("node", "delete", NODE)

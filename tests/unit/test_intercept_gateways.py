"""How a gateway's "applied" report becomes what `kled intercept start|stop` wait for.

The agent lists every intercept its gateway applied (``liveness.intercepts_of``); the
heartbeat puts that list in ``Node.status.mesh.<team>.intercepts``; ``team_gateways`` reads
the team's gateways from the Nodes, and the CLI names an Intercept the same way
(``gateway_entry``). Pure parts only: the end to end wait is in
tests/e2e/test_device_join.py.
"""

from __future__ import annotations

from typing import Any

from kled.agent.net.liveness import intercepts_of
from kled.api.intercepts import applied_at, team_gateways
from kled.cli.intercepts import gateway_entry
from kled.control.nodes import apply_heartbeat
from kled.resources.hoststate import Capacity, NodeHeartbeat, TeamMeshReport
from kled.resources.netstate import (
    Intercept,
    PersonalIntercept,
    Service,
    ServicePort,
    TeamNetwork,
)

KEY = "A" * 43 + "="


def intercept(name: str, device_ip: str | None, header: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {"app": "api", "device": "laptop"}
    if header:
        spec["header"] = header
    status = {"deviceIP": device_ip} if device_ip else {}
    meta = {"name": name, "team": "a", "environment": "dev"}
    return {"metadata": meta, "spec": spec, "status": status}


def team(*, global_ip: str | None, bob_ip: str | None) -> TeamNetwork:
    personal = ()
    if bob_ip:
        personal = (
            PersonalIntercept(header="X-Dev", value=" bob", target_ip=bob_ip, port_map={80: 70}),
        )
    service = Service(
        name="api",
        env="dev",
        ip="100.90.1.10",
        ports=(ServicePort(port=80, target_port=8080),),
        intercept=Intercept(target_ip=global_ip, port_map={80: 7070}) if global_ip else None,
        personal=personal,
    )
    return TeamNetwork(
        team="a", block="100.90.0.0/16", mesh_ip="100.90.0.1", pod_subnet="100.90.16.0/24",
        listen_port=51820, services=(service,),
    )  # fmt: skip


def node(name: str, applied: list[str], phase: str = "Ready") -> dict[str, Any]:
    hb = NodeHeartbeat(
        node=name,
        capacity=Capacity(cpu_millicores=2000, memory_bytes=1 << 30),
        mesh={"a": TeamMeshReport(public_key=KEY, listen_port=51820, intercepts=applied)},
    )
    status = apply_heartbeat({"mesh": {"a": {"ip": "100.90.0.1"}}}, hb)
    status["phase"] = phase
    return {"metadata": {"name": name}, "status": status}


def test_what_a_gateway_applied_is_named_as_the_cli_names_the_intercept() -> None:
    applied = intercepts_of(team(global_ip="100.90.0.9", bob_ip="100.90.0.7"))
    assert applied == ["dev/api[x-dev=bob]→100.90.0.7", "dev/api→100.90.0.9"]
    assert gateway_entry(intercept("api-laptop", "100.90.0.9")) in applied
    bob = intercept("api-laptop-bob", "100.90.0.7", {"name": "X-Dev", "value": "bob "})
    assert gateway_entry(bob) in applied
    # No device address yet: no gateway can have it.
    assert gateway_entry(intercept("api-laptop", None)) is None
    assert intercepts_of(team(global_ip=None, bob_ip=None)) == []


def test_the_heartbeat_keeps_the_applied_list_in_node_status_and_drops_it_when_empty() -> None:
    status = node("node1", ["dev/api→100.90.0.9"])["status"]
    assert status["mesh"]["a"]["intercepts"] == ["dev/api→100.90.0.9"]
    assert status["mesh"]["a"]["ip"] == "100.90.0.1"
    assert "intercepts" not in node("node1", [])["status"]["mesh"]["a"]


def test_the_teams_gateways_and_where_an_intercept_is_applied() -> None:
    nodes = [
        node("node2", []),
        node("node1", ["dev/api→100.90.0.9"]),
        node("node3", ["dev/api→100.90.0.9"], phase="NotReady"),
        {"metadata": {"name": "bare"}, "status": {"phase": "Ready"}},  # no gateway of team a
    ]
    gateways = team_gateways(nodes, "a")
    assert [(g["node"], g["ready"]) for g in gateways] == [
        ("node1", True),
        ("node2", True),
        ("node3", False),
    ]
    assert team_gateways(nodes, "b") == []
    doc = intercept("api-laptop", "100.90.0.9")
    assert applied_at(doc, "100.90.0.9", gateways) == ["node1", "node3"]
    # The same app pointed at another device's address is another intercept.
    assert applied_at(doc, "100.90.0.10", gateways) == []

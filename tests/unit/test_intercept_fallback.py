"""How a gateway's fallback report becomes an Intercept's ``Fallback`` phase (issue 5).

The agent's gateways name what they fall back on as ``liveness.fallen_back`` writes it; the
heartbeat carries those names to ``Node.status.mesh.<team>.fallback``; the intercept task
matches them to Intercepts. Pure parts only: the end to end flip is in
tests/e2e/test_device_join.py.
"""

from __future__ import annotations

from typing import Any

from kled.agent.net.liveness import fallen_back
from kled.api.intercepts import fallback_key, falling_back_at
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


def intercept(name: str, app: str, device: str, header: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {"app": app, "device": device}
    if header:
        spec["header"] = header
    return {"metadata": {"name": name, "team": "a", "environment": "dev"}, "spec": spec}


def test_a_global_entry_names_env_app_and_device_ip() -> None:
    assert fallback_key("dev/api→100.90.0.9") == ("dev", "api", None, "100.90.0.9")


def test_a_personal_entry_names_its_header_case_insensitively() -> None:
    got = fallback_key("dev/api[X-Kled-Dev=alice]→100.90.0.9")
    assert got == ("dev", "api", ("x-kled-dev", "alice"), "100.90.0.9")
    assert fallback_key("not an entry") is None


def test_only_the_intercept_a_gateway_names_is_falling_back() -> None:
    reports = {
        "node1": {"a": frozenset({"dev/api→100.90.0.9", "dev/web[x-dev=bob]→100.90.0.7"})},
        "node2": {"a": frozenset({"dev/api→100.90.0.9"}), "b": frozenset({"dev/db→1.2.3.4"})},
    }
    glob = intercept("api", "api", "laptop")
    assert falling_back_at(glob, "100.90.0.9", reports) == ["node1", "node2"]
    # Same app, another device (a new IP after a re-join): not this intercept.
    assert falling_back_at(glob, "100.90.0.10", reports) == []
    bob = intercept("web-bob", "web", "bob", {"name": "X-Dev", "value": "bob"})
    assert falling_back_at(bob, "100.90.0.7", reports) == ["node1"]
    alice = intercept("web-alice", "web", "alice", {"name": "x-dev", "value": "alice"})
    assert falling_back_at(alice, "100.90.0.7", reports) == []
    # Another team's report never touches team a's intercepts.
    assert falling_back_at(intercept("db", "db", "x"), "1.2.3.4", reports) == []


def heartbeat(fallback: list[str]) -> NodeHeartbeat:
    report = TeamMeshReport(public_key=KEY, listen_port=51820, fallback=fallback)
    return NodeHeartbeat(
        node="node1",
        capacity=Capacity(cpu_millicores=2000, memory_bytes=1 << 30),
        mesh={"a": report},
    )


def test_the_heartbeat_puts_the_fallback_list_in_node_status_and_takes_it_away() -> None:
    status: dict[str, Any] = {"mesh": {"a": {"ip": "100.90.0.1"}}}
    falling = apply_heartbeat(status, heartbeat(["dev/api→100.90.0.9"]))
    assert falling["mesh"]["a"]["fallback"] == ["dev/api→100.90.0.9"]
    assert falling["mesh"]["a"]["ip"] == "100.90.0.1"
    resumed = apply_heartbeat(falling, heartbeat([]))
    assert "fallback" not in resumed["mesh"]["a"]


def test_what_the_gateways_write_is_what_the_control_plane_reads() -> None:
    service = Service(
        name="api",
        env="dev",
        ip="100.90.1.10",
        ports=(ServicePort(port=80, target_port=8080),),
        backends=("100.90.16.11",),
        intercept=Intercept(target_ip="100.90.0.9", port_map={80: 7070}),
        personal=(
            PersonalIntercept(
                header="X-Dev", value="bob", target_ip="100.90.0.7", port_map={80: 7070}
            ),
        ),
    )
    desired = TeamNetwork(
        team="a", block="100.90.0.0/16", mesh_ip="100.90.0.1", pod_subnet="100.90.16.0/24",
        listen_port=51820, services=(service,),
    )  # fmt: skip
    offline = service.model_copy(update={"intercept": None, "personal": ()})
    effective = desired.model_copy(update={"services": (offline,)})
    reports = {"node1": {"a": frozenset(fallen_back(desired, effective))}}
    assert falling_back_at(intercept("api", "api", "laptop"), "100.90.0.9", reports) == ["node1"]
    bob = intercept("api-bob", "api", "bob", {"name": "x-dev", "value": "bob"})
    assert falling_back_at(bob, "100.90.0.7", reports) == ["node1"]

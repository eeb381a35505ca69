"""Scale to zero, the pure parts: the spec, the idle rule, the gateway's rules and router
config for an app that may have no replica, and the router holding then waking a
connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kled.agent.net.header_router import Downstream, Router, render_config
from kled.agent.net.httpsniff import Kind, Sniffed
from kled.agent.net.nftables import ROUTER_PORT, render_ruleset
from kled.control import autoscale
from kled.errors import InvalidInput
from kled.resources.kinds import validate
from kled.resources.netstate import Service, ServicePort, TeamNetwork


def app(**spec: Any) -> dict[str, Any]:
    return {"kind": "App", "metadata": {"name": "web", "team": "acme", "environment": "dev"},
            "spec": {"command": ["srv"], "resources": {"cpu": "100m"}, **spec}}  # fmt: skip


def test_min_replicas_zero_needs_a_tcp_port() -> None:
    bounds = {"minReplicas": 0, "maxReplicas": 2}
    with pytest.raises(InvalidInput) as caught:
        validate(app(autoscale=bounds))
    assert caught.value.field == "spec.autoscale.minReplicas"
    assert "needs a TCP port" in str(caught.value)
    ok = validate(app(autoscale=bounds, ports=[{"port": 80, "targetPort": 8080}]))
    assert ok["spec"]["autoscale"]["scaleToZeroAfterSeconds"] == 300


def test_idle_only_with_min_zero_and_after_the_window() -> None:
    target = autoscale.Target(0, 2, 80, 100, idle_seconds=60)
    assert not autoscale.idle(target, last_active=None, since=0, now=59)
    assert autoscale.idle(target, last_active=None, since=0, now=60)
    assert not autoscale.idle(target, last_active=30, since=0, now=60)
    assert autoscale.idle(target, last_active=30, since=0, now=90)
    held = autoscale.Target(1, 2, 80, 100, idle_seconds=60)
    assert not autoscale.idle(held, last_active=None, since=0, now=1000)


def test_cpu_never_asks_for_zero() -> None:
    target = autoscale.Target(0, 2, 80, 100)
    assert autoscale.recommend(1, [0], target) == 1
    assert autoscale.recommend(0, [], target) == 0  # nothing measured keeps 0
    assert autoscale.wanted_replicas(
        {"spec": {"replicas": 1, "autoscale": {"minReplicas": 0, "maxReplicas": 2}},
         "status": {"autoscale": {"desiredReplicas": 0}}}
    ) == 0  # fmt: skip


def held_team(backends: tuple[str, ...] = ()) -> TeamNetwork:
    svc = Service(name="web", env="dev", ip="100.70.1.10", hold=True, backends=backends,
                  ports=(ServicePort(port=80, target_port=8080),
                         ServicePort(port=53, protocol="UDP", target_port=53)))  # fmt: skip
    return TeamNetwork(team="acme", block="100.70.0.0/16", mesh_ip="100.70.0.1",
                       pod_subnet="100.70.16.0/24", listen_port=51820,
                       services=(svc,))  # fmt: skip


def test_a_held_service_tcp_port_goes_to_the_router_with_or_without_replicas() -> None:
    for backends in ((), ("100.70.16.10",)):
        rules = json.dumps(render_ruleset(held_team(backends), wg_ifname="kw-1", bridge="kbr0"))
        assert f'"redirect": {{"port": {ROUTER_PORT}}}' in rules
        assert "app/dev/web via router (scale to zero)" in rules
    config = render_config(held_team())
    assert config is not None
    (entry,) = config["routes"]  # only TCP
    assert (entry["port"], entry["hold"], entry["key"], entry["backends"]) == (
        80,
        True,
        "dev/web",
        [],
    )
    assert "hold" not in Service(name="a", env="dev", ip="100.70.1.1", ports=()).model_dump()


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def test_the_router_holds_a_connection_then_sends_it_on(tmp_path: Path) -> None:
    config_path = tmp_path / "acme.router.json"
    config_path.write_text(json.dumps(render_config(held_team())))
    router = Router(config_path)
    router.load()
    down = Downstream(router)
    down.transport = FakeTransport()  # type: ignore[assignment]
    down.dest = ("100.70.1.10", 80)
    down.route = router.routes[down.dest]
    router.counted("dev/web")
    down._decide(Sniffed(Kind.HTTP1, []))
    assert down in router.held and not down.transport.closed  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    activity = json.loads((tmp_path / "acme.router.json.activity").read_text())
    assert activity == {"connections": {"dev/web": 1}, "waiting": ["dev/web"]}
    woken: list[Any] = []
    down.wake = lambda route, head: woken.append(route.backends)  # type: ignore[method-assign]
    config_path.write_text(json.dumps(render_config(held_team(("100.70.16.10",)))))
    router.reload()
    assert woken == [[("100.70.16.10", 8080)]] and not router.held
    await asyncio.sleep(0.3)
    activity = json.loads((tmp_path / "acme.router.json.activity").read_text())
    assert activity["waiting"] == []

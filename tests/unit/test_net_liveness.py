"""The device-liveness judgement of the gateways, as a pure transition: peers' signs of life
in, services with the offline devices' ``fallback`` intercepts left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kled.agent.net.liveness import PeerLiveness, effective_team, fallen_back
from kled.agent.net.wireguard import InterfaceStatus, PeerStatus
from kled.resources.netstate import (
    Intercept,
    Peer,
    PersonalIntercept,
    Service,
    ServicePort,
    TeamNetwork,
)

ALICE, BOB = "A" * 43 + "=", "B" * 43 + "="
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def status(rx: dict[str, int], handshake_age: float | None = None) -> InterfaceStatus:
    shake = None if handshake_age is None else NOW - timedelta(seconds=handshake_age)
    return InterfaceStatus(
        public_key="N" * 43 + "=",
        listen_port=51820,
        peers=tuple(PeerStatus(k, None, (), shake, v, 0, None) for k, v in rx.items()),
    )


def test_a_peer_is_alive_while_bytes_arrive_and_offline_after_silence() -> None:
    clock = Clock()
    judge = PeerLiveness(offline_after=15, clock=clock)
    assert judge.alive(ALICE)  # never seen: not judged, traffic stays
    judge.observe(status({ALICE: 10}, handshake_age=300), NOW)
    clock.t += 14
    judge.observe(status({ALICE: 10}, handshake_age=314), NOW)
    assert judge.alive(ALICE)  # the grace of a first sighting
    clock.t += 2
    judge.observe(status({ALICE: 10}, handshake_age=316), NOW)
    assert not judge.alive(ALICE)
    judge.observe(status({ALICE: 11}, handshake_age=316), NOW)
    assert judge.alive(ALICE)  # a keepalive arrived
    clock.t += 20
    judge.observe(status({ALICE: 11}, handshake_age=1), NOW)
    assert judge.alive(ALICE)  # a fresh handshake counts too


def team(*services: Service) -> TeamNetwork:
    return TeamNetwork(
        team="acme",
        block="100.70.0.0/16",
        mesh_ip="100.70.0.1",
        pod_subnet="100.70.16.0/24",
        listen_port=51820,
        peers=(
            Peer(public_key=ALICE, allowed_ips=("100.70.0.10/32",)),
            Peer(public_key=BOB, allowed_ips=("100.70.0.11/32",)),
        ),
        services=services,
    )


def test_only_fallback_intercepts_of_offline_devices_are_left_out() -> None:
    svc = Service(
        name="api",
        env="dev",
        ip="100.70.1.10",
        ports=(ServicePort(port=80, target_port=8080),),
        backends=("100.70.16.5",),
        intercept=Intercept(target_ip="100.70.0.10", port_map={80: 7070}),
        personal=(
            PersonalIntercept(header="x-dev", value="bob", target_ip="100.70.0.11",
                              port_map={80: 7070}),
            PersonalIntercept(header="x-dev", value="bob2", target_ip="100.70.0.11",
                              port_map={80: 7070}, on_device_offline="keep"),
        ),
    )  # fmt: skip
    desired = team(svc)
    assert effective_team(desired, lambda key: True) is desired
    alice_gone = effective_team(desired, lambda key: key != ALICE)
    assert alice_gone.services[0].intercept is None
    assert alice_gone.services[0].personal == svc.personal
    assert fallen_back(desired, alice_gone) == ["dev/api→100.70.0.10"]
    bob_gone = effective_team(desired, lambda key: key != BOB)
    assert bob_gone.services[0].intercept == svc.intercept
    assert [p.value for p in bob_gone.services[0].personal] == ["bob2"]
    assert fallen_back(desired, bob_gone) == ["dev/api[x-dev=bob]→100.70.0.11"]
    keep = team(svc.model_copy(update={"intercept": Intercept(
        target_ip="100.70.0.10", port_map={80: 7070}, on_device_offline="keep")}))  # fmt: skip
    assert effective_team(keep, lambda key: key != ALICE).services[0].intercept is not None
    # A target no peer of this gateway routes is not this gateway's to judge.
    far = team(svc.model_copy(update={"intercept": Intercept(target_ip="100.70.9.9",
                                                              port_map={80: 7070})}))  # fmt: skip
    assert effective_team(far, lambda key: False).services[0].intercept is not None

"""One team gateway on a two-host lab: teardown, a port change, peer sets, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from netlab import Lab, sh

from kled.agent.net import gateway, host, netns, pods, wireguard
from kled.errors import InvalidInput
from kled.resources.netstate import HostNetwork, Peer, PodNetwork, TeamNetwork

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("netns")]


def team_net(lab: Lab, port: int = 51820, peers: tuple[Peer, ...] = ()) -> TeamNetwork:
    return TeamNetwork(
        team="acme",
        block="100.70.0.0/16",
        mesh_ip="100.70.0.1",
        pod_subnet="100.70.16.0/24",
        listen_port=port,
        peers=peers,
        dns_server="100.70.0.1:53",
        search_domain="dev.acme.kled.internal",
    )


async def up(lab: Lab, net: TeamNetwork) -> gateway.TeamGateway:
    gw = await gateway.ensure_team_gateway(lab.host(1), net, state_dir=lab.state_dir)
    lab.ifnames.add(gw.wg_ifname)
    return gw


def udp_ports(ns: str) -> set[int]:
    out = sh("ip", "netns", "exec", ns, "ss", "-Huan")
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


async def test_teardown_removes_everything_but_the_key(lab2: Lab) -> None:
    gw = await up(lab2, team_net(lab2))
    pod = await pods.ensure_pod_netns("api-0", "acme", "100.70.16.5", gw)
    assert netns.exists(gw.netns) and netns.exists(pod.netns)
    assert os.path.exists(f"/etc/netns/{pod.netns}/resolv.conf")
    assert 51820 in udp_ports(lab2.host(1))  # the WireGuard socket sits on the host's underlay
    key = lab2.state_dir / gw.host_id / "acme.key"
    assert key.stat().st_mode & 0o777 == 0o600

    await gateway.teardown_team_gateway(lab2.host(1), "acme", state_dir=lab2.state_dir)

    assert not netns.exists(gw.netns) and not netns.exists(pod.netns)
    assert not os.path.exists(f"/etc/netns/{pod.netns}")
    assert wireguard.process_ids(gw.wg_ifname) == []
    assert not wireguard.socket_path(gw.wg_ifname).exists()
    assert 51820 not in udp_ports(lab2.host(1))
    assert key.exists()
    # Tearing down what is gone is not an error.
    await gateway.teardown_team_gateway(lab2.host(1), "acme", state_dir=lab2.state_dir)


async def test_listen_port_change_moves_the_socket_and_keeps_the_key(lab2: Lab) -> None:
    gw = await up(lab2, team_net(lab2, 51820))
    again = await up(lab2, team_net(lab2, 51830))
    assert again.public_key == gw.public_key
    assert (await wireguard.status(gw.wg_ifname)).listen_port == 51830
    ports = udp_ports(lab2.host(1))
    assert 51830 in ports and 51820 not in ports
    assert len(wireguard.process_ids(gw.wg_ifname)) == 1


async def test_peer_set_is_replaced_not_merged(lab2: Lab) -> None:
    k1 = await wireguard.public_key(await wireguard.generate_private_key())
    k2 = await wireguard.public_key(await wireguard.generate_private_key())
    p1 = Peer(public_key=k1, endpoint="198.18.0.2:51820", allowed_ips=("100.70.0.2/32",))
    p2 = Peer(public_key=k2, allowed_ips=("100.70.0.3/32",), persistent_keepalive=25)
    gw = await up(lab2, team_net(lab2, peers=(p1, p2)))
    status = await wireguard.status(gw.wg_ifname)
    assert {p.public_key for p in status.peers} == {k1, k2}
    assert status.peer(k2).persistent_keepalive == 25
    assert status.peer(k1).latest_handshake is None and not status.peer(k1).alive()

    moved = p1.model_copy(update={"allowed_ips": ("100.70.0.2/32", "100.70.17.0/24")})
    await gateway.update_peers(gw, team_net(lab2, peers=(moved,)))
    status = await wireguard.status(gw.wg_ifname)
    assert [p.public_key for p in status.peers] == [k1]
    assert set(status.peer(k1).allowed_ips) == {"100.70.0.2/32", "100.70.17.0/24"}


async def test_bad_pod_addresses_are_refused_and_nothing_is_built(lab2: Lab) -> None:
    gw = await up(lab2, team_net(lab2))
    for bad in ("100.70.17.5", "100.70.16.1", "100.70.16.255"):
        with pytest.raises(InvalidInput) as err:
            await pods.ensure_pod_netns("api-1", "acme", bad, gw)
        assert err.value.field == "ip"
    with pytest.raises(InvalidInput):
        await pods.ensure_pod_netns("api-1", "other", "100.70.16.9", gw)
    assert not netns.exists(pods.pod_netns(gw.host_id, "acme", "api-1"))


async def test_pod_namespace_is_repaired_and_removed(lab2: Lab, tmp_path: Path) -> None:
    gw = await up(lab2, team_net(lab2))
    pod = await pods.ensure_pod_netns("web/0", "acme", "100.70.16.7", gw)
    assert "/" not in pod.netns
    sh("ip", "-n", pod.netns, "route", "del", "default")
    await pods.ensure_pod_netns("web/0", "acme", "100.70.16.7", gw)
    route = sh("ip", "-n", pod.netns, "route", "show", "default")
    assert "via 100.70.16.1 dev eth0" in route
    ping = sh(*pod.exec_argv(["busybox", "ping", "-c", "1", "-W", "2", gw.bridge_ip]))
    assert "1 packets received" in ping
    await pods.delete_pod_netns("web/0", "acme", gw)
    assert not netns.exists(pod.netns)
    await pods.delete_pod_netns("web/0", "acme", gw)


async def test_reconcile_host_converges_from_anywhere(lab2: Lab) -> None:
    acme = team_net(lab2)
    beta = TeamNetwork(
        team="beta", block="100.71.0.0/16", mesh_ip="100.71.0.1",
        pod_subnet="100.71.16.0/24", listen_port=51821,
    )  # fmt: skip
    both = HostNetwork(
        teams=(acme, beta),
        pods=(
            PodNetwork(replica_id="api-0", team="acme", ip="100.70.16.5"),
            PodNetwork(replica_id="db-0", team="beta", ip="100.71.16.5"),
        ),
    )
    layer = host.LinuxHostNetwork(lab2.host(1), state_dir=lab2.state_dir)
    report = await layer.apply(both)
    lab2.ifnames.update(gw.wg_ifname for gw in report.gateways.values())
    assert not report.errors and set(report.pods) == {"api-0", "db-0"}
    hid = report.gateways["acme"].host_id
    assert (await layer.mesh_status("beta")).listen_port == 51821
    addr = sh(*layer.pod_argv("beta", "db-0", ["ip", "-4", "-o", "addr", "show", "eth0"]))
    assert "100.71.16.5/24" in addr
    assert os.path.exists(layer.pod_netns_path("acme", "api-0"))

    # A reboot: every namespace of the host's teams is gone; one pass rebuilds them.
    for ns in await netns.names(f"kt-{hid}.") + await netns.names(f"kp-{hid}."):
        await netns.delete(ns)
    report = await host.reconcile_host(lab2.host(1), both, state_dir=lab2.state_dir)
    assert not report.errors and netns.exists(report.pods["db-0"].netns)
    assert wireguard.is_alive(report.gateways["beta"].wg_ifname)

    only_acme = HostNetwork(teams=(acme,), pods=both.pods[:1])
    report = await host.reconcile_host(lab2.host(1), only_acme, state_dir=lab2.state_dir)
    assert sorted(report.removed) == [f"kp-{hid}.beta.db-0", f"kt-{hid}.beta"]
    assert await netns.names(f"kt-{hid}.") == [f"kt-{hid}.acme"]
    assert await netns.names(f"kp-{hid}.") == [f"kp-{hid}.acme.api-0"]

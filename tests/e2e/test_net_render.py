"""The pure parts of the network layer: desired-state diffs, nft rules, wg output, configs.

No root needed; what these render is exercised for real by test_net_mesh.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kled.agent.net import device, nftables, pods, wireguard
from kled.resources.netstate import (
    HostNetwork,
    Intercept,
    Peer,
    PodNetwork,
    Service,
    ServicePort,
    TeamNetwork,
    diff_host,
)

KEY = "gmDk9nFYFcj/bhOTjaTn+qYxg9BqenA5QLU12LM/+h8="
KEY2 = "EdIz+4TOR/ByaFzrMlAbbodJynIWpB1hAkK4boECchQ="


def team(**changes: object) -> TeamNetwork:
    base = TeamNetwork(
        team="acme",
        block="100.65.0.0/16",
        mesh_ip="100.65.0.1/32",
        pod_subnet="100.65.16.0/24",
        listen_port=51820,
        dns_server="100.65.0.1:53",
        search_domain="dev.acme.kled.internal",
    )
    return base.model_copy(update=changes)


def svc(backends: tuple[str, ...], icpt: Intercept | None = None) -> Service:
    ports = (
        ServicePort(port=80, target_port=8080),
        ServicePort(port=53, protocol="UDP", target_port=5353),
    )
    return Service(name="api", env="dev", ip="100.65.1.10", ports=ports, backends=backends,
                   intercept=icpt)  # fmt: skip


def rules(net: TeamNetwork) -> list[dict[str, object]]:
    batch = nftables.render_ruleset(net, wg_ifname="kw-12345678", bridge="kbr0")
    return [c["add"]["rule"] for c in batch if "rule" in c.get("add", {})]


def test_team_network_normalises_and_refuses_addresses_outside_its_block() -> None:
    net = team()
    assert net.mesh_ip == "100.65.0.1" and net.bridge_ip == "100.65.16.1"
    with pytest.raises(ValidationError, match="outside the team block"):
        TeamNetwork(team="acme", block="100.65.0.0/16", mesh_ip="100.66.0.1",
                    pod_subnet="100.65.16.0/24", listen_port=1)  # fmt: skip
    with pytest.raises(ValidationError, match="ip:port"):
        team().model_validate({**team().model_dump(), "dns_server": "100.65.0.1"})


def test_diff_separates_rewiring_from_peer_and_service_updates() -> None:
    pod = PodNetwork(replica_id="api-0", team="acme", ip="100.65.16.5")
    old = HostNetwork(teams=(team(),), pods=(pod,))
    peer = Peer(public_key=KEY, allowed_ips=("100.65.0.2/32",))
    new = HostNetwork(
        teams=(team(peers=(peer,), services=(svc(("100.65.16.5",)),)),),
        pods=(pod.model_copy(update={"ip": "100.65.16.6"}),),
    )
    d = diff_host(old, new)
    assert [(c.team, c.rewire, c.peers, c.services) for c in d.teams_changed] == [
        ("acme", False, True, True)
    ]
    assert [p.ip for p in d.pods_removed] == ["100.65.16.5"]
    assert [p.ip for p in d.pods_added] == ["100.65.16.6"]
    moved = HostNetwork(teams=(team(listen_port=51821),), pods=(pod,))
    assert diff_host(old, moved).teams_changed[0].rewire
    assert diff_host(new, new).empty
    gone = diff_host(old, HostNetwork())
    assert gone.teams_removed == ("acme",) and gone.pods_removed == (pod,)


def test_host_network_refuses_pods_of_absent_teams_and_shared_ports() -> None:
    with pytest.raises(ValidationError, match="not on this host"):
        HostNetwork(pods=(PodNetwork(replica_id="x", team="acme", ip="100.65.16.5"),))
    other = team(team="beta", block="100.66.0.0/16", mesh_ip="100.66.0.1",
                 pod_subnet="100.66.16.0/24")  # fmt: skip
    with pytest.raises(ValidationError, match="listen port"):
        HostNetwork(teams=(team(), other))
    HostNetwork(teams=(team(), other.model_copy(update={"listen_port": 51821})))


def test_service_rules_balance_over_replicas_with_numgen() -> None:
    (tcp, udp) = [
        r
        for r in rules(team(services=(svc(("100.65.16.6", "100.65.16.5")),)))
        if r["chain"] == "services"
    ]
    dnat = tcp["expr"][-1]["dnat"]  # type: ignore[index]
    assert dnat["port"] == 8080
    assert dnat["addr"]["map"]["key"]["numgen"] == {"mode": "random", "mod": 2, "offset": 0}
    assert dnat["addr"]["map"]["data"]["set"] == [[0, "100.65.16.5"], [1, "100.65.16.6"]]
    assert udp["expr"][-1]["dnat"]["port"] == 5353  # type: ignore[index]


def test_intercept_rewrites_only_the_mapped_ports_and_protocols() -> None:
    icpt = Intercept(target_ip="100.65.0.10", port_map={80: 7070, 53: 7071}, protocols=("TCP",))
    svc_rules = [
        r for r in rules(team(services=(svc(("100.65.16.5",), icpt),))) if r["chain"] == "services"
    ]
    tcp, udp = svc_rules
    assert tcp["expr"][-1] == {"dnat": {"addr": "100.65.0.10", "port": 7070}}  # type: ignore[index]
    assert udp["expr"][-1] == {"dnat": {"addr": "100.65.16.5", "port": 5353}}  # type: ignore[index]


def test_a_service_without_replicas_is_refused_not_blackholed() -> None:
    forward = [r for r in rules(team(services=(svc(()),))) if r["chain"] == "forward"]
    assert [r["expr"][-1] for r in forward] == [  # type: ignore[index]
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmp", "expr": "port-unreachable"}},
    ]


def test_ruleset_replaces_the_table_in_one_batch_with_dns_and_masquerade() -> None:
    batch = nftables.render_ruleset(team(), wg_ifname="kw-12345678", bridge="kbr0")
    table = {"table": {"family": "ip", "name": "kled"}}
    assert batch[:3] == [{"add": table}, {"delete": table}, {"add": table}]
    comments = [r.get("comment") for r in rules(team())]
    assert comments.count("dns forwarder") == 2
    assert "via mesh" in comments and "hairpin" in comments


def test_wg_dump_is_parsed_with_handshakes() -> None:
    dump = (
        "priv\tPUB\t51820\toff\n"
        f"{KEY}\t(none)\t198.18.0.2:51820\t100.65.0.2/32,100.65.17.0/24\t1795396044\t348\t404\t25\n"
        f"{KEY2}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    status = wireguard.parse_dump(dump)
    assert status.listen_port == 51820 and status.public_key == "PUB"
    live = status.peer(KEY)
    assert live.allowed_ips == ("100.65.0.2/32", "100.65.17.0/24")
    assert live.latest_handshake is not None and live.persistent_keepalive == 25
    idle = status.peer(KEY2)
    assert idle.endpoint is None and idle.allowed_ips == () and not idle.alive()


def test_interface_names_fit_linux_and_differ_per_host() -> None:
    a = wireguard.interface_name("host-1", "acme")
    assert len(a) <= 15 and a.startswith("kw-")
    assert a != wireguard.interface_name("host-2", "acme")
    assert a == wireguard.interface_name("host-1", "acme")


def test_wg_quick_config_is_standard() -> None:
    dev = device.DeviceNetwork(
        team="acme", name="laptop", address="100.65.0.10", block="100.65.0.0/16",
        peers=(Peer(public_key=KEY, endpoint="203.0.113.5:51820",
                    allowed_ips=("100.65.0.0/16",), persistent_keepalive=25),),
        private_key_file="/nonexistent", dns="100.65.0.1:53",
        search_domains=("dev.acme.kled.internal",),
    )  # fmt: skip
    assert device.render_wg_quick(dev, "PRIVATE") == (
        "[Interface]\nPrivateKey = PRIVATE\nAddress = 100.65.0.10/32\n"
        "DNS = 100.65.0.1, dev.acme.kled.internal\n\n"
        f"[Peer]\nPublicKey = {KEY}\nEndpoint = 203.0.113.5:51820\n"
        "AllowedIPs = 100.65.0.0/16\nPersistentKeepalive = 25\n"
    )


def test_wg_quick_config_has_no_dns_line_when_the_dns_is_not_on_port_53() -> None:
    dev = device.DeviceNetwork(
        team="acme", name="laptop", address="100.65.0.10", block="100.65.0.0/16",
        peers=(), private_key_file="/nonexistent", dns="198.18.0.1:5353",
        search_domains=("acme.kled.internal",),
    )  # fmt: skip
    text = device.render_wg_quick(dev, "PRIVATE")
    # wg-quick would hand resolvconf 198.18.0.1, which answers nothing on port 53: every
    # name of the machine would stop resolving while the tunnel is up.
    assert "DNS =" not in text
    assert "# no DNS line: the team's DNS server is at 198.18.0.1:5353" in text
    assert "--dns-listen ADDRESS:53" in text
    assert device.dns_host_port("[fd00::1]:53") == ("fd00::1", 53)
    assert device.dns_host_port("100.65.0.1") == ("100.65.0.1", 53)


async def test_resolver_fallback_tells_the_user_what_to_do() -> None:
    setup = await device.configure_resolver("kd-1", "100.65.0.1:5353", ["acme.kled.internal"],
                                            netns="somewhere")  # fmt: skip
    assert not setup.applied
    assert "server=/acme.kled.internal/100.65.0.1#5353" in setup.message


def test_pod_resolv_conf_searches_environment_then_team() -> None:
    text = pods.resolv_conf("100.65.16.1", "dev.acme.kled.internal")
    assert text.splitlines()[:2] == [
        "nameserver 100.65.16.1",
        "search dev.acme.kled.internal acme.kled.internal",
    ]

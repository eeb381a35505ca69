"""The nftables rules of a team gateway: service DNAT, intercepts, DNS and masquerade.

One table per team gateway (``ip kled``, inside the team's namespace), rendered from the
team's desired state as ``nft -j`` JSON by the pure function ``render_ruleset`` and applied
by ``apply`` as a single nft transaction that deletes and recreates the whole table. The
kernel swaps the table atomically, so a change of backends or an intercept never leaves a
moment without rules; established connections keep their conntrack NAT mapping.

Rules, like kube-proxy's:

- ``services`` (jumped to from prerouting and output): ``ip daddr SVC proto dport P`` →
  DNAT to one replica pod IP chosen by ``numgen random mod N``, on ``target_port``; or, for
  an intercepted port, DNAT to the device's mesh IP and local port.
- personal intercepts: a TCP service port that some developer intercepts by HTTP header is
  redirected to the gateway's header router (``header_router``, on ``ROUTER_PORT`` of the
  gateway's own address), which picks device or replica per connection; the ``input`` chain
  drops connections to that port that were not redirected, so nobody reaches it directly.
- DNS: queries to the bridge gateway IP on port 53 → DNAT to the team's DNS server.
- postrouting: masquerade DNAT'ed flows that leave through WireGuard (so replies return
  through this gateway whatever the peer's routes) and hairpin flows on the bridge (a pod
  calling a service that lands on a pod of the same bridge).
- forward: a service port with no backends is refused at once (TCP reset / ICMP
  port-unreachable) rather than left to time out.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kled.agent.net import isolation
from kled.agent.net.command import run
from kled.resources.netstate import Service, ServicePort, TeamNetwork

log = logging.getLogger(__name__)

TABLE = "kled"
FAMILY = "ip"
#: where the team gateway's header router listens (in the gateway namespace only)
ROUTER_PORT = 15080

Json = dict[str, Any]


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _daddr(ip: str) -> Json:
    return _match({"payload": {"protocol": "ip", "field": "daddr"}}, ip)


def _l4(protocol: str) -> Json:
    return _match({"meta": {"key": "l4proto"}}, protocol)


def _dport(protocol: str, port: int) -> Json:
    return _match({"payload": {"protocol": protocol, "field": "dport"}}, port)


def _iif(name: str) -> Json:
    return _match({"meta": {"key": "iifname"}}, name)


def _oif(name: str) -> Json:
    return _match({"meta": {"key": "oifname"}}, name)


def _rule(chain: str, expr: list[Json], comment: str | None = None) -> Json:
    body: Json = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    if comment:
        body["comment"] = comment[:128]
    return {"add": {"rule": body}}


def _chain(name: str, hook: str | None = None, kind: str = "nat", prio: int = 0) -> Json:
    body: Json = {"family": FAMILY, "table": TABLE, "name": name}
    if hook:
        body.update({"type": kind, "hook": hook, "prio": prio, "policy": "accept"})
    return {"add": {"chain": body}}


def _dnat_backends(backends: tuple[str, ...], port: int) -> Json:
    if len(backends) == 1:
        return {"dnat": {"addr": backends[0], "port": port}}
    pick = {"numgen": {"mode": "random", "mod": len(backends), "offset": 0}}
    table = {"set": [[i, ip] for i, ip in enumerate(backends)]}
    return {"dnat": {"addr": {"map": {"key": pick, "data": table}}, "port": port}}


def _intercepted(service: Service, port: ServicePort) -> int | None:
    icpt = service.intercept
    if icpt is None or port.protocol not in icpt.protocols:
        return None
    return icpt.port_map.get(port.port)


def _service_rules(service: Service, router_port: int) -> tuple[list[Json], list[Json]]:
    """DNAT rules for the ``services`` chain and refusals for the ``forward`` chain."""
    dnat, refuse = [], []
    who = f"app/{service.env}/{service.name}"
    by_header = {p.port for p in service.personal_ports()}
    for port in service.ports:
        proto = port.protocol.lower()
        match = [_daddr(service.ip), _l4(proto), _dport(proto, port.port)]
        local = _intercepted(service, port)
        if port.port in by_header and proto == "tcp":
            # The router answers on the address the packet came in on (mesh or bridge IP)
            # and learns the service IP:port back from conntrack (SO_ORIGINAL_DST).
            target: Json = {"redirect": {"port": router_port}}
            dnat.append(_rule("services", [*match, target], f"{who} personal intercepts"))
        elif local is not None and service.intercept is not None:
            target = {"dnat": {"addr": service.intercept.target_ip, "port": local}}
            dnat.append(_rule("services", [*match, target], f"{who} intercepted"))
        elif service.hold and proto == "tcp":
            # May scale to zero: the router counts its connections, and holds them while
            # it has no replica (``header_router``).
            target = {"redirect": {"port": router_port}}
            dnat.append(_rule("services", [*match, target], f"{who} via router (scale to zero)"))
        elif service.backends:
            target = _dnat_backends(service.backends, port.target_port)
            dnat.append(_rule("services", [*match, target], who))
        else:
            kind = {"type": "tcp reset"} if proto == "tcp" else {"type": "icmp"}
            if proto != "tcp":
                kind["expr"] = "port-unreachable"
            refuse.append(_rule("forward", [*match, {"reject": kind}], f"{who} no replicas"))
    return dnat, refuse


def render_ruleset(
    team: TeamNetwork, *, wg_ifname: str, bridge: str, router_port: int = ROUTER_PORT
) -> list[Json]:
    """The whole ``nft -j`` batch that replaces the team's table. Pure."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    cmds: list[Json] = [{"add": table}, {"delete": table}, {"add": table}]
    cmds += [
        _chain("services"),
        _chain("prerouting", "prerouting", prio=-100),
        _chain("output", "output", prio=-100),
        _chain("postrouting", "postrouting", prio=100),
        _chain("forward", "forward", kind="filter", prio=0),
        _chain("input", "input", kind="filter", prio=0),
    ]
    cmds.append(_rule("prerouting", [{"jump": {"target": "services"}}]))
    cmds.append(_rule("output", [{"jump": {"target": "services"}}]))
    if team.dns_server:
        host, _, port = team.dns_server.rpartition(":")
        for proto in ("udp", "tcp"):
            match = [_daddr(team.bridge_ip), _l4(proto), _dport(proto, 53)]
            target = {"dnat": {"addr": host, "port": int(port)}}
            cmds.append(_rule("prerouting", [*match, target], "dns forwarder"))
    refusals: list[Json] = []
    for service in sorted(team.services, key=lambda s: (s.env, s.name)):
        dnat, refuse = _service_rules(service, router_port)
        cmds += dnat
        refusals += refuse
    cmds += refusals
    cmds += isolation.render(team)  # Kled Clusters of the team kept apart
    not_redirected = _match({"&": [{"ct": {"key": "status"}}, "dnat"]}, 0)
    router = [_l4("tcp"), _dport("tcp", router_port), not_redirected, {"drop": None}]
    cmds.append(_rule("input", router, "header router: redirected flows only"))
    dnatted = _match({"ct": {"key": "status"}}, "dnat", op="in")
    cmds.append(_rule("postrouting", [_oif(wg_ifname), dnatted, {"masquerade": None}], "via mesh"))
    cmds.append(
        _rule(
            "postrouting",
            [_iif(bridge), _oif(bridge), dnatted, {"masquerade": None}],
            "hairpin",
        )
    )
    return cmds


async def apply(netns: str | None, ruleset: list[Json]) -> None:
    """Apply a rendered batch as one transaction (all or nothing)."""
    await run(["nft", "-j", "-f", "-"], netns=netns, stdin=json.dumps({"nftables": ruleset}))


async def delete_table(netns: str | None) -> None:
    table = {"table": {"family": FAMILY, "name": TABLE}}
    await apply(netns, [{"add": table}, {"delete": table}])


async def list_table(netns: str | None) -> list[Json]:
    """The table's objects as ``nft -j list table`` reports them (for checks and debugging)."""
    out = await run(["nft", "-j", "list", "table", FAMILY, TABLE], netns=netns)
    items: list[Json] = json.loads(out).get("nftables", [])
    return [i for i in items if "metainfo" not in i]

"""Kled Clusters of one team kept apart on its gateways: nftables rules from pod sets.

A team's pods share its bridges and mesh, so without rules a pod of cluster ``a`` reaches
every pod and ClusterIP of cluster ``b``. Every gateway of the team therefore holds, per
cluster, a set of its pod IPs (on every node) and refuses traffic from any other cluster's
pods to them, in the ``forward`` hook of the ``ip kled`` table: a connection to a pod on
another node, to a ClusterIP or an App's service IP (DNAT'ed in prerouting, so the
destination is already the chosen pod) or to a pod on the same bridge (bridged IPv4 passes
the ``ip`` hooks through ``br_netfilter``, ``bridge-nf-call-iptables=1``, the default where
the module is loaded) is refused at once with ICMP port-unreachable, "connection refused";
unless it was addressed to an exported ClusterIP (``ct original ip daddr`` in the set
``exported``: a Service annotated ``kled.io/export: "true"``).

Kled apps, devices and workspaces of the team are in no cluster's set: they reach every
cluster's pods and Services, and every pod reaches them. Rendering is pure; the rules go
into the gateway's one nft transaction (``nftables.render_ruleset``).
"""

from __future__ import annotations

from typing import Any

from kled.resources.netstate import TeamNetwork

Json = dict[str, Any]
TABLE = "kled"
EXPORTED = "exported"


def _addr(field: str) -> Json:
    return {"payload": {"protocol": "ip", "field": field}}


def _in(left: Json, name: str, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": f"@{name}"}}


def _set(name: str, elements: tuple[str, ...] | list[str]) -> Json:
    body: Json = {"family": "ip", "table": TABLE, "name": name, "type": "ipv4_addr"}
    if elements:
        body["elem"] = list(elements)
    return {"add": {"set": body}}


def _rule(expr: list[Json], comment: str) -> Json:
    body = {"family": "ip", "table": TABLE, "chain": "forward", "expr": expr}
    return {"add": {"rule": {**body, "comment": comment[:128]}}}


def _pairs(team: TeamNetwork) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(cluster, its pods, the pods of every other cluster) for clusters that have both."""
    out = []
    for cluster in team.clusters:
        others = sorted({ip for c in team.clusters if c.name != cluster.name for ip in c.pods})
        if cluster.pods and others:
            out.append((cluster.name, cluster.pods, others))
    return out


def render(team: TeamNetwork) -> list[Json]:
    """Sets and ``forward`` rules of the ``ip kled`` table (which the batch creates whole);
    nothing with fewer than two clusters that have pods."""
    pairs = _pairs(team)
    if not pairs:
        return []
    cmds: list[Json] = [_set(EXPORTED, team.exported)]
    original = {"ct": {"key": "ip daddr", "dir": "original"}}
    # ICMP, not a TCP reset: conntrack translates the error back to the address the caller
    # used (a reset made in forward after the DNAT never reached the caller, measured here)
    refused = {"reject": {"type": "icmp", "expr": "port-unreachable"}}
    for index, (name, pods, others) in enumerate(pairs):
        mine, foreign = f"cluster{index}", f"notcluster{index}"
        cmds += [_set(mine, pods), _set(foreign, others)]
        match = [_in(_addr("daddr"), mine), _in(_addr("saddr"), foreign)]
        who = f"cluster/{name}: other clusters' pods refused"
        cmds.append(_rule([*match, _in(original, EXPORTED, "!="), refused], who))
    return cmds

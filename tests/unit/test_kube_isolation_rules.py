"""Kled Clusters of a team kept apart (pure, no host): which pods belong to which cluster in
each gateway's network, which ClusterIPs are exported, and the nftables rules from them."""

from __future__ import annotations

from typing import Any

from kled.agent.net import isolation, nftables
from kled.control.hostnet import (
    MeshSnapshot,
    NodeAddresses,
    PodAddressBook,
    TeamInfo,
    build_networks,
    snapshot_from_documents,
)
from kled.kube import routing
from kled.resources import clusterservices
from kled.resources.hoststate import ReplicaSpec
from kled.resources.netstate import ClusterPods, HostNetwork, TeamNetwork, diff_host


def _app(name: str, env: str, cluster: str | None, exported: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "team": "acme", "environment": env}
    if cluster:
        meta["labels"] = {clusterservices.CLUSTER_LABEL: cluster}
        deployment = {
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"metadata": {"labels": {"app": name}}}},
        }
        annotations = {"kled.io/export": "true"} if exported else {}
        service = {
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"clusterIP": f"100.65.4.{len(name)}", "selector": {"app": name},
                     "ports": [{"port": 80}]},
        }  # fmt: skip
        picked = routing.routed(cluster, deployment, [service])
        meta["annotations"] = {clusterservices.ANNOTATION: clusterservices.encode(picked)}
    return {"kind": "App", "metadata": meta, "spec": {}, "status": {"ip": "100.65.4.100"}}


def _team(apps: list[dict[str, Any]]) -> TeamNetwork:
    snap = snapshot_from_documents(
        teams=[], nodes=[], services=apps, devices=[], intercepts=[], dns_server=None
    )
    snap.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    snap.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    snap.nodes[("acme", "n2")] = NodeAddresses("100.65.0.2", "100.65.9.0/24")
    replicas = {
        "n1": [ReplicaSpec(team="acme", environment="one-default", app="web", index=0,
                           command=["x"]),
               ReplicaSpec(team="acme", environment="dev", app="plain", index=0, command=["x"])],
        "n2": [ReplicaSpec(team="acme", environment="two-default", app="db", index=0,
                           command=["x"])],
    }  # fmt: skip
    [team] = build_networks(snap, replicas, PodAddressBook())["n1"].teams
    return team


def test_each_gateway_knows_every_clusters_pods_and_the_exported_cluster_ips() -> None:
    team = _team(
        [
            _app("web", "one-default", "one"),
            _app("db", "two-default", "two", exported=True),
            _app("plain", "dev", None),
        ]
    )
    # n1's gateway knows the pod of cluster two on n2 too; a Kled app is in no cluster
    assert team.clusters == (
        ClusterPods(name="one", pods=("100.65.8.11",)),  # the Kled app has .10
        ClusterPods(name="two", pods=("100.65.9.10",)),
    )
    assert team.exported == ("100.65.4.2",)
    assert isinstance(MeshSnapshot().app_clusters, dict)


def test_rules_refuse_other_clusters_pods_unless_addressed_to_an_exported_service() -> None:
    team = _team([_app("web", "one-default", "one"), _app("db", "two-default", "two", True)])
    batch = nftables.render_ruleset(team, wg_ifname="kw-1", bridge="kbr0")
    sets = {
        c["add"]["set"]["name"]: c["add"]["set"].get("elem", [])
        for c in batch
        if "set" in c.get("add", {})
    }
    assert sets["cluster0"] == ["100.65.8.11"] == sets["notcluster1"]
    assert sets["notcluster0"] == ["100.65.9.10"] == sets["cluster1"]
    assert sets["exported"] == ["100.65.4.2"]
    rules = [c["add"]["rule"] for c in batch if "rule" in c.get("add", {})]
    routed = [r for r in rules if r.get("comment", "").startswith("cluster/")]
    assert {(r["family"], r["chain"]) for r in routed} == {("ip", "forward")}
    assert [r["expr"][-1] for r in routed] == [
        {"reject": {"type": "icmp", "expr": "port-unreachable"}}
    ] * 2
    exported_match = {
        "match": {
            "op": "!=",
            "left": {"ct": {"key": "ip daddr", "dir": "original"}},
            "right": "@exported",
        }
    }
    assert all(exported_match in r["expr"] for r in routed)


def test_one_cluster_alone_needs_no_rules_and_old_agents_see_no_new_keys() -> None:
    team = _team([_app("web", "one-default", "one"), _app("plain", "dev", None)])
    assert isolation.render(team) == []
    bare = team.model_copy(update={"clusters": (), "exported": ()})
    assert "clusters" not in bare.model_dump() and "exported" not in bare.model_dump()


def test_a_change_of_cluster_pods_updates_rules_without_rewiring() -> None:
    before = _team([_app("web", "one-default", "one")])
    after = before.model_copy(update={"clusters": (ClusterPods(name="one", pods=()),)})
    [change] = diff_host(HostNetwork(teams=(before,)), HostNetwork(teams=(after,))).teams_changed
    assert (change.rewire, change.services) == (False, True)

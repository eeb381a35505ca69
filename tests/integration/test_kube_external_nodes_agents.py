"""External nodes of a Kled Cluster with real processes: ``kled server``, two ``kled agent``s
(one joined with a node token, one with the cluster's own token from ``kled cluster
node-token``), the CLI and kubectl.

The cluster's Deployment runs on the node that joined for it; the team's Kled app runs on
the other node only, and one pinned to the cluster's node stays Pending with a message
naming it; ``kubectl get nodes`` lists both nodes. Deleting the cluster stops its pods,
drains its node and revokes its token: no agent can join with it again.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hostkit import Hosts, app_doc, eventually, marker, sleepers

from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("hosts")]

TEAM = f"ext-{random.randint(10**5, 10**6)}"  # runs side by side share this host
PODS = marker()
API = marker()


def _deployment(reserved: str) -> dict[str, Any]:
    container = {"name": "web", "image": "busybox", "command": ["sleep", str(PODS)]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                # pinned to the node that joined for the cluster (the other one is eligible)
                "spec": {"nodeSelector": {"kled.io/cluster": reserved}, "containers": [container]},
            },
        },
    }


def test_a_node_joined_for_a_cluster_runs_its_pods_and_no_app_of_the_team(
    tmp_path: Path,
) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    hosts = Hosts(tmp_path, ["--embedded-nats"], TEAM)
    try:
        _scenario(hosts, binary, tmp_path)
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        hosts.close([PODS, API])


def _scenario(hosts: Hosts, binary: Path, tmp_path: Path) -> None:
    hosts.start_team_node("plain", labels="pool=tenants")
    reserved = f"{TEAM}.c1"
    hosts.cli.ok("cluster", "create", "c1", "--node-selector", "pool=tenants")
    config = tmp_path / "c1.kubeconfig"
    hosts.cli.ok("cluster", "kubeconfig", "c1", "--file", str(config))
    token = hosts.cli.ok("node", "token", "create", "--cluster", "c1", "--ttl", "10m").strip()
    assert token.startswith("kledjoin")
    # the agent asks for the label itself too: it is the token's, not the agent's, to give
    extra = ("--server", hosts.url, "--token", token)
    hosts.start_agent("edge", join=False, labels="kled.io/cluster=other.c9", extra=extra)
    eventually(lambda: hosts.node_phase("edge") == "Ready", "node edge Ready")
    node = hosts.api("/api/v1/nodes/edge")
    assert node["metadata"]["labels"] == {"kled.io/cluster": reserved}

    k = Kubectl(binary, config, tmp_path / "kube-home")
    assert sorted(k.ok("get", "nodes", "-o", "name").split()) == ["node/edge", "node/plain"]

    k.ok("apply", "-f", "-", stdin=json.dumps(_deployment(reserved)))

    def running() -> list[dict[str, Any]]:
        pods = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
        return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]

    pods = eventually(lambda: len(running()) == 2 and running(), "the cluster's 2 pods Running")
    assert {p["spec"]["nodeName"] for p in pods} == {"edge"}
    assert len(sleepers(PODS)) == 2

    # the team's own app: every replica on the other node, none on the cluster's
    hosts.apply(app_doc("api", API, replicas=3))
    reps = eventually(lambda: hosts.running("api", 3), "api 3/3 Running")
    assert {r["node"] for r in reps} == {"plain"}
    # pinned to the cluster's node, it stays Pending and says why
    hosts.apply(app_doc("pinned", API, nodeSelector={"kled.io/cluster": reserved}))
    (pending,) = eventually(
        lambda: [r for r in hosts.replicas("pinned") if r.get("message")], "pinned explained"
    )
    assert pending["node"] is None and pending["reason"] == "Unschedulable"
    assert pending["message"] == (
        f"0/2 nodes can take it: edge runs only the pods of Kled Cluster {reserved}"
    )
    # another cluster's pods: on no node of c1 and on no node its own nodeSelector leaves out
    hosts.cli.ok("cluster", "create", "c2", "--node-selector", "pool=gpu")
    config2 = tmp_path / "c2.kubeconfig"
    hosts.cli.ok("cluster", "kubeconfig", "c2", "--file", str(config2))
    k2 = Kubectl(binary, config2, tmp_path / "kube-home2")
    assert k2.ok("get", "nodes", "-o", "name").strip() == ""
    other = _deployment(reserved)
    del other["spec"]["template"]["spec"]["nodeSelector"]
    k2.ok("apply", "-f", "-", stdin=json.dumps(other))
    (waiting, _) = eventually(
        lambda: [r for r in hosts.replicas("web", "c2-default") if r.get("message")], "c2 waits"
    )
    assert waiting["node"] is None and waiting["message"] == (
        f"0/2 nodes can take it: edge runs only the pods of Kled Cluster {reserved}; "
        f"plain not picked by Kled Cluster {TEAM}.c2's nodeSelector pool=gpu"
    )
    pending_pods = json.loads(k2.ok("get", "pods", "-o", "json"))["items"]
    assert all(p["status"].get("phase") != "Running" for p in pending_pods)

    # deleting the cluster: its pods stop, its node is drained, its join token revoked
    hosts.cli.ok("cluster", "delete", "c1")
    eventually(lambda: not sleepers(PODS), "the cluster's pods stopped")
    assert hosts.api("/api/v1/nodes/edge")["spec"]["unschedulable"] is True
    hosts.cli.ok("node", "delete", "edge")
    hosts.kill_agent("edge")
    nodes = hosts.cli.ok("node", "list").splitlines()[1:]
    assert [line.split()[0] for line in nodes] == ["plain"]
    joined = subprocess.run(
        _register(hosts, token), capture_output=True, text=True, env=hosts.cli.env, timeout=60
    )
    assert joined.returncode != 0
    assert "unknown, expired or revoked node token" in joined.stderr + joined.stdout
    assert {r["node"] for r in hosts.running("api", 3) or []} == {"plain"}


def _register(hosts: Hosts, token: str) -> list[str]:
    """An agent that joins with the deleted cluster's token (it exits when refused)."""
    from cli.clikit import KLED

    folder = hosts.root / "edge-again"
    return [str(KLED), "agent", "--name", "edge2", "--data-dir", str(folder),
            "--network", "off", "--server", hosts.url, "--token", token]  # fmt: skip

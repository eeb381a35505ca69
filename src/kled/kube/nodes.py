"""External nodes of a Kled Cluster: machines that join for this cluster alone.

``POST /k8s/{team}/{cluster}/kled/node-token`` (a cluster-admin; ``kled cluster
node-token C``) issues a join token bound to the cluster: a credential of purpose
``join`` of the team named ``cluster:<cluster>:<id>``. An agent registering with it gets
the label ``kled.io/cluster: <team>.<cluster>`` (``kled.resources.clusterservices.
reserved_for``; ``api/hosts.py``), which reserves it: the scheduler places there only the
replicas of that cluster's Apps (``control/scheduling.py``), and the cluster shows it as
one of its Nodes (besides those its ``nodeSelector`` picks); no other cluster does.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from kled.api.service import Service, parse_duration
from kled.resources.clusterservices import CLUSTER_LABEL, reserved_for

PURPOSE = "join"
PREFIX = "cluster:"


def token_name(cluster: str) -> str:
    return f"{PREFIX}{cluster}:{secrets.token_hex(4)}"


async def issue(svc: Service, team: str, cluster: str, ttl: str | None) -> dict[str, Any]:
    """A join token for a node of ``cluster`` only."""
    expires = datetime.now(UTC) + parse_duration(str(ttl or "1h"), "ttl")
    token = await svc.credentials.issue(
        purpose=PURPOSE,
        team=team,
        name=token_name(cluster),
        username="node",
        expires_at=expires,
        prefix="kledjoin",
    )
    return {
        "token": token,
        "cluster": cluster,
        "expiresAt": expires.isoformat().replace("+00:00", "Z"),
    }


def shown(node: dict[str, Any], team: str, cluster: str, selector: dict[str, str]) -> bool:
    """Whether the cluster shows ``node``: reserved for it, or picked by its selector and
    reserved for no cluster."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    owner = labels.get(CLUSTER_LABEL)
    if owner is not None:
        return bool(owner == reserved_for(team, cluster))
    return all(labels.get(k) == v for k, v in selector.items())

"""Per-node NATS credentials and the permissions that fence each node in.

A node may read only its own desired-state key (a direct get of that key, and a
consumer filtered to it, which is all a watch needs), its own keys of the peers bucket
(a consumer filtered to ``<node>.>``), and publish only its own status,
heartbeat, event and log subjects. It receives replies only on its own inbox prefix, and
the frames of exec streams only on its own ``exec.<node>.*.in`` (answering on ``.out``).
The server checks the filter subject of a consumer-create request against the subject
token, which is what makes ``$JS.API.CONSUMER.CREATE.<stream>.*.<filter>`` a real fence.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from kled.bus.subjects import Subjects, check_node_name


@dataclass(frozen=True)
class NodeCredentials:
    node: str
    user: str
    password: str


def new_node_credentials(node: str) -> NodeCredentials:
    check_node_name(node)
    return NodeCredentials(node=node, user=f"node-{node}", password=secrets.token_urlsafe(24))


def node_permissions(subjects: Subjects, node: str) -> dict[str, Any]:
    """The nats-server ``permissions`` block of one node's user."""
    check_node_name(node)
    stream = subjects.desired_stream
    peers = subjects.peers_stream
    inbox = subjects.inbox(node)
    return {
        "publish": {
            "allow": [
                subjects.status(node),
                subjects.heartbeat(node),
                subjects.events(node),
                f"{subjects.logs(node, '>')}",
                f"$JS.API.STREAM.INFO.{stream}",
                f"$JS.API.DIRECT.GET.{stream}.{subjects.desired_subject(node)}",
                f"$JS.API.CONSUMER.CREATE.{stream}.*.{subjects.desired_subject(node)}",
                f"$JS.API.CONSUMER.CREATE.{peers}.*.{subjects.peers_filter(node)}",
                # flow-control replies of the watch consumers
                f"$JS.FC.{stream}.>",
                f"$JS.FC.{peers}.>",
                # frames of its exec streams back to the control plane (never over JetStream)
                subjects.exec_out(node, "*"),
            ]
        },
        "subscribe": {"allow": [f"{inbox}.>", subjects.exec_listen(node)]},
    }


def control_plane_permissions() -> dict[str, Any]:
    """The control plane may do anything in its account."""
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}

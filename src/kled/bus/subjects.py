"""Names of every subject, stream, bucket and consumer the Message Office uses.

One place so that the office, the per-node permissions and the documentation
(docs/message-office.md) agree. A ``prefix`` lets several Kled installations, or test runs,
share one NATS account without seeing each other's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kled.errors import InvalidInput

_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_PREFIX = re.compile(r"^[a-z0-9-]*\Z")


def check_node_name(node: str) -> str:
    """A node name is one subject token and one KV key: DNS-label characters only."""
    if not _NODE_NAME.match(node):
        raise InvalidInput(
            f"node name {node!r} must be lowercase letters, digits and '-' (max 63)",
            field="name",
        )
    return node


@dataclass(frozen=True)
class Subjects:
    """The naming scheme; ``Subjects()`` is production, ``Subjects("t1234-")`` a test run."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise InvalidInput("prefix: lowercase letters, digits and '-' only", field="prefix")

    # -- buckets and streams ---------------------------------------------------------------
    @property
    def desired_bucket(self) -> str:
        return f"{self.prefix}kled-desired"

    @property
    def desired_stream(self) -> str:
        """The stream behind the KV bucket (JetStream names it KV_<bucket>)."""
        return f"KV_{self.desired_bucket}"

    def desired_subject(self, node: str) -> str:
        return f"$KV.{self.desired_bucket}.{node}"

    @property
    def peers_bucket(self) -> str:
        """One key per (recipient node, team, peer): ``<node>.<team>.<kind>-<name>``."""
        return f"{self.prefix}kled-peers"

    @property
    def peers_stream(self) -> str:
        return f"KV_{self.peers_bucket}"

    def peer_subject(self, key: str) -> str:
        return f"$KV.{self.peers_bucket}.{key}"

    def peers_filter(self, node: str) -> str:
        """Every peer key of one recipient node."""
        return f"$KV.{self.peers_bucket}.{node}.>"

    @property
    def _token(self) -> str:
        return self.prefix.replace("-", "_").upper()

    @property
    def status_stream(self) -> str:
        return f"{self._token}KLED_STATUS"

    @property
    def logs_stream(self) -> str:
        return f"{self._token}KLED_LOGS"

    @property
    def _root(self) -> str:
        # a prefix becomes its own first token, so that wildcards never cross installations
        return f"{self.prefix.rstrip('-')}.kled" if self.prefix else "kled"

    # -- subjects ----------------------------------------------------------------------------
    def status(self, node: str) -> str:
        return f"{self._root}.status.{node}"

    def heartbeat(self, node: str) -> str:
        return f"{self._root}.heartbeat.{node}"

    def events(self, node: str) -> str:
        return f"{self._root}.events.{node}"

    def logs(self, node: str, replica_id: str) -> str:
        return f"{self._root}.logs.{node}.{replica_id}"

    def logs_filter(self, replica_id_prefix: str) -> str:
        """All log subjects of a replica (``t.e.a.0``), an app (``t.e.a``) or a team (``t``)."""
        tokens = [t for t in replica_id_prefix.split(".") if t]
        if not tokens or any(t in ("*", ">") for t in tokens):
            raise InvalidInput("a replica id or prefix like team.env.app", field="replica")
        tail = ".".join(tokens)
        if len(tokens) < 4:
            tail += ".>"
        return f"{self._root}.logs.*.{tail}"

    def exec_in(self, node: str, session: str) -> str:
        """Frames of one exec stream from the control plane to the agent of ``node``."""
        return f"{self._root}.exec.{node}.{session}.in"

    def exec_out(self, node: str, session: str) -> str:
        """Frames of one exec stream from the agent of ``node`` back to the control plane."""
        return f"{self._root}.exec.{node}.{session}.out"

    def exec_listen(self, node: str) -> str:
        """What the agent of ``node`` subscribes to: the inbound frames of all its streams."""
        return f"{self._root}.exec.{node}.*.in"

    @property
    def status_subjects(self) -> list[str]:
        return [self.status("*"), self.heartbeat("*"), self.events("*")]

    @property
    def logs_subjects(self) -> list[str]:
        return [f"{self._root}.logs.>"]

    def inbox(self, node: str | None) -> str:
        """Per-node reply inbox, so a node cannot listen to replies meant for others."""
        return f"_INBOX_{self._token}{node}" if node else "_INBOX"

    def kind_of(self, subject: str) -> str:
        """``status`` / ``heartbeat`` / ``events`` for a subject of the status stream."""
        rest = subject[len(self._root) + 1 :]
        return rest.split(".", 1)[0]

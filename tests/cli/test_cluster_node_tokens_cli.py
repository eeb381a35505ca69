"""``kled cluster node-token C`` and ``kled node token create --cluster C``: join tokens for a
Kled Cluster's external nodes, printed alone on stdout; a cluster that does not exist is a
one-line error."""

from __future__ import annotations

from clikit import Cli


def test_cluster_join_tokens_are_printed_alone(admin: Cli) -> None:
    admin.ok("team", "create", "kn-a")
    admin.ok("cluster", "create", "dev", "--team", "kn-a")
    first = admin("cluster", "node-token", "dev", "--team", "kn-a", "--ttl", "10m")
    assert first.code == 0 and first.out.startswith("kledjoin") and "\n" not in first.out.strip()
    assert "expires" in first.err
    second = admin.ok("node", "token", "create", "--cluster", "dev", "--team", "kn-a")
    assert second.startswith("kledjoin") and second.strip() != first.out.strip()
    missing = admin("cluster", "node-token", "nope", "--team", "kn-a")
    assert missing.code == 1 and "not found" in missing.err
    assert len(missing.err.strip().splitlines()) == 1

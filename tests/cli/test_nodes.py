"""``kled node …`` against a real control plane (no agents: nodes applied as documents)."""

from __future__ import annotations

import yaml
from clikit import Cli

from kled.cli.output import cpu_text, memory_text
from servers import RunningServer


def _node(name: str, **spec: object) -> str:
    doc = {"apiVersion": "kled.io/v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc)


def test_token_create_prints_the_token_alone(admin: Cli) -> None:
    result = admin("node", "token", "create", "--ttl", "30m")
    assert result.code == 0
    assert result.out.count("\n") == 1 and result.out.startswith("kledjoin_")
    assert "expires at" in result.err
    bad = admin("node", "token", "create", "--ttl", "soon")
    assert bad.code == 2 and "ttl" in bad.err


def test_a_member_may_not_create_node_tokens(admin: Cli, cli: Cli, server: RunningServer) -> None:
    admin.ok("team", "create", "nodes-member")
    admin.ok("user", "create", "dev", "--team", "nodes-member")
    token = admin.ok("token", "create", "--team", "nodes-member", "--user", "dev").strip()
    member = Cli(cli.home / "member")
    member.ok("login", "--server", server.url, "--token", token)
    refused = member("node", "token", "create")
    assert refused.code == 1
    assert refused.err.strip() == ("error: only the server administrator may create node tokens")


def test_list_describe_drain_uncordon_delete(admin: Cli) -> None:
    admin.ok("apply", "-f", "-", stdin=_node("cli-n1", capacity={"cpu": "4", "memory": "8Gi"}))
    table = admin.ok("node", "list").splitlines()
    assert table[0].split() == [
        "NAME", "STATUS", "AGE", "CPU", "MEMORY", "CAPABILITIES", "LABELS"
    ]  # fmt: skip
    row = next(line.split() for line in table if line.startswith("cli-n1 "))
    assert row[1] == "NotReady"

    page = admin.ok("node", "describe", "cli-n1")
    assert page.splitlines()[0] == "Name:           cli-n1"
    assert "Replicas:       <none>" in page

    assert admin.ok("node", "drain", "cli-n1").strip() == "node/cli-n1 drained"
    assert admin.ok("node", "drain", "cli-n1").strip() == "node/cli-n1 already drained"
    assert "NotReady,SchedulingDisabled" in admin.ok("node", "list")
    assert admin.ok("node", "uncordon", "cli-n1").strip() == "node/cli-n1 uncordoned"
    assert admin.ok("node", "delete", "cli-n1").strip() == "node/cli-n1 deleted"
    for verb in ("describe", "drain", "delete"):
        gone = admin("node", verb, "cli-n1")
        assert gone.code == 1
        assert gone.err.strip() == "error: node/cli-n1 not found: see `kled node list`"


def test_app_commands_need_an_app(admin: Cli) -> None:
    admin.ok("team", "create", "nodes-apps")
    admin.ok("env", "create", "dev", "--team", "nodes-apps")
    missing = admin("app", "scale", "nope", "2", "-e", "dev", "--team", "nodes-apps")
    assert missing.code == 1
    assert missing.err.strip() == "error: app/nope not found in nodes-apps/dev: see `kled get apps`"
    no_env = admin("logs", "nope", "--team", "nodes-apps")
    assert no_env.code == 2 and "no environment" in no_env.err


def test_capacity_is_shown_as_people_read_it() -> None:
    assert cpu_text(2000) == "2" and cpu_text(500) == "500m" and cpu_text(None) == "-"
    assert memory_text(8 * 1024**3) == "8.0Gi" and memory_text(300 * 1024**2) == "300Mi"

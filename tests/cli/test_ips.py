"""``kled ip list``: who holds which address, as a team member and the administrator see it."""

from __future__ import annotations

import json
import time

from clikit import Cli

from servers import RunningServer


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def _listed(cli: Cli, *args: str, want: int) -> list[list[str]]:
    """The table once the mesh controller has given out ``want`` addresses (it works in the
    background after the resources are stored)."""
    rows: list[list[str]] = []
    for _ in range(300):
        rows = _rows(cli.ok("ip", "list", *args))
        if len(rows) - 1 >= want:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"kled ip list {' '.join(args)} showed {rows}")


KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def test_ip_list_shows_pool_address_owner_team(admin: Cli) -> None:
    admin.ok("team", "create", "ip-one")
    admin.ok("team", "create", "ip-two")
    device = {
        "apiVersion": "kled.io/v1",
        "kind": "Device",
        "metadata": {"name": "laptop", "team": "ip-one"},
        "spec": {"owner": "admin", "publicKey": KEY},
    }
    admin.ok("apply", "-f", "-", stdin=json.dumps(device))

    rows = _listed(admin, "--team", "ip-one", want=2)
    assert rows[0] == ["POOL", "ADDRESS", "OWNER", "TEAM"]
    by_pool = {r[0]: r for r in rows[1:]}
    block = by_pool["block"]
    assert block[2:] == ["Team/ip-one", "ip-one"] and block[1].startswith("100.")
    laptop = by_pool["mesh"]
    assert laptop[2:] == ["Device/laptop", "ip-one"]
    assert laptop[1].rsplit(".", 1)[0] == block[1].split("/")[0].rsplit(".", 2)[0] + ".0"
    assert all(r[3] == "ip-one" for r in rows[1:])  # another team's addresses stay out

    as_json = json.loads(admin.ok("ip", "list", "--team", "ip-one", "-o", "json"))
    assert as_json["kind"] == "List"
    assert {(i["pool"], i["owner"]) for i in as_json["items"]} >= {
        ("block", "Team/ip-one"),
        ("mesh", "Device/laptop"),
    }

    everything = _listed(admin, "-A", want=3)
    assert {"ip-one", "ip-two"} <= {r[3] for r in everything[1:]}


def test_ip_list_errors_are_one_line(admin: Cli) -> None:
    admin.ok("team", "create", "ip-three")
    bad = admin("ip", "list", "--team", "ip-three", "-o", "wide")
    assert bad.code == 2 and bad.err.startswith("error: --output: unknown output format 'wide'")
    both = admin("ip", "list", "--team", "ip-three", "-A")
    assert both.code == 2 and "either --team or -A" in both.err
    missing = admin("ip", "list", "--team", "no-such-team")
    assert missing.code == 1 and missing.err.startswith("error:")


def test_a_member_lists_their_team_but_not_every_team(admin: Cli, server: RunningServer) -> None:
    admin.ok("team", "create", "ip-four")
    admin.ok("user", "create", "gina", "--team", "ip-four")
    token = admin.ok("token", "create", "--user", "gina", "--team", "ip-four").strip()
    gina = Cli(admin.home / "gina")
    gina.ok("login", "--server", server.url, "--token", token)
    rows = _listed(gina, want=1)  # the context's team
    assert rows[1][0] == "block" and rows[1][2:] == ["Team/ip-four", "ip-four"]
    refused = gina("ip", "list", "-A")
    assert refused.code == 1
    assert refused.err.strip() == (
        "error: only the server administrator may list every team's addresses"
    )

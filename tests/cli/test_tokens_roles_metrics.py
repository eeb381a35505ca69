"""What a user sees of issue 10's roles, token and metrics fixes, through ``kled``.

An admin cannot borrow an owner's role with a token, a team keeps its last owner, a
Token's revocation cannot be undone by ``kled apply`` and ``kled token list`` tells the
truth; ``kled token create --metrics`` makes a token for a Prometheus scraper.
"""

from __future__ import annotations

import httpx
from clikit import Cli

from servers import RunningServer


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def _login(admin: Cli, server: RunningServer, team: str, user: str) -> Cli:
    token = admin.ok("token", "create", f"{user}-cli", "--user", user, "--team", team).strip()
    cli = Cli(admin.home / user)
    cli.ok("login", "--server", server.url, "--token", token)
    return cli


def test_an_admin_cannot_act_above_their_role(admin: Cli, server: RunningServer) -> None:
    admin.ok("team", "create", "ceil")
    admin.ok("user", "create", "olga", "--role", "owner", "--team", "ceil")
    admin.ok("user", "create", "adam", "--role", "admin", "--team", "ceil")
    adam = _login(admin, server, "ceil", "adam")

    borrowed = adam("token", "create", "borrowed", "--user", "olga")
    assert borrowed.code == 1 and borrowed.out == ""
    assert borrowed.err == (
        "error: role admin may not issue tokens for user olga: its role owner is above yours\n"
    )
    gone = adam("delete", "user", "olga")
    assert gone.code == 1
    assert gone.err == "error: role admin may not delete user olga: its role owner is above yours\n"

    olga = _login(admin, server, "ceil", "olga")
    last = olga("delete", "user", "olga")
    assert last.code == 1
    assert last.err == (
        "error: user olga is the last owner of team ceil and cannot be deleted: "
        "make another user owner first\n"
    )


def test_token_list_tells_the_truth(admin: Cli) -> None:
    admin.ok("team", "create", "truth")
    admin.ok("user", "create", "mia", "--team", "truth")
    admin.ok("token", "create", "mia-laptop", "--user", "mia", "--team", "truth")
    admin.ok("token", "revoke", "mia-laptop", "--team", "truth")

    # Applying the token back to life is refused, in one line naming the field.
    revive = admin.home / "revive.yaml"
    revive.write_text(
        "kind: Token\nmetadata: {name: mia-laptop, team: truth}\n"
        "spec: {user: mia, revoked: false}\n"
    )
    again = admin("apply", "-f", str(revive))
    assert again.code == 2
    assert again.err == (
        "error: spec.revoked: a revoked token stays revoked: create a new one (kled token create)\n"
    )

    # A deleted user's tokens stop working; the list says so.
    admin.ok("token", "create", "mia-ci", "--user", "mia", "--team", "truth")
    admin.ok("delete", "user", "mia", "--team", "truth")
    listed = {row[0]: row for row in _rows(admin.ok("token", "list", "--team", "truth"))[1:]}
    assert listed["mia-laptop"][3] == "true"
    assert listed["mia-ci"][3] == "true"


def test_a_metrics_token_for_a_scraper(admin: Cli, server: RunningServer) -> None:
    created = admin("token", "create", "prom", "--metrics", "--ttl", "30d")
    assert created.code == 0, created
    token = created.out.strip()
    assert token.startswith("kled_") and "\n" not in token
    assert "metrics token prom created (reads /metrics only)" in created.err

    rows = _rows(admin.ok("token", "list", "--metrics"))
    assert rows[0] == ["NAME", "EXPIRES", "REVOKED", "AGE"]
    assert [(r[0], r[2]) for r in rows[1:]] == [("prom", "false")]

    scrape = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scrape.status_code == 200 and "kled_api_requests_total" in scrape.text
    assert httpx.get(server.url + "/metrics").status_code == 401

    assert admin.ok("token", "revoke", "prom", "--metrics").strip() == "metrics token prom revoked"
    scrape = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scrape.status_code == 401

    mixed = admin("token", "create", "x", "--metrics", "--user", "bob")
    assert mixed.code == 2
    assert mixed.err == "error: a metrics token has no --user or --description\n"

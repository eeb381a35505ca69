"""Teams, users and tokens, managed from the command line by the people who may."""

from __future__ import annotations

from clikit import Cli

from servers import RunningServer


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_team_create_list_delete(admin: Cli) -> None:
    assert admin.ok("team", "create", "tu-alpha").strip() == "team/tu-alpha created"
    again = admin("team", "create", "tu-alpha")
    assert again.code == 1 and "already exists" in again.err
    bad = admin("team", "create", "Not_A_Label")
    assert bad.code == 2 and bad.err.startswith("error: metadata.name")
    names = [row[0] for row in _rows(admin.ok("team", "list"))]
    assert names[0] == "NAME" and "tu-alpha" in names
    assert admin.ok("team", "delete", "tu-alpha").strip() == "team/tu-alpha deleted"
    assert "tu-alpha" not in admin.ok("team", "list", "-o", "name")


def test_users_and_tokens_and_a_revoked_token(admin: Cli, server: RunningServer) -> None:
    admin.ok("team", "create", "tu-beta")
    out = admin.ok(
        "user",
        "create",
        "carol",
        "--role",
        "admin",
        "--email",
        "c@example.org",
        "--team",
        "tu-beta",
    )
    assert out.strip() == "user/carol created (admin in team tu-beta)"
    admin.ok("user", "create", "dave", "--team", "tu-beta")
    wrong_role = admin("user", "create", "erin", "--role", "boss", "--team", "tu-beta")
    assert wrong_role.code == 2 and "spec.role" in wrong_role.err
    users = _rows(admin.ok("user", "list", "--team", "tu-beta", "-o", "wide"))
    assert users[0] == ["NAME", "ROLE", "AGE", "EMAIL"]
    assert [(u[0], u[1], u[3]) for u in users[1:]] == [
        ("carol", "admin", "c@example.org"),
        ("dave", "member", "-"),
    ]

    # The token alone on stdout, so that scripts can capture it.
    created = admin(
        "token", "create", "dave-laptop", "--user", "dave", "--ttl", "24h", "--team", "tu-beta"
    )
    assert created.code == 0, created
    token = created.out.strip()
    assert token.startswith("kled_") and "\n" not in token
    assert "shown only once" in created.err

    # Dave logs in with it; his team becomes the context's team.
    dave = Cli(admin.home / "dave")
    out = dave.ok("login", "--server", server.url, "--token", token)
    assert "as dave (member, team tu-beta)" in out
    tokens = _rows(dave.ok("token", "list"))
    assert tokens[0] == ["NAME", "USER", "EXPIRES", "REVOKED", "AGE"]
    assert tokens[1][0:2] == ["dave-laptop", "dave"] and tokens[1][3] == "false"
    assert tokens[1][2].endswith("Z")  # an expiry, from --ttl
    no_admin = dave("user", "create", "frank")
    assert no_admin.code == 1
    assert no_admin.err.strip() == "error: role member in team tu-beta may not create users"

    assert admin.ok("token", "revoke", "dave-laptop", "--team", "tu-beta").strip() == (
        "token/dave-laptop revoked"
    )
    listed = _rows(admin.ok("token", "list", "--team", "tu-beta"))
    assert listed[1][0] == "dave-laptop" and listed[1][3] == "true"
    refused = dave("get", "apps")
    assert refused.code == 1
    assert refused.err.startswith("error: missing, unknown, expired or revoked token")
    assert refused.err.count("\n") == 1 and "Traceback" not in refused.err

"""``kled apply`` and ``kled service`` on managed services, against a real control plane
without agents: bad input refused in one line naming the field, nothing stored; the
controller's server app and credentials Secret appear for a good service and go with it;
the built-in templates are readable and an admin-stored template is used."""

from __future__ import annotations

import pytest
from clikit import Cli, wait_for


def _apply(cli: Cli, team: str, body: str) -> tuple[int, str, str]:
    doc = f"apiVersion: kled.io/v1\nkind: ManagedService\n{body}"
    done = cli("apply", "-f", "-", "-e", "dev", "--team", team, stdin=doc)
    return done.code, done.out, done.err


@pytest.fixture
def team(admin: Cli, request: pytest.FixtureRequest) -> str:
    name = "ms-" + str(abs(hash(request.node.name)) % 10**6)
    admin.ok("team", "create", name)
    admin.ok("env", "create", "dev", "--team", name)
    return name


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("metadata: {name: db}\nspec: {template: nope}", "spec.template", "no service template"),
        ("metadata: {name: db}\nspec: {template: postgres, parameters: {fsync: false}}",
         "spec.parameters.fsync", "has no parameter 'fsync'"),
        ("metadata: {name: db}\nspec: {template: postgres, parameters: {max_connections: 1}}",
         "spec.parameters.max_connections", "must be at least 5"),
        ("metadata: {name: db}\nspec: {template: redis, parameters: {maxmemory-policy: lots}}",
         "spec.parameters.maxmemory-policy", "must be one of noeviction"),
        ("metadata: {name: db}\nspec: {template: postgres, version: 9}", "spec.version",
         "provides version 15, not 9"),
    ],
)  # fmt: skip
def test_bad_service_refused_with_field_path(
    admin: Cli, team: str, body: str, field: str, words: str
) -> None:
    code, _, err = _apply(admin, team, body)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and words in lines[0], err
    assert "No managed services" in admin.ok("service", "list", "-e", "dev", "--team", team)


def test_service_gets_server_app_and_secret_and_both_go_with_it(admin: Cli, team: str) -> None:
    code, _, err = _apply(admin, team, "metadata: {name: db}\nspec: {template: postgres}")
    assert code == 0, err
    # No agent here: the server app waits for a node, the service says so.
    wait_for(lambda: "ms-db" in admin.ok("get", "apps", "-e", "dev", "--team", team))
    app = admin.ok("get", "app", "ms-db", "-e", "dev", "--team", team, "-o", "yaml")
    assert "kled.agent.servicerun" in app and "kled.io/managed-service: db" in app
    listed = admin.ok("service", "list", "-e", "dev", "--team", team)
    assert "db" in listed and "postgres" in listed
    described = admin.ok("service", "describe", "db", "-e", "dev", "--team", team)
    assert "Template:   postgres 15" in described
    # backup needs a running server: a one-line refusal, exit 1
    done = admin("service", "backup", "db", "-e", "dev", "--team", team)
    assert done.code == 1 and "its server must run" in done.err, done
    admin.ok("service", "delete", "db", "--purge", "-e", "dev", "--team", team)
    wait_for(lambda: "ms-db" not in admin.ok("get", "apps", "-e", "dev", "--team", team))


def test_templates_builtin_and_stored(admin: Cli, team: str) -> None:
    stored = """apiVersion: kled.io/v1
kind: ServiceTemplate
metadata: {name: pg-small}
spec:
  engine: postgres
  package: postgresql
  binDir: /usr/lib/postgresql/15/bin
  versions: ["15"]
  port: 5432
  uri: "postgresql://{user}:{password}@{host}:{port}/{database}"
  env: {DATABASE_URL: uri}
  parameters: {max_connections: {type: integer, default: 10, maximum: 20}}
"""
    admin.ok("apply", "-f", "-", stdin=stored)
    code, _, err = _apply(
        admin, team, "metadata: {name: small}\nspec: {template: pg-small, parameters: "
        "{max_connections: 30}}"
    )  # fmt: skip
    assert code == 2 and "spec.parameters.max_connections: must be at most 20" in err, err
    bad = stored.replace("env: {DATABASE_URL: uri}", "env: {DATABASE_URL: url}")
    done = admin("apply", "-f", "-", stdin=bad.replace("pg-small", "pg-bad"))
    assert done.code == 2 and "spec.env.DATABASE_URL" in done.err, done


def _secret(admin: Cli, team: str, env: str) -> dict[str, str]:
    out = admin.ok("secret", "get", "db", "--reveal", "-e", env, "--team", team)
    return dict(line.split("=", 1) for line in out.strip().splitlines() if "=" in line)


def test_env_clone_gives_the_service_its_own_credentials(admin: Cli, team: str) -> None:
    code, _, err = _apply(admin, team, "metadata: {name: db}\nspec: {template: postgres}")
    assert code == 0, err
    wait_for(lambda: admin("secret", "get", "db", "-e", "dev", "--team", team).code == 0)
    source = _secret(admin, team, "dev")
    assert source["DATABASE_URL"].startswith("postgresql://app:")
    admin.ok("env", "clone", "dev", "qa", "--team", team)

    def cloned() -> bool:
        done = admin("secret", "get", "db", "--reveal", "-e", "qa", "--team", team)
        return done.code == 0 and "db.qa." in done.out

    wait_for(cloned)
    copy = _secret(admin, team, "qa")
    assert copy["password"] != source["password"]
    assert "@db.qa." in copy["uri"]
    app = admin.ok("get", "app", "ms-db", "-e", "qa", "--team", team, "-o", "yaml")
    data_dirs = {line for line in app.splitlines() if "/data/" in line}
    assert data_dirs and all(".qa.db-" in line for line in data_dirs), data_dirs


def test_env_clone_with_data_without_a_backup_is_refused_and_stores_nothing(
    admin: Cli, team: str
) -> None:
    code, _, err = _apply(admin, team, "metadata: {name: db}\nspec: {template: postgres}")
    assert code == 0, err
    done = admin("env", "clone", "dev", "qa", "--with-data", "--team", team)
    assert done.code == 2, done
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and "withData" in lines[0] and "has no backup" in lines[0], done.err
    listed = admin.ok("env", "list", "--team", team).split()
    assert "dev" in listed and "qa" not in listed

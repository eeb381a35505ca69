"""Logging in, contexts, the socket and TCP, and what a user sees when it goes wrong."""

from __future__ import annotations

import stat

import yaml
from clikit import Cli, free_port

from servers import RunningServer


def test_login_over_tcp_saves_a_private_context(cli: Cli, server: RunningServer) -> None:
    out = cli.ok("login", "--server", server.url, "--token", server.admin_token)
    assert "as admin (server administrator)" in out
    config = yaml.safe_load(cli.config.read_text())
    name = server.url.removeprefix("http://")
    assert config["current-context"] == name
    assert config["contexts"] == [{"name": name, "server": server.url, "token": server.admin_token}]
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert cli.ok("context", "current").strip() == name
    assert cli.ok("team", "list").startswith(("NAME", "")) is True


def test_login_over_the_socket_when_the_server_is_local(cli: Cli, server: RunningServer) -> None:
    # Nothing listens on this TCP port: only the socket can carry these requests.
    dead = f"http://127.0.0.1:{free_port()}"
    sock = str(server.settings.socket_path())
    cli.ok(
        "login",
        "--server",
        dead,
        "--token",
        server.admin_token,
        "--socket",
        sock,
        "--name",
        "local",
    )
    cli.ok("team", "create", "ctx-socket")
    assert "ctx-socket" in cli.ok("team", "list")
    # The same context without its socket goes to the dead TCP port and says so.
    config = yaml.safe_load(cli.config.read_text())
    assert config["contexts"][0]["socket"] == sock
    del config["contexts"][0]["socket"]
    cli.config.write_text(yaml.safe_dump(config))
    result = cli("team", "list")
    assert result.code == 1
    assert result.err.strip() == (
        f"error: cannot reach the Kled server at {dead}: connection refused — "
        "is `kled server` running?"
    )
    assert "Traceback" not in result.err


def test_contexts_list_use_delete_and_logout(cli: Cli, server: RunningServer) -> None:
    token = server.admin_token
    cli.ok("login", "--server", server.url, "--token", token, "--name", "one", "--team", "t1")
    cli.ok("login", "--server", server.url, "--token", token, "--name", "two")
    listing = cli.ok("context", "list").splitlines()
    assert listing[0].split()[:4] == ["CURRENT", "NAME", "SERVER", "TEAM"]
    assert [line.split()[:2] for line in listing[1:]] == [["one", server.url], ["*", "two"]]
    cli.ok("context", "use", "one")
    assert cli.ok("context", "current").strip() == "one"
    missing = cli("context", "use", "three")
    assert missing.code == 1 and "no context named 'three'" in missing.err
    cli.ok("context", "set", "--env", "dev")
    config = yaml.safe_load(cli.config.read_text())
    assert config["contexts"][0] == {
        "name": "one",
        "server": server.url,
        "token": token,
        "team": "t1",
        "environment": "dev",
    }
    cli.ok("context", "delete", "two")
    cli.ok("logout")
    assert yaml.safe_load(cli.config.read_text())["contexts"] == []
    result = cli("team", "list")
    assert result.code == 2
    assert "no server to talk to" in result.err


def test_environment_variables_override_the_context(cli: Cli, server: RunningServer) -> None:
    cli.ok("login", "--server", server.url, "--token", server.admin_token)
    result = cli("team", "list", env={"KLED_TOKEN": "kled_not_a_token"})
    assert result.code == 1
    assert "revoked token" in result.err
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("team", "list", env={"KLED_SERVER": dead})
    assert result.code == 1 and f"cannot reach the Kled server at {dead}" in result.err


def test_login_with_a_bad_token_saves_nothing(cli: Cli, server: RunningServer) -> None:
    result = cli("login", "--server", server.url, "--token", "kled_nope")
    assert result.code == 1
    assert result.err.startswith("error: missing, unknown, expired or revoked token")
    assert not cli.config.exists()


def test_bad_flags_and_version(cli: Cli) -> None:
    result = cli("get", "apps", "--no-such-flag")
    assert result.code == 2
    assert result.err.strip() == "error: No such option: --no-such-flag (see `kled get --help`)"
    unknown = cli("--server", "http://127.0.0.1:1", "--token", "x", "get", "gizmos")
    assert unknown.code == 2 and "unknown resource type 'gizmos'" in unknown.err
    assert cli.ok("version").strip().startswith("kled ")
    assert "Usage" in cli.ok("--help")
    completion = cli("--show-completion", env={"SHELL": "/bin/bash"})
    assert completion.code == 0 and "_KLED_COMPLETE" in completion.out

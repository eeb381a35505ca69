"""What a new user ran into following the README (issue 10), as they would see it.

Bare ``kled`` prints its help once, without ``<bool>`` on flags; ``kled device config``
never creates a device; a token can come from a file or ``KLED_TOKEN`` rather than the
command line; ``kled up`` keeps its agent's join token out of ``ps`` and starts its agent
again when it dies.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from clikit import Cli, ServerProcess, free_port

from servers import RunningServer


def _person(admin: Cli, server: RunningServer, team: str, name: str, role: str) -> Cli:
    admin.ok("user", "create", name, "--role", role, "--team", team)
    token = admin.ok("token", "create", f"{name}-t", "--user", name, "--team", team).strip()
    person = Cli(admin.home / name)
    person.ok("login", "--server", server.url, "--token", token)
    return person


# ---- help ------------------------------------------------------------------------------


def test_bare_kled_prints_its_help_once_and_flags_show_no_type(cli: Cli) -> None:
    bare = cli()
    assert bare.code == 0, bare
    assert bare.out.count("Usage: kled") == 1, bare.out
    assert "intercept" in bare.out and "device" in bare.out  # the commands, once
    assert "<bool>" not in bare.out
    assert re.search(r"--debug\s+Show tracebacks", bare.out), bare.out
    assert re.search(r"--team\s+-t\s+<str>", bare.out), bare.out  # options keep their type

    group = cli("intercept")
    assert group.code == 0 and group.out.count("Usage: kled intercept") == 1, group
    flags = cli("up", "--help")
    assert flags.code == 0 and "<bool>" not in flags.out, flags


# ---- kled device config ------------------------------------------------------------------


def test_device_config_of_an_unknown_name_creates_nothing(
    admin: Cli, server: RunningServer
) -> None:
    admin.ok("team", "create", "hd-a")
    alice = _person(admin, server, "hd-a", "alice", "member")
    missing = alice("device", "config", "nosuch")
    assert missing.code == 2, missing
    assert missing.out == ""
    lines = missing.err.strip().splitlines()
    assert len(lines) == 1 and "device/nosuch not found in team hd-a" in lines[0], missing
    assert "kled device join nosuch" in lines[0]
    assert "nosuch" not in alice.ok("device", "list")
    assert not (alice.home / ".local" / "share" / "kled" / "devices" / "hd-a").exists()

    # Registered first, the same name gets its file.
    assert "device/phone is registered" in alice.ok("device", "register", "phone")
    assert alice.ok("device", "config", "phone").startswith("[Interface]")


# ---- tokens from a file or the environment ------------------------------------------------


def test_a_token_from_a_file_or_the_environment_works_for_every_command(
    cli: Cli, server: RunningServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(server.admin_token + "\n")
    token_file.chmod(0o600)
    url = ("--server", server.url)

    made = cli(*url, "--token-file", str(token_file), "team", "create", "hd-file")
    assert made.code == 0, made

    def teams(result: object) -> list[str]:
        assert getattr(result, "code", None) == 0, result
        return [line.split()[0] for line in str(getattr(result, "out", "")).splitlines()[1:]]

    assert "hd-file" in teams(cli(*url, "team", "list", env={"KLED_TOKEN": server.admin_token}))
    assert "hd-file" in teams(cli(*url, "team", "list", env={"KLED_TOKEN_FILE": str(token_file)}))
    logged = cli("login", *url, "--token-file", str(token_file), "--name", "filed")
    assert logged.code == 0 and "context 'filed' is current" in logged.out, logged
    assert "hd-file" in teams(cli("team", "list"))

    absent = cli(*url, "--token-file", str(tmp_path / "nope"), "team", "list")
    assert absent.code == 2, absent
    assert absent.err.count("\n") == 1 and "cannot read the token in" in absent.err, absent
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = cli(*url, "--token-file", str(empty), "team", "list")
    assert blank.code == 2 and "holds no token" in blank.err, blank


def test_agent_takes_its_join_token_from_a_file(cli: Cli, tmp_path: Path) -> None:
    missing = cli(
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        str(tmp_path / "absent"),
        "--data-dir",
        str(tmp_path / "agent"),
        "--network",
        "off",
    )
    assert missing.code == 2 and "cannot read the join token in" in missing.err, missing
    help_text = cli("agent", "--help").out
    assert "--token-file" in help_text and "KLED_AGENT_TOKEN" in help_text


# ---- kled up and its agent -----------------------------------------------------------------


def _agents(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = p.info["cmdline"] or []
        if "kled.agent" in cmdline and str(data_dir / "agent") in cmdline:
            if p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def _until(check: object, what: str, tries: int = 600) -> None:
    assert callable(check)
    for _ in range(tries):
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.slow
def test_up_hides_the_join_token_and_restarts_a_dead_agent(cli: Cli) -> None:
    port = free_port()
    up = ServerProcess(cli, cli.home / ".local" / "share" / "kled", port)
    up.proc = cli.popen(
        "up", "--listen", f"127.0.0.1:{port}", "--agent-network", "off", "--log-level", "warning"
    )
    lines: list[str] = []
    errors: list[str] = []
    for stream, sink in ((up.proc.stdout, lines), (up.proc.stderr, errors)):
        threading.Thread(target=lambda s=stream, k=sink: k.extend(s or []), daemon=True).start()
    data_dir = up.data_dir
    try:
        _until(lambda: any("Next:" in line for line in lines), "kled up announced itself")
        _until(lambda: len(_agents(data_dir)) == 1, "the local agent started")
        (first,) = _agents(data_dir)
        assert not any(arg.startswith("kledjoin") for arg in first.cmdline()), first.cmdline()
        assert "--token" not in first.cmdline()
        # The tour signals exactly this agent through its pid file, not by a pattern.
        assert (data_dir / "agent.pid").read_text().strip() == str(first.pid)

        def node_ready() -> bool:
            nodes = json.loads(cli.ok("node", "list", "-o", "json"))["items"]
            return any(n.get("status", {}).get("phase") == "Ready" for n in nodes)

        _until(node_ready, "the local node Ready")

        first.kill()
        _until(lambda: any("exited with code" in e for e in errors), "kled up reported it")
        (report,) = [e for e in errors if "exited with code" in e]
        assert f"local agent (pid {first.pid}) exited with code -9 (SIGKILL)" in report, report
        assert "restarting in 1 s" in report

        _until(
            lambda: [p.pid for p in _agents(data_dir)] not in ([], [first.pid]),
            "a new agent started",
        )
        (second,) = _agents(data_dir)
        assert "--token" not in second.cmdline()
        assert (data_dir / "agent.pid").read_text().strip() == str(second.pid)
        # It joined again (with a fresh token, in its environment) and runs.
        _until(
            lambda: (data_dir / "agent.log").read_text().count("agent running") == 2,
            "the new agent running",
        )
        assert up.stop(signal.SIGINT) == 0
        psutil.wait_procs([second], timeout=20)
        assert _agents(data_dir) == []
        assert not (data_dir / "agent.pid").exists()
        assert len([e for e in errors if "exited with code" in e]) == 1  # a stop is no death
    finally:
        up.stop(signal.SIGKILL)
        for p in _agents(data_dir):
            p.kill()


# ---- the README's process commands ------------------------------------------------------


def _readme_commands() -> list[str]:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]


def test_the_readme_signals_only_the_tours_own_processes(tmp_path: Path) -> None:
    commands = _readme_commands()
    signals = [c for c in commands if re.match(r"(p?kill|killall)\b", c)]
    assert signals, "the tour kills a replica and freezes the agent"
    for command in signals:
        # The agent by its pid file; a replica by a pattern anchored on its own arguments;
        # the tour's own background jobs by their job number.
        job = re.fullmatch(r"kill (-INT )?%\d+(;.*)?", command)
        assert "agent.pid" in command or command.startswith("pkill -o -f '") or job, command
    (pkill,) = [c for c in signals if c.startswith("pkill")]
    pattern = pkill.split("'")[1]
    code = "import time\nwhile True:\n    time.sleep(1)"
    procs = {
        "replica": ["python3", "-u", "-c", code, "kled-tour-hello"],
        "editor": ["python3", "-c", "import time; time.sleep(60)", "kled-tour-hello.yaml"],
        "grep": ["sh", "-c", "sleep 60", "grep kled-tour-hello"],
        "agent": ["python3", "-c", "import time; time.sleep(60)", "-m", "kled.agent"],
    }
    started = {name: psutil.Popen(argv, cwd=tmp_path) for name, argv in procs.items()}
    try:
        time.sleep(0.5)
        matched = {p.pid for p in psutil.process_iter(["cmdline"]) if _pgrep(pattern, p)}
        assert started["replica"].pid in matched
        assert not matched & {started[n].pid for n in ("editor", "grep", "agent")}
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()


def _pgrep(pattern: str, proc: psutil.Process) -> bool:
    """Whether ``pgrep -f PATTERN`` would pick ``proc``: its arguments joined by spaces."""
    cmdline = proc.info["cmdline"] or []
    return re.search(pattern, " ".join(cmdline), flags=re.S) is not None

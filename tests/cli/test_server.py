"""``kled server`` and ``kled up`` as processes: first start, restart, and ``kill -9``."""

from __future__ import annotations

import json
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from clikit import Cli, ServerProcess, free_port


def test_first_start_prints_the_token_once(cli: Cli, server_process: ServerProcess) -> None:
    server_process.start()
    text = server_process.output(wait_for="Kled API on")
    token_file = server_process.data_dir / "admin.token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (
        f"Bootstrap token of the server administrator (shown once; also written to "
        f"{token_file}):\n  {token}\nKled API on {server_process.url} and unix:"
    ) in text
    assert server_process.stop(signal.SIGTERM) == 0
    assert not (server_process.data_dir / "kled.sock").exists()

    server_process.start()
    again = server_process.output(wait_for="Kled API on")
    assert f"Administrator token: in {token_file}" in again
    assert token not in again
    cli.ok("login", "--server", server_process.url, "--token", token)
    assert cli.ok("team", "create", "srv-one").strip() == "team/srv-one created"
    assert server_process.stop(signal.SIGINT) == 0


def test_bad_server_flags_exit_2(cli: Cli, tmp_path: Path) -> None:
    result = cli("server", "--data-dir", str(tmp_path / "d"), "--listen", "nowhere")
    assert result.code == 2 and result.err.strip() == (
        "error: --listen: 'nowhere' is not host:port"
    )
    result = cli("server", "--log-level", "loud")
    assert result.code == 2 and "--log-level: must be one of" in result.err


def test_up_runs_the_server_and_writes_the_local_context(cli: Cli) -> None:
    port = free_port()
    data_dir = cli.home / ".local" / "share" / "kled"
    up = ServerProcess(cli, data_dir, port)
    # The local agent's team network is not what this test is about; with it on, the team
    # created below would leave a namespace and a wireguard-go behind (the agent keeps them
    # for its next start, by design).
    up.proc = cli.popen("up", "--listen", f"127.0.0.1:{port}", "--agent-network", "off")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(up.proc.stdout or []), daemon=True).start()
    try:
        _wait(lambda: cli.config.exists() and "local" in cli.config.read_text())
        config = yaml.safe_load(cli.config.read_text())
        assert config["current-context"] == "local"
        assert config["contexts"] == [{
            "name": "local",
            "server": f"http://127.0.0.1:{port}",
            "socket": str(data_dir / "kled.sock"),
            "token": (data_dir / "admin.token").read_text().strip(),
        }]  # fmt: skip
        assert cli.ok("team", "create", "up-demo").strip() == "team/up-demo created"
        assert up.stop(signal.SIGINT) == 0
        text = "".join(lines)
        assert f"Kled is up at http://127.0.0.1:{port}" in text
        assert f"Token file: {data_dir / 'admin.token'}" in text
        assert "Next: kled team create demo" in text
    finally:
        up.stop(signal.SIGKILL)


def test_kill_9_loses_no_acknowledged_write(cli: Cli, server_process: ServerProcess) -> None:
    server_process.start()
    token = (server_process.data_dir / "admin.token").read_text().strip()
    cli.ok("login", "--server", server_process.url, "--token", token, "--team", "k9")
    cli.ok("team", "create", "k9")
    cli.ok("env", "create", "dev")
    acked: dict[str, int] = {}
    attempted: dict[str, int] = {}
    stop = threading.Event()

    def write() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server_process.url, headers=headers, timeout=10) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                name = f"w-{i % 7}"
                doc = _app(name, replicas=i % 1000)
                attempted[name] = i % 1000
                try:
                    response = http.post("/api/v1/apply", json=doc)
                except httpx.HTTPError:
                    return  # the server is gone: this write was never acknowledged
                if response.status_code in (200, 201):
                    acked[name] = i % 1000

    writer = threading.Thread(target=write)
    writer.start()
    try:
        _wait(lambda: len(acked) == 7 and sum(acked.values()) > 40)
        # Writes through the CLI join the stream, and are acknowledged by its exit code.
        stack = cli.home / "cli-app.yaml"
        stack.write_text(yaml.safe_dump(_app("from-cli", replicas=3)))
        assert cli.ok("apply", "-f", str(stack)).strip() == "app/from-cli created"
        server_process.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        writer.join(60)
    finally:
        stop.set()
        writer.join(60)
    server_process.stop(signal.SIGKILL)

    server_process.start()
    listed = json.loads(cli.ok("get", "apps", "-e", "dev", "-o", "json"))["items"]
    replicas = {a["metadata"]["name"]: a["spec"]["replicas"] for a in listed}
    assert replicas.pop("from-cli") == 3
    for name, value in acked.items():
        # The write in flight at the kill may or may not have committed; never less.
        assert replicas[name] in (value, attempted[name]), (name, value, attempted[name])

    newest = max(int(a["metadata"]["resourceVersion"]) for a in listed)
    seqs = _app_events(server_process.url, token, until=newest)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the event log"
    assert seqs[-1] == newest


def _app(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": "k9", "environment": "dev"},
        "spec": {"command": ["sleep", "60"], "replicas": replicas},
    }


def _app_events(url: str, token: str, until: int) -> list[int]:
    """Sequence numbers of the app events of team k9 from the start of the log."""
    seqs: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    path = "/api/v1/teams/k9/apps?watch=true&resourceVersion=0"
    timeout = httpx.Timeout(30, read=60)
    with httpx.stream("GET", url + path, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id: "):
                seqs.append(int(line[4:]))
                if seqs[-1] >= until:
                    break
    return seqs


def _wait(condition: Any) -> None:
    for _ in range(2400):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_watch_resumes_after_the_server_restarts(cli: Cli, server_process: ServerProcess) -> None:
    server_process.start()
    token = (server_process.data_dir / "admin.token").read_text().strip()
    cli.ok("login", "--server", server_process.url, "--token", token, "--team", "rw")
    cli.ok("team", "create", "rw")
    cli.ok("env", "create", "dev")
    first = cli.home / "a1.yaml"
    first.write_text(yaml.safe_dump({**_app("a1", 1), "metadata": {"name": "a1"}}))
    cli.ok("apply", "-f", str(first), "-e", "dev")
    watcher = cli.popen("get", "apps", "-e", "dev", "-w")
    lines: list[str] = []
    errors: list[str] = []
    threading.Thread(target=lambda: lines.extend(watcher.stdout or []), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(watcher.stderr or []), daemon=True).start()
    try:
        _wait(lambda: any("app/a1" in line for line in lines))
        server_process.stop(signal.SIGKILL)
        server_process.start()
        second = cli.home / "a2.yaml"
        second.write_text(yaml.safe_dump({**_app("a2", 1), "metadata": {"name": "a2"}}))
        cli.ok("apply", "-f", str(second), "-e", "dev")
        _wait(lambda: any("app/a2" in line for line in lines))
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
    events = [line.split() for line in lines[1:]]
    # The control plane writes each app's status (MODIFIED) whenever it gets to it; what
    # the restart must not do is lose an event or show one twice.
    added = [e[:2] for e in events if e[0] == "ADDED"]
    assert added == [["ADDED", "app/a1"], ["ADDED", "app/a2"]]
    versions = [int(e[3]) for e in events]
    assert versions == sorted(set(versions)), lines
    assert any("resuming" in line for line in errors)

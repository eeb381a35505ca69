"""Two control-plane replicas on one PostgreSQL and one NATS, as ``kled server`` processes.

Both serve the API and watches; the controllers run on the one holding the lease, and move
to the other when it is killed with ``kill -9``. The CLI given both URLs follows them.
"""

from __future__ import annotations

import http.server
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from clikit import Cli, ServerProcess, free_port, wait_for
from cryptography.fernet import Fernet

from kled.bus.embedded import EmbeddedNats
from kled.cli.client import Client
from kled.errors import KledError
from servers import postgres_available, postgres_database

pytestmark = pytest.mark.slow

TEAM = "twin"
LEADS = "this replica holds the lease"


@dataclass
class Pair:
    a: ServerProcess
    b: ServerProcess
    token: str
    cli: Cli

    def leader(self, replica: ServerProcess) -> bool:
        return any(LEADS in line for line in replica.errors)


def _replica(root: Path, name: str, database: str, nats: EmbeddedNats, key: str) -> ServerProcess:
    cli = Cli(root / name)
    cli.env["KLED_SECRET_KEY"] = key  # every replica must open the others' secrets
    nats_flags = ["--nats", nats.url, "--nats-user", nats.control_user]
    nats_flags += ["--nats-password", nats.control_password]
    return ServerProcess(
        cli, root / name / "data", free_port(), "--database", database, *nats_flags
    )


@pytest.fixture
def pair(tmp_path: Path, embedded: EmbeddedNats) -> Iterator[Pair]:
    why = postgres_available()
    if why is not None:
        pytest.skip(why)
    key = Fernet.generate_key().decode()
    with postgres_database() as database:
        a = _replica(tmp_path, "a", database, embedded, key)
        b = _replica(tmp_path, "b", database, embedded, key)
        try:
            a.start()
            wait_for(lambda: LEADS in "\n".join(a.errors), "replica a leads")
            b.start()
            token = (a.data_dir / "admin.token").read_text().strip()
            cli = Cli(tmp_path / "user")
            cli.ok("login", "--server", f"{a.url},{b.url}", "--token", token, "--team", TEAM)
            cli.ok("team", "create", TEAM)
            cli.ok("env", "create", "dev")
            # b's followers hear of a's writes by NOTIFY (or their poll): at once, not in step
            headers = {"Authorization": f"Bearer {token}"}
            env = f"{b.url}/api/v1/teams/{TEAM}/environments/dev"
            wait_for(lambda: httpx.get(env, headers=headers).status_code == 200, "b sees dev")
            yield Pair(a, b, token, cli)
        finally:
            b.stop(signal.SIGKILL)
            a.stop(signal.SIGKILL)


def _app(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": TEAM, "environment": "dev"},
        "spec": {"command": ["sleep", "60"], "replicas": replicas},
    }


def _get(url: str, token: str, name: str) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/teams/{TEAM}/environments/dev/apps/{name}"
    response = httpx.get(url + path, headers=headers, timeout=10)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _service_ip(url: str, token: str, name: str) -> str | None:
    doc = _get(url, token, name) or {}
    return (doc.get("status") or {}).get("ip")


def test_both_replicas_serve_and_a_watch_on_b_sees_writes_on_a(pair: Pair) -> None:
    assert not pair.leader(pair.b), "two replicas lead at once"
    headers = {"Authorization": f"Bearer {pair.token}"}
    path = f"/api/v1/teams/{TEAM}/apps?watch=true"
    seen: list[str] = []
    opened = threading.Event()

    def watch_b() -> None:
        timeout = httpx.Timeout(30, read=60)
        with httpx.stream("GET", pair.b.url + path, headers=headers, timeout=timeout) as r:
            opened.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["object"]["metadata"]["name"])
                    if "from-a" in seen:
                        return

    watcher = threading.Thread(target=watch_b, daemon=True)
    watcher.start()
    assert opened.wait(30)
    with httpx.Client(base_url=pair.a.url, headers=headers, timeout=10) as a:
        assert a.post("/api/v1/apply", json=_app("from-a")).status_code in (200, 201)
    with httpx.Client(base_url=pair.b.url, headers=headers, timeout=10) as b:
        assert b.post("/api/v1/apply", json=_app("from-b")).status_code in (200, 201)
    watcher.join(60)
    assert "from-a" in seen

    # Each replica reads what the other wrote (a moment later: docs/scaling.md); the
    # leader's IPAM gave both a service IP.
    wait_for(lambda: _get(pair.a.url, pair.token, "from-b") is not None, "from-b on a")
    wait_for(lambda: _service_ip(pair.b.url, pair.token, "from-a") is not None, "from-a's IP")
    wait_for(lambda: _service_ip(pair.a.url, pair.token, "from-b") is not None, "from-b's IP")
    ips = {_service_ip(pair.a.url, pair.token, n) for n in ("from-a", "from-b")}
    assert len(ips) == 2
    listed = json.loads(pair.cli.ok("get", "apps", "-e", "dev", "-o", "json"))["items"]
    assert {a["metadata"]["name"] for a in listed} == {"from-a", "from-b"}


def test_killing_the_leader_under_16_writers_loses_nothing(pair: Pair) -> None:
    acked: dict[str, int] = {}
    attempted: dict[str, int] = {}
    acks = [0]
    lock = threading.Lock()
    stop = threading.Event()
    urls = [f"{pair.a.url},{pair.b.url}", f"{pair.b.url},{pair.a.url}"]

    def write(worker: int) -> None:
        # Half the writers start on each replica; each fails over as the CLI does.
        with Client(urls[worker % 2], pair.token, timeout=10) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                name = f"w{worker}-{i % 5}"
                attempted[name] = i % 50
                try:
                    client.post("/api/v1/apply", _app(name, replicas=i % 50))
                except KledError:
                    continue  # cut off mid-request: not acknowledged
                with lock:
                    acked[name] = i % 50
                    acks[0] += 1

    writers = [threading.Thread(target=write, args=(n,)) for n in range(16)]
    for writer in writers:
        writer.start()
    try:
        wait_for(lambda: len(acked) == 80, "every writer acknowledged")
        assert pair.a.proc is not None
        pair.a.proc.send_signal(signal.SIGKILL)
        pair.a.proc.wait(30)
        wait_for(lambda: pair.leader(pair.b), "replica b takes the lease")
        with lock:
            before = acks[0]
        wait_for(lambda: acks[0] > before + 16, "writes acknowledged after the kill")
    finally:
        stop.set()
        for writer in writers:
            writer.join(60)

    # Every acknowledged write is there (a write in flight at the kill may be newer).
    listed = json.loads(pair.cli.ok("get", "apps", "-e", "dev", "-o", "json"))["items"]
    stored = {doc["metadata"]["name"]: doc["spec"]["replicas"] for doc in listed}
    for name, replicas in acked.items():
        assert stored[name] in (replicas, attempted[name]), (name, replicas, stored[name])

    # The controllers resumed on b: an app applied now gets its service IP there.
    pair.cli.ok("apply", "-f", "-", stdin=json.dumps(_app("after-kill")))
    wait_for(lambda: _service_ip(pair.b.url, pair.token, "after-kill") is not None, "its IP")
    wait_for(
        lambda: all(_service_ip(pair.b.url, pair.token, n) for n in [*stored, "after-kill"]),
        "every app has a service IP",
    )
    # ...and no address was handed out twice, by the two leaders one after the other.
    ips = [_service_ip(pair.b.url, pair.token, n) for n in [*stored, "after-kill"]]
    assert len(set(ips)) == len(ips)
    allocations = pair.cli.ok("ip", "list", "-A", "-o", "json")
    addresses = [a["address"] for a in json.loads(allocations)["items"]]
    assert len(set(addresses)) == len(addresses)


class _Refuses(http.server.BaseHTTPRequestHandler):
    """A server that answers every request with 403."""

    def do_GET(self) -> None:
        body = b'{"kind":"Status","code":403,"message":"not you"}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


def test_the_cli_fails_over_on_a_dead_url_but_not_on_an_answer(pair: Pair) -> None:
    pair.cli.ok("apply", "-f", "-", stdin=json.dumps(_app("seen")))
    dead = f"http://127.0.0.1:{free_port()}"
    out = pair.cli.ok("--server", f"{dead},{pair.b.url}", "get", "apps", "-e", "dev")
    assert "seen" in out

    refusing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{refusing.server_address[1]}"
        result = pair.cli("--server", f"{url},{pair.b.url}", "get", "apps", "-e", "dev")
        assert result.code != 0 and "not you" in result.err, result
    finally:
        refusing.shutdown()
        refusing.server_close()

    # Every URL dead: one line naming the last one tried.
    result = pair.cli("--server", f"{dead},{dead}", "get", "apps", "-e", "dev")
    assert result.code == 1 and "cannot reach the Kled server" in result.err, result


def _policy(name: str, type_: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "team": TEAM},
        "spec": {"type": type_, "resources": ["apps"], "javascript": script},
    }


def test_a_controller_policy_records_each_violation_once(pair: Pair) -> None:
    """Both replicas follow the log; only the lease holder runs Controller policies."""
    headers = {"Authorization": f"Bearer {pair.token}"}
    owner = "if (!request.object.metadata.labels?.owner) { deny('no owner label'); }"
    with (
        httpx.Client(base_url=pair.a.url, headers=headers, timeout=10) as a,
        httpx.Client(base_url=pair.b.url, headers=headers, timeout=10) as b,
    ):
        assert a.post("/api/v1/apply", json=_policy("owner", "Controller", owner)).is_success
        for name, replica in (("bad-a", a), ("bad-b", b)):
            assert replica.post("/api/v1/apply", json=_app(name)).is_success
        # A policy written after the apps: once a replica refuses by it, its feed has read
        # the apps' events (and recorded whatever it was going to record for them).
        gate = "if (request.name.startsWith('probe')) { deny('probe'); }"
        assert a.post("/api/v1/apply", json=_policy("gate", "Validating", gate)).is_success
        for replica in (a, b):
            wait_for(
                lambda r=replica: r.post("/api/v1/apply", json=_app("probe")).status_code == 403,
                "the replica refuses by the policy written last",
            )
        report = a.get(f"/api/v1/teams/{TEAM}/violations", params={"policy": "owner"})
    assert report.status_code == 200, report.text
    found = sorted((v["name"], v["user"]) for v in report.json()["items"])
    controller = "kled:policy-controller"
    assert found == [("bad-a", controller), ("bad-b", controller)]

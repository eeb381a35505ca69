"""Managed services on a real agent: PostgreSQL, Redis, MariaDB from Debian's packages.

One lab host runs an agent with the mesh on (``agentlab``); the control plane runs in this
process inside a host of its own, its services' folders under the test's tmp folder
(``KLED_SERVICES_ROOT``). Checked, as a user sees it: a ManagedService becomes Ready; an app
that imports it with ``envFrom: [{managedService: db}]`` finds ``DATABASE_URL`` and writes
rows through the service's DNS name; the agent killed with SIGKILL and the server process
killed meanwhile, the restarted agent brings the server back on the same data; ``kled
service backup`` writes a real dump listed on the service, ``restore --as`` makes a new
service with the rows; ``rotate`` changes the password (the old one is refused); ``delete``
keeps a final backup. Redis likewise with ``REDIS_URL``, MariaDB with the ``MYSQL_*``
variables and an SQL dump.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agentlab import IDLE_CMD, MARKER_VAR, Mesh, eventually, lab_mesh, laptop_kled

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

ENV = "/api/v1/teams/a/environments/dev"


@pytest.fixture
def services_root() -> Iterator[Path]:
    """The nodes' services folder: the servers run as their packages' users (postgres,
    redis), who cannot enter pytest's private tmp folders."""
    root = Path(tempfile.mkdtemp(prefix="kled-ms-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mesh(tmp_path: Path, services_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    monkeypatch.setenv("KLED_SERVICES_ROOT", str(services_root))
    with lab_mesh(tmp_path, 1, "mstest") as m:
        m.start_agent(1)
        m.team("a", "100.93.0.0/16")
        # Every app of the environment, the servers included, carries the marker: teardown
        # finds and kills them (and the servers' children inherit it).
        env = m.api("GET", "/api/v1/teams/a/environments/dev")
        env["spec"]["variables"] = {MARKER_VAR: m.marker}
        m.api("PUT", "/api/v1/teams/a/environments/dev", env)
        try:
            yield m
        except BaseException:
            print(m.dump_logs())
            raise


def _service(mesh: Mesh, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = mesh.api("GET", f"{ENV}/managedservices/{name}")
    return doc


def _ready(mesh: Mesh, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = _service(mesh, name)
        return doc if (doc.get("status") or {}).get("phase") == "Ready" else None

    try:
        found: dict[str, Any] = eventually(check, f"service {name} Ready")
    except AssertionError as e:
        status = _service(mesh, name).get("status")
        apps = mesh.api("GET", f"{ENV}/apps")["items"]
        seen = {d["metadata"]["name"]: d.get("status") for d in apps}
        raise AssertionError(f"{e}: {status}; apps: {seen}\n{mesh.dump_logs()}") from None
    return found


def _secret(mesh: Mesh, name: str) -> dict[str, str]:
    doc = mesh.api("GET", f"{ENV}/secrets/{name}?reveal=true")
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def _in_pod(mesh: Mesh, replica: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    ns = mesh.pod_ns(1, "a", replica)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def _sql(mesh: Mesh, url: str, query: str) -> str:
    done = _in_pod(mesh, "a.dev.client.0", ["psql", url, "-tAc", query])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _cli(mesh: Mesh, tmp: Path, token: str, *args: str) -> str:
    done = laptop_kled(mesh, tmp / "home", token, *args, "--env", "dev")
    assert done.returncode == 0, f"kled {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def _servers(mesh: Mesh, data_dir: str) -> list[psutil.Process]:
    found = []
    for p in mesh.replicas():
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if "kled.agent.servicerun" in cmd and "serve" in cmd and data_dir in cmd:
                found.append(p)
    return found


def test_postgres_service_env_from_restart_backup_restore_rotate(
    mesh: Mesh, tmp_path: Path
) -> None:
    token = mesh.user_token("a", "alice")
    body = {"metadata": {"name": "db"},
            "spec": {"template": "postgres", "parameters": {"max_connections": 40}}}  # fmt: skip
    mesh.api("POST", f"{ENV}/managedservices", body)
    status = _ready(mesh, "db")["status"]
    assert status["dns"] == "db.dev.a.kled.internal"
    assert status["node"] == "node1"

    # An app imports the service: DATABASE_URL is there and works by the service's name.
    # Each start of the writer adds a row: a restart with new credentials shows.
    sql = "CREATE TABLE IF NOT EXISTS notes (t text); INSERT INTO notes VALUES ('hello')"
    write = f'psql "$DATABASE_URL" -c "{sql}" && exec sleep 100000'
    mesh.app("a", "client", {"command": IDLE_CMD})
    mesh.app("a", "writer", {"command": ["sh", "-c", write],
                             "envFrom": [{"managedService": "db"}]})  # fmt: skip
    creds = _secret(mesh, "db")
    assert creds["DATABASE_URL"] == creds["uri"]
    assert (
        creds["uri"].startswith("postgresql://app:")
        and "@db.dev.a.kled.internal:5432/app" in (creds["uri"])
    )
    url = creds["DATABASE_URL"]
    eventually(lambda: _sql(mesh, url, "SELECT count(*) FROM notes") == "1", "the app's row")
    assert _sql(mesh, url, "SHOW max_connections") == "40"

    # The agent dies (SIGKILL), and the server with it while nobody watches: the agent
    # comes back, starts the server again on the same data directory.
    servers = _servers(mesh, status["dataDir"])
    assert len(servers) == 1
    mesh.kill_agent("node1")
    servers[0].send_signal(signal.SIGKILL)
    psutil.wait_procs(servers, timeout=30)
    mesh.start_agent(1)
    eventually(lambda: len(_servers(mesh, status["dataDir"])) == 1, "the server started again")
    _ready(mesh, "db")
    eventually(lambda: _sql(mesh, url, "SELECT t FROM notes") == "hello", "the row kept")

    # A backup is a real pg_dump on the node, listed on the service.
    said = _cli(mesh, tmp_path, token, "service", "backup", "db")
    backups = eventually(lambda: _service(mesh, "db")["status"].get("backups"), "backup listed")
    taken = backups[0]
    assert taken["id"] in said and Path(taken["path"]).read_bytes()[:5] == b"PGDMP"
    described = _cli(mesh, tmp_path, token, "service", "describe", "db")
    assert taken["id"] in described and "Ready" in described
    logs = lambda: _cli(mesh, tmp_path, token, "service", "logs", "db")  # noqa: E731
    eventually(lambda: "servicerun: postgres ready on port 5432" in logs(), "the server's log")

    # Restore into a new service: its own credentials, the rows of the backup.
    _sql(mesh, url, "INSERT INTO notes VALUES ('after the backup')")
    _cli(mesh, tmp_path, token, "service", "restore", taken["id"], "--as", "db2")
    _ready(mesh, "db2")
    creds2 = _secret(mesh, "db2")
    assert creds2["password"] != creds["password"]
    restored = creds2["uri"]
    eventually(lambda: _sql(mesh, restored, "SELECT t FROM notes") == "hello", "restored rows")

    # Rotate: a new password in the Secret, the server takes it, the old one is refused.
    _cli(mesh, tmp_path, token, "service", "rotate", "db")
    new = eventually(
        lambda: (c := _secret(mesh, "db"))["password"] != creds["password"] and c, "new password"
    )

    def switched() -> bool:
        old = _in_pod(mesh, "a.dev.client.0", ["psql", url, "-tAc", "SELECT 1"])
        query = "SELECT count(*) FROM notes WHERE t = 'hello'"
        return old.returncode != 0 and _sql(mesh, new["uri"], query) == "2"

    eventually(switched, "the old password refused, the writer restarted with the new one")

    # Delete keeps a final backup, and takes the server away.
    said = _cli(mesh, tmp_path, token, "service", "delete", "db")
    final = said.split("final backup ", 1)[1].split(":", 1)[0]
    assert final.startswith("db-final-")
    assert list((Path(status["backupDir"]).parent).glob(f"*/{final}"))
    eventually(lambda: not _servers(mesh, status["dataDir"]), "the server stopped")
    listed = mesh.api("GET", f"{ENV}/apps")["items"]
    assert "ms-db" not in [d["metadata"]["name"] for d in listed]


def test_redis_service_env_from_and_backup_restore(mesh: Mesh, tmp_path: Path) -> None:
    token = mesh.user_token("a", "bob")
    params = {"maxmemory-policy": "allkeys-lru"}
    body = {"metadata": {"name": "cache"}, "spec": {"template": "redis", "parameters": params}}
    mesh.api("POST", f"{ENV}/managedservices", body)
    _ready(mesh, "cache")
    put = 'redis-cli -u "$REDIS_URL" SET greeting hello && exec sleep 100000'
    mesh.app("a", "client", {"command": IDLE_CMD})
    mesh.app("a", "writer", {"command": ["sh", "-c", put],
                             "envFrom": [{"managedService": "cache"}]})  # fmt: skip
    creds = _secret(mesh, "cache")
    assert creds["REDIS_URL"].startswith("redis://default:")

    def get(url: str, key: str) -> str:
        done = _in_pod(mesh, "a.dev.client.0", ["redis-cli", "-u", url, "GET", key])
        return done.stdout.strip()

    eventually(lambda: get(creds["REDIS_URL"], "greeting") == "hello", "the app's key")
    done = _in_pod(mesh, "a.dev.client.0", ["redis-cli", "-u", creds["REDIS_URL"].replace(
        creds["password"], "wrong"), "GET", "greeting"])  # fmt: skip
    assert "hello" not in done.stdout  # a wrong password reads nothing

    _cli(mesh, tmp_path, token, "service", "backup", "cache")
    taken = eventually(lambda: _service(mesh, "cache")["status"].get("backups"), "listed")[0]
    assert Path(taken["path"]).read_bytes()[:5] == b"REDIS"
    _cli(mesh, tmp_path, token, "service", "restore", taken["id"], "--as", "cache2")
    _ready(mesh, "cache2")
    restored = _secret(mesh, "cache2")["uri"]
    eventually(lambda: get(restored, "greeting") == "hello", "the restored key")


def test_mariadb_service_env_from_and_backup(mesh: Mesh, tmp_path: Path) -> None:
    token = mesh.user_token("a", "carol")
    body = {"metadata": {"name": "shop"}, "spec": {"template": "mariadb"}}
    mesh.api("POST", f"{ENV}/managedservices", body)
    _ready(mesh, "shop")
    # The mariadb client reads MYSQL_PWD itself; the other variables name the rest.
    sql = "CREATE TABLE IF NOT EXISTS items (n text); INSERT INTO items VALUES ('pen')"
    write = (
        'mariadb -h "$MYSQL_HOST" -P "$MYSQL_TCP_PORT" -u "$MYSQL_USER" "$MYSQL_DATABASE" '
        f'-e "{sql}" && exec sleep 100000'
    )
    mesh.app("a", "client", {"command": IDLE_CMD})
    mesh.app("a", "writer", {"command": ["sh", "-c", write],
                             "envFrom": [{"managedService": "shop"}]})  # fmt: skip
    creds = _secret(mesh, "shop")
    assert creds["DATABASE_URL"].startswith("mysql://app:")

    def rows() -> str:
        argv = ["mariadb", "--no-defaults", "-h", creds["host"], "-P", creds["port"], "-u",
                creds["user"], f"-p{creds['password']}", "-N", "-B", creds["database"], "-e",
                "SELECT n FROM items"]  # fmt: skip
        return _in_pod(mesh, "a.dev.client.0", argv).stdout.strip()

    eventually(lambda: rows() == "pen", "the app's row")
    _cli(mesh, tmp_path, token, "service", "backup", "shop")
    taken = eventually(lambda: _service(mesh, "shop")["status"].get("backups"), "listed")[0]
    assert "CREATE TABLE `items`" in Path(taken["path"]).read_text()


def test_postgres_only_its_team_reaches_it_and_clone_with_data(mesh: Mesh, tmp_path: Path) -> None:
    token = mesh.user_token("a", "dora")
    mesh.api("POST", f"{ENV}/managedservices",
             {"metadata": {"name": "db"}, "spec": {"template": "postgres"}})  # fmt: skip
    status = _ready(mesh, "db")["status"]
    mesh.team("b", "100.94.0.0/16")
    mesh.app("a", "client", {"command": IDLE_CMD})
    mesh.app("b", "client", {"command": IDLE_CMD})
    creds = _secret(mesh, "db")
    # By the service's IP, with the right password: team a's pod gets in, team b's cannot.
    by_ip = creds["uri"].replace(status["dns"], status["ip"]) + "?connect_timeout=3"
    create = "CREATE TABLE IF NOT EXISTS notes (t text)"
    eventually(lambda: _sql(mesh, by_ip, create) == "CREATE TABLE", "team a connects by IP")
    _sql(mesh, by_ip, "INSERT INTO notes VALUES ('kept')")
    other = mesh.pod_ns(1, "b", "b.dev.client.0")
    # Team b's pod is on the mesh (its resolver answers through its gateway), so what
    # follows fails for isolation, not for a pod without network.
    eventually(lambda: mesh.resolve(other, "client.dev.b.kled.internal"), "team b's pod")
    argv = ["psql", by_ip, "-tAc", "SELECT t FROM notes"]
    done = subprocess.run(["ip", "netns", "exec", other, *argv], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and "kept" not in done.stdout, done
    assert "connection to server" in done.stderr, done.stderr  # not a password refused

    # storage.size smaller than the data is refused with the field path; a size that holds
    # it is taken; describe shows what the data directory takes, measured on the node.
    def resize(size: str) -> Any:
        doc = _service(mesh, "db")
        doc["spec"]["storage"] = {"size": size}
        with mesh.server.client() as c:
            return c.put(f"{ENV}/managedservices/db", json=doc)

    refused = resize("64Ki")
    assert refused.status_code == 422, refused.text
    assert "spec.storage.size: storage smaller than the data" in refused.text, refused.text
    assert "storage" not in _service(mesh, "db")["spec"]  # nothing stored
    assert resize("10Gi").status_code == 200
    described = _cli(mesh, tmp_path, token, "service", "describe", "db")
    assert " MiB of 10Gi)" in described, described
    assert _service(mesh, "db")["status"]["dataBytes"] > 1 << 20
    assert resize("64Ki").status_code == 422  # shrinking likewise

    # kled top and /metrics show the service under its name, not as its server app.
    def top() -> list[str] | None:
        rows = _cli(mesh, tmp_path, token, "top", "services").splitlines()
        row = next((r.split() for r in rows if r.startswith("db ")), None)
        return row if row and row[3].endswith("m") else None

    row = eventually(top, "db measured in kled top services")
    assert row[:3] == ["db", "postgres", "Ready"] and row[-1] == "node1", row
    assert "ms-db" not in _cli(mesh, tmp_path, token, "top", "apps")
    with mesh.server.client() as c:
        text = c.get("/metrics").text
    assert (
        'kled_service_ready{environment="dev",node="node1",service="db",team="a"'
        in text.replace(',template="postgres"', "")
    ), text
    assert 'app="ms-db"' not in text

    # The environment cloned with its data: the clone's service has the backup's rows and
    # its own password; the source's backups are not listed on it.
    _cli(mesh, tmp_path, token, "service", "backup", "db")
    _sql(mesh, by_ip, "INSERT INTO notes VALUES ('after the backup')")
    mesh.api("POST", f"{ENV}/clone", {"name": "qa", "withData": True})
    qa = "/api/v1/teams/a/environments/qa"
    copy = mesh.api("GET", f"{qa}/managedservices/db")
    assert "kled.io/backups" not in (copy["metadata"].get("annotations") or {})

    def cloned_ready() -> dict[str, Any] | None:
        doc: dict[str, Any] = mesh.api("GET", f"{qa}/managedservices/db")
        return doc if (doc.get("status") or {}).get("phase") == "Ready" else None

    eventually(cloned_ready, "the clone's db Ready")
    doc = mesh.api("GET", f"{qa}/secrets/db?reveal=true")
    cloned = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
    assert cloned["password"] != creds["password"] and "@db.qa.a." in cloned["uri"]
    eventually(lambda: _sql(mesh, cloned["uri"], "SELECT t FROM notes") == "kept",
               "the clone has the backup's rows and not the later one")  # fmt: skip

"""A Kled Cluster's Secrets, judged by kubectl and by what the database holds: their
values are encrypted at rest (documents and the event log) as Kled Secrets are, only a role
that reads secrets sees them, and a Deployment's variables from a Secret key reach its App
through a Kled Secret, never in the App document.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer

VALUE = "hunter2-kube-secret"
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 0
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: localhost/kled-test:latest
        env:
        - {name: PLAIN, value: visible}
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
"""


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def configs(server: RunningServer, unique_team: str, tmp_path: Path) -> dict[str, Path]:
    return make_cluster(server, unique_team, tmp_path / "kube", users={"vic": "view"})


def kubectl(configs: dict[str, Path], tmp_path: Path, user: str = "admin") -> Kubectl:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    return Kubectl(binary, configs[user], tmp_path / f"home-{user}")


def stored_texts(server: RunningServer, team: str) -> list[str]:
    """Every document and event of the team as the database holds them."""
    url = server.settings.database_url().replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            docs = conn.execute(sa.text("SELECT doc FROM resources WHERE team = :t"), {"t": team})
            events = conn.execute(sa.text("SELECT object FROM events WHERE team = :t"), {"t": team})
            rows = [*docs.scalars(), *events.scalars()]
    finally:
        engine.dispose()
    return [r if isinstance(r, str) else json.dumps(r) for r in rows]


def test_secret_values_are_encrypted_at_rest_and_shown_only_to_readers(
    server: RunningServer, unique_team: str, configs: dict[str, Path], tmp_path: Path
) -> None:
    admin = kubectl(configs, tmp_path)
    admin.ok("create", "secret", "generic", "db", f"--from-literal=password={VALUE}")
    encoded = base64.b64encode(VALUE.encode()).decode()
    assert admin.ok("get", "secret", "db", "-o", "jsonpath={.data.password}") == encoded
    admin.ok("patch", "secret", "db", "-p", '{"stringData":{"user":"app"}}')
    shown = json.loads(admin.ok("get", "secret", "db", "-o", "json"))
    assert shown["data"] == {"password": encoded, "user": base64.b64encode(b"app").decode()}
    assert "encryptedData" not in shown
    assert "2" in admin.ok("get", "secrets").splitlines()[1].split()  # the DATA column

    texts = stored_texts(server, unique_team)
    assert any("encryptedData" in t for t in texts)
    assert not [t for t in texts if VALUE in t or encoded in t]

    # a client's own "encryptedData" field does not stop the sealing
    forged = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "forged"},
              "data": {"password": encoded}, "encryptedData": "not-a-blob"}  # fmt: skip
    admin.ok("apply", "--validate=false", "-f", "-", stdin=json.dumps(forged))
    assert admin.ok("get", "secret", "forged", "-o", "jsonpath={.data.password}") == encoded
    # kubectl apply keeps the manifest, values included, in an annotation: sealed too, and
    # read back for the next apply's three-way merge
    clean = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "applied"},
             "data": {"password": encoded}}  # fmt: skip
    admin.ok("apply", "-f", "-", stdin=json.dumps(clean))
    assert "secret/applied unchanged" in admin.ok("apply", "-f", "-", stdin=json.dumps(clean))
    assert not [t for t in stored_texts(server, unique_team) if encoded in t]

    viewer = kubectl(configs, tmp_path, user="vic")
    for args in (("get", "secret", "db"), ("get", "secrets", "-w", "--request-timeout=5s")):
        done = viewer(*args)
        assert done.returncode == 1
        assert 'User "vic" cannot' in done.stderr and "secrets" in done.stderr


def test_a_deployments_secret_variables_stay_out_of_its_app(
    server: RunningServer, unique_team: str, configs: dict[str, Path], tmp_path: Path
) -> None:
    admin = kubectl(configs, tmp_path)
    admin.ok("create", "secret", "generic", "db", f"--from-literal=password={VALUE}")
    admin.ok("apply", "-f", "-", stdin=DEPLOYMENT)
    encoded = base64.b64encode(VALUE.encode()).decode()
    base = f"/api/v1/teams/{unique_team}/environments/dev-default"
    with server.client() as c:
        for _ in range(100):
            r = c.get(f"{base}/apps/api")
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        app = r.json()
        assert app["spec"]["env"] == {"PLAIN": "visible"}
        assert app["spec"]["envFrom"] == [{"secret": "api-env"}]
        revealed = c.get(f"{base}/secrets/api-env?reveal=true").json()
        assert revealed["data"] == {"DB_PASSWORD": encoded}
    assert not [t for t in stored_texts(server, unique_team) if VALUE in t or encoded in t]

    admin.ok("delete", "deploy", "api")
    with server.client() as c:
        for _ in range(100):
            if c.get(f"{base}/secrets/api-env").status_code == 404:
                break
            time.sleep(0.1)
        assert c.get(f"{base}/secrets/api-env").status_code == 404

"""Helpers for testing Kled Clusters with the real Kubernetes clients.

``kubectl_binary`` finds kubectl 1.NN beside the one on the PATH (google-cloud-cli ships
them so), ``make_cluster`` creates a team, its users and a cluster on a running control
plane and writes a kubeconfig per user through the cluster API's own token endpoint, and
``Kubectl`` runs kubectl with one of them, with its own HOME (its discovery cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kled.cli.clusters import render
from servers import RunningServer


def kubectl_binary(version: str | None = None) -> Path | None:
    """``kubectl`` on the PATH, or ``kubectl.<version>`` beside the binary it links to."""
    found = shutil.which("kubectl")
    if found is None:
        return None
    if version is None:
        return Path(found)
    beside = Path(os.path.realpath(found)).parent / f"kubectl.{version}"
    return beside if beside.exists() else None


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path
    home: Path
    #: a lab host (network namespace) to run kubectl in
    netns: str | None = None

    def argv(self, args: tuple[str, ...]) -> list[str]:
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*inside, str(self.binary), *args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(self.kubeconfig), HOME=str(self.home))
        return env

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        return done

    def ok(self, *args: str, stdin: str | None = None) -> str:
        return self(*args, stdin=stdin, check=True).stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )


def make_cluster(
    server: RunningServer,
    team: str,
    folder: Path,
    *,
    cluster: str = "dev",
    users: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """A team with ``users`` (name → cluster role, each a team member) and one cluster
    (``spec``: more of the Cluster's spec, such as ``quota``);
    the kubeconfig of each user and of the server administrator (``admin``), by name."""
    users = users or {}
    folder.mkdir(parents=True, exist_ok=True)
    with server.client() as admin:
        r = admin.post("/api/v1/teams", json={"metadata": {"name": team}})
        assert r.status_code == 201, r.text
        for name in users:
            body = {"metadata": {"name": name}, "spec": {"role": "member"}}
            r = admin.post(f"/api/v1/teams/{team}/users", json=body)
            assert r.status_code == 201, r.text
        spec = {**(spec or {}), "users": [{"name": n, "role": r} for n, r in users.items()]}
        r = admin.post(
            f"/api/v1/teams/{team}/clusters",
            json={"kind": "Cluster", "metadata": {"name": cluster}, "spec": spec},
        )
        assert r.status_code == 201, r.text
        configs: dict[str, Path] = {}
        for name in ["admin", *users]:
            who: dict[str, str] = {} if name == "admin" else {"user": name}
            r = admin.post(f"/k8s/{team}/{cluster}/kled/token", json=who)
            assert r.status_code == 201, r.text
            a = r.json()
            path = folder / f"{name}.kubeconfig"
            path.write_text(
                render(
                    a["server"], team, cluster, a["user"], a["token"], a["certificateAuthorityData"]
                )
            )
            configs[name] = path
    return configs

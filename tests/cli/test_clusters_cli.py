"""``kled cluster create|list|kubeconfig|delete`` as a user runs them, judged by kubectl.

The kubeconfig ``kled`` writes is used by the real kubectl unchanged (HTTPS with the
control plane's CA, a token for that cluster alone); deleting the cluster takes its objects
and its tokens with it.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from clikit import Cli

from kubekit import Kubectl, kubectl_binary


def test_create_kubeconfig_use_and_delete_a_cluster(admin: Cli, tmp_path: Path) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    admin.ok("team", "create", "kc-a")
    admin.ok("user", "create", "vic", "--role", "member", "--team", "kc-a")
    assert "cluster/dev created" in admin.ok(
        "cluster", "create", "dev", "--user", "vic=view", "--team", "kc-a"
    )
    listed = json.loads(admin.ok("cluster", "list", "--team", "kc-a", "-o", "json"))
    [cluster] = listed["items"]
    assert cluster["spec"]["users"] == [{"name": "vic", "role": "view"}]

    config = tmp_path / "kube" / "config"
    admin.ok("cluster", "kubeconfig", "dev", "--team", "kc-a", "--file", str(config))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    k = Kubectl(binary, config, tmp_path / "home")
    assert "namespace/default" in k.ok("get", "ns", "-o", "name").split()
    k.ok("create", "configmap", "c", "--from-literal=a=b")

    viewer_config = tmp_path / "vic.config"
    printed = admin.ok("cluster", "kubeconfig", "dev", "--team", "kc-a", "--user", "vic")
    viewer_config.write_text(printed)
    viewer = Kubectl(binary, viewer_config, tmp_path / "home-vic")
    assert "configmap/c" in viewer.ok("get", "cm", "-o", "name").split()
    assert "Forbidden" in viewer("delete", "cm", "c").stderr

    assert "cluster/dev deleted" in admin.ok("cluster", "delete", "dev", "--team", "kc-a")
    gone = k("get", "cm")
    assert gone.returncode == 1
    assert "You must be logged in to the server" in gone.stderr


def test_bad_input_is_one_line_naming_the_option(admin: Cli) -> None:
    admin.ok("team", "create", "kc-b")
    wrong = admin("cluster", "create", "dev", "--user", "vic=boss", "--team", "kc-b")
    assert wrong.code == 2
    assert "--user" in wrong.err and "cluster-admin, edit, view" in wrong.err
    assert len(wrong.err.strip().splitlines()) == 1
    assert "no clusters yet" in admin("cluster", "list", "--team", "kc-b").err
    missing = admin("cluster", "kubeconfig", "nope", "--team", "kc-b")
    assert missing.code == 1 and "not found" in missing.err

"""A ``kled device config`` file, brought up with plain ``wg`` on a host without Kled,
reaches a team's app by name (issue 4).

Host 1 runs a real agent and the app's replicas; host 3 is the member's laptop, where
``kled device config phone`` prints the wg-quick file; host 2 is the phone: no Kled runs
there, only what a user types from the file — ``wireguard-go``, ``wg-quick strip`` into
``wg setconf``, ``ip address``/``ip route`` from its ``Address`` and ``AllowedIPs``, and
a resolver pointed at its ``DNS`` line. ``kled device revoke`` cuts the phone off again.
The control plane runs on host 4 with its DNS on port 53 (``--dns-listen <ip>:53``): a
wg-quick ``DNS =`` line holds addresses only, so that is the set-up plain clients need.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_kled, serve_cmd
from netlab import sh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

TEAM_A_BLOCK = "100.91.0.0/16"
NODE, PHONE, LAPTOP, SERVER = 1, 2, 3, 4


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    # The DNS on the standard port: a wg-quick DNS line cannot name another.
    with lab_mesh(tmp_path, SERVER - 1, "s8a", dns_port=53) as m:
        yield m


def wg_quick_values(text: str) -> dict[str, list[str]]:
    """Every ``Key = a, b`` of a wg-quick file, by key, values of repeated keys joined."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("#")[0].partition("=")
        if sep and key.strip():
            found.setdefault(key.strip(), []).extend(v.strip() for v in value.split(","))
    return found


def in_ns(ns: str, *argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
    )
    assert done.returncode == 0, f"{' '.join(argv)} in {ns}: {done.stderr}"
    return done.stdout


def test_config_file_with_plain_wg_reaches_the_app_until_revoked(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.start_agent(NODE)
    mesh.team("a", TEAM_A_BLOCK)
    token = mesh.user_token("a", "alice")
    ports = [{"port": 80, "targetPort": 8080}]
    mesh.app("a", "api", {"command": serve_cmd(), "replicas": 2, "ports": ports})
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    phone = mesh.lab.host(PHONE)
    ifname = f"s8a{mesh.lab.run}ph"
    mesh.lab.ifnames.add(ifname)  # its control socket goes with the lab
    home = tmp_path / "laptop"
    try:
        # Made on the member's laptop; a team whose node has no key yet gets a file
        # without peers and is told to run it again.
        registered = laptop_kled(mesh, home, token, "device", "register", "phone", host=LAPTOP)
        assert registered.returncode == 0, registered.stderr

        def made() -> str:
            done = laptop_kled(mesh, home, token, "device", "config", "phone", host=LAPTOP)
            assert done.returncode == 0, done.stderr
            return done.stdout if "[Peer]" in done.stdout else ""

        text = eventually(made, "a wg-quick file with the node as a peer")
        folder = tmp_path / "phone"
        folder.mkdir(mode=0o700)
        conf = folder / f"{ifname}.conf"
        conf.write_text(text)
        conf.chmod(0o600)
        values = wg_quick_values(text)
        (address,) = values["Address"]
        assert address.startswith("100.91.") and address.endswith("/32"), text
        networks = list(dict.fromkeys(values["AllowedIPs"]))
        dns_ip, *search = values["DNS"]
        assert dns_ip == mesh.server_ip, text

        # The phone: plain tools only, as a user (or the WireGuard app) does with the file.
        in_ns(phone, "wireguard-go", ifname)
        in_ns(
            phone, "wg", "setconf", ifname, "/dev/stdin", stdin=sh("wg-quick", "strip", str(conf))
        )
        sh("ip", "-n", phone, "address", "add", address, "dev", ifname)
        sh("ip", "-n", phone, "link", "set", ifname, "up")
        for network in networks:
            sh("ip", "-n", phone, "route", "add", network, "dev", ifname)
        # wg-quick hands DNS = to resolvconf: the nameserver and the search domains.
        resolv = Path("/etc/netns") / phone / "resolv.conf"  # removed with the lab
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text(f"nameserver {dns_ip}\nsearch {' '.join(search)}\n")

        def answered() -> bool:
            answers = mesh.ask(phone, service_ip, 80, count=4)
            return all(a.startswith("api-") for a in answers)

        assert eventually(answered, "api answering the phone over the mesh")
        name = f"api.dev.{search[0]}"
        found = in_ns(phone, "dig", "+short", "+time=2", "+tries=2", f"@{dns_ip}", name)
        assert found.strip() == service_ip, f"{name} at {dns_ip}: {found!r}"
        assert mesh.resolve(phone, name) == service_ip
        assert mesh.resolve(phone, f"phone.{search[0]}") == address.split("/")[0]

        revoked = laptop_kled(
            mesh, home, mesh.server.admin_token, "device", "revoke", "phone", host=LAPTOP
        )
        assert revoked.returncode == 0, revoked.stderr

        def cut_off() -> bool:
            return all(a.startswith("!") for a in mesh.ask(phone, service_ip, 80, count=2))

        assert eventually(cut_off, "the revoked phone no longer reaching api")
    except BaseException:
        print(mesh.dump_logs())
        raise

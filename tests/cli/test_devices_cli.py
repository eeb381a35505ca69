"""``kled device config|list|revoke``: a device registered from this machine, its private key
kept here, a wg-quick file any WireGuard client takes, and revocation by an admin."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from clikit import Cli

from servers import RunningServer


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def _person(admin: Cli, server: RunningServer, team: str, name: str, role: str) -> Cli:
    admin.ok("user", "create", name, "--role", role, "--team", team)
    token = admin.ok("token", "create", f"{name}-t", "--user", name, "--team", team).strip()
    person = Cli(admin.home / name)
    person.ok("login", "--server", server.url, "--token", token)
    return person


def _sections(text: str) -> list[tuple[str, dict[str, str]]]:
    sections: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        if line.startswith("["):
            sections.append((line.strip("[]"), {}))
        elif "=" in line:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


def test_config_is_a_wg_quick_file_whose_key_stays_here(
    admin: Cli, server: RunningServer, tmp_path: Path
) -> None:
    admin.ok("team", "create", "dv-a")
    alice = _person(admin, server, "dv-a", "alice", "member")
    alice.ok("device", "register", "laptop")
    text = alice.ok("device", "config", "laptop")
    sections = _sections(text)
    assert [s for s, _ in sections] == ["Interface", *["Peer"] * (len(sections) - 1)]
    iface = sections[0][1]
    assert iface["Address"].endswith("/32") and iface["Address"].startswith("100.")
    key_file = alice.home / ".local" / "share" / "kled" / "devices" / "dv-a" / "laptop.key"
    assert key_file.read_text().strip() == iface["PrivateKey"]
    assert key_file.stat().st_mode & 0o077 == 0

    # The server has only the public key, and it matches the local private key.
    device = alice.ok("get", "device", "laptop", "-o", "json")
    assert iface["PrivateKey"] not in device
    if shutil.which("wg"):
        public = subprocess.run(
            ["wg", "pubkey"], input=iface["PrivateKey"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert f'"publicKey": "{public}"' in device
    if shutil.which("wg-quick"):
        conf = tmp_path / "kled0.conf"
        conf.write_text(text)
        conf.chmod(0o600)
        stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True)
        assert stripped.returncode == 0, stripped.stderr
        assert f"PrivateKey = {iface['PrivateKey']}" in stripped.stdout

    # Asking again keeps the same key and address.
    assert alice.ok("device", "config", "laptop") == text


def test_list_and_revoke(admin: Cli, server: RunningServer) -> None:
    admin.ok("team", "create", "dv-b")
    alice = _person(admin, server, "dv-b", "alice", "member")
    bob = _person(admin, server, "dv-b", "bob", "member")
    carol = _person(admin, server, "dv-b", "carol", "admin")
    alice.ok("device", "register", "laptop-a")
    bob.ok("device", "register", "phone-b", "--kind", "phone")
    rows = _rows(alice.ok("device", "list"))
    assert rows[0] == ["NAME", "OWNER", "KIND", "IP", "LOCAL-KEY"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["laptop-a"][1:3] == ["alice", "laptop"] and by_name["laptop-a"][4] == "yes"
    assert by_name["phone-b"][1:3] == ["bob", "phone"] and by_name["phone-b"][4] == "no"

    refused = alice("device", "revoke", "phone-b")
    assert refused.code == 1 and "belongs to 'bob'" in refused.err
    out = carol.ok("device", "revoke", "phone-b")
    assert out.strip() == "device/phone-b revoked: removed from every peer of team dv-b"
    assert "phone-b" not in alice.ok("device", "list")
    missing = carol("device", "revoke", "phone-b")
    assert missing.code == 1 and "not found" in missing.err


def test_leave_without_an_interface_deletes_the_device_and_key(
    admin: Cli, server: RunningServer
) -> None:
    admin.ok("team", "create", "dv-c")
    alice = _person(admin, server, "dv-c", "alice", "member")
    alice.ok("device", "register", "laptop")
    key_file = alice.home / ".local" / "share" / "kled" / "devices" / "dv-c" / "laptop.key"
    assert key_file.exists()
    assert alice.ok("device", "leave", "laptop").strip() == "device/laptop left team dv-c"
    assert not key_file.exists()
    assert "laptop" not in alice.ok("device", "list", "-o", "json")

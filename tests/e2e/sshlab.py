"""A real OpenSSH server on a lab host, for ``kled node add --ssh`` (tests and bench).

``sshd_on(mesh, host, folder)`` runs Debian's ``sshd -D -f <config>`` in lab host ``host``
(198.18.0.<host>:2222) with a throwaway host key and an ``authorized_keys`` in ``folder``
holding the client key ``folder/id`` (``folder/other`` is a key it refuses; with
``folder/nopy`` the machine has no python3 on its PATH). It enters the
host's network namespace with ``nsenter``, not ``ip netns exec``, so that it shares the
mount namespace as a real machine's sshd does (the namespaces an agent it starts makes must
be visible). On exit sshd and whatever runs from an install under ``installs`` (the loop,
the agent) are killed, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
from agentlab import Mesh, eventually

SSHD = "/usr/sbin/sshd"
PORT = 2222


def sshd_skip_reason() -> str | None:
    if shutil.which(SSHD) is None or shutil.which("ssh") is None:
        return "needs Debian's openssh-server and openssh-client (make apt)"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def kill_under(prefix: Path) -> None:
    """Whatever runs from an install under ``prefix`` (the loop and the agent)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(prefix) in part for part in p.info["cmdline"] or []):
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@contextlib.contextmanager
def sshd_on(mesh: Mesh, host: int, folder: Path, installs: Path) -> Iterator[Path]:
    folder.mkdir(parents=True)
    _keygen(folder / "host_key")
    _keygen(folder / "id")
    _keygen(folder / "other")
    _keygen(folder / "nopy")
    # a machine without python3, as the key ``nopy`` sees it: a PATH with the probe's
    # other tools only
    bare = folder / "nopy-bin"
    bare.mkdir()
    for tool in ("hostname", "id", "uname", "sh", "cat"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    nopy = f'environment="PATH={bare}" ' + (folder / "nopy.pub").read_text()
    (folder / "authorized_keys").write_text((folder / "id.pub").read_text() + nopy)
    config = folder / "sshd_config"
    config.write_text(
        f"Port {PORT}\nListenAddress {mesh.lab.underlay_ip(host)}\n"
        f"HostKey {folder / 'host_key'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        f"PidFile {folder / 'sshd.pid'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nPermitUserEnvironment yes\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{mesh.lab.host(host)}", SSHD, "-D", "-e", "-f",
             str(config)],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
    try:
        eventually(lambda: (folder / "sshd.pid").exists() or proc.poll() is not None, "sshd")
        assert proc.poll() is None, (folder / "sshd.log").read_text()
        yield folder
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_under(installs)

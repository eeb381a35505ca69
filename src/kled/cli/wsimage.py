"""``kled ws image build``: the preload image, made from Debian packages with no registry.

A workspace whose repository has no devcontainer.json runs in ``kled/preload``: git,
Python with pip and venv, Node.js with npm, build-essential, the ``kled`` CLI, and a
non-root user ``dev`` (uid 1000) who installs language packages without sudo (pip installs
into ``~/.local`` and npm's prefix is ``~/.npm-global``, both on ``PATH``). No registry is
reachable here, so the root filesystem comes from ``debootstrap`` against the Debian mirror
named in apt's sources, and ``podman import`` turns it into an image. ``plan`` is the pure
part (the mirror, the commands, the image's settings), tested as data; ``build`` runs it.
The build takes minutes, so an existing tag is kept unless ``--rebuild``.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from kled.cli import agentbundle
from kled.cli.output import note, out
from kled.errors import InvalidInput, Unavailable
from kled.workspace.discovery import find_configs
from kled.workspace.projects import PRELOAD_IMAGE, PRELOAD_USER, preload_config

DEFAULT_TAG = PRELOAD_IMAGE  # the node falls back to it for a git source too
SUITE = "bookworm"
PACKAGES = (
    "ca-certificates", "git", "openssh-client", "curl", "less", "procps", "sudo",
    "python3", "python3-pip", "python3-venv", "nodejs", "npm", "build-essential",
)  # fmt: skip
USER = PRELOAD_USER
UID = 1000
#: where the kled CLI lives in the image (a venv of its own, /usr/local/bin/kled links to it)
KLED_PREFIX = "/opt/kled"
IMAGE_ENV = {
    "PATH": f"/home/{USER}/.local/bin:/home/{USER}/.npm-global/bin:"
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": f"/home/{USER}",
    "LANG": "C.UTF-8",
}

app = typer.Typer(no_args_is_help=True)


@dataclass(frozen=True)
class Plan:
    """What ``build`` does, in order: commands run on this machine (as root)."""

    mirror: str
    steps: list[list[str]]
    changes: list[str]
    """``podman import --change`` lines: the image's user, folder, environment and command."""


def mirror_from(sources: str) -> str | None:
    """The Debian mirror of apt's sources (deb822 ``URIs:`` or one-line ``deb URL``)."""
    for line in sources.splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
        if m and not m.group(1).rstrip("/").endswith("-security"):
            return m.group(1)
    return None


def read_mirror(etc: Path = Path("/etc/apt")) -> str:
    texts = []
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    mirror = mirror_from("\n".join(texts))
    if mirror is None:
        raise Unavailable(f"no Debian mirror in {etc}/sources.list*: debootstrap needs one")
    return mirror


def _chroot(root: Path, script: str) -> list[str]:
    return ["chroot", str(root), "/bin/sh", "-ec", script]


def plan(root: Path, mirror: str, bundle: Path, tag: str) -> Plan:
    """The commands that make ``tag`` from ``mirror``, building the tree in ``root``."""
    home = f"/home/{USER}"
    site = f"{KLED_PREFIX}/lib/python3.11/site-packages"
    launcher = str(root / "usr" / "local" / "bin" / "kled")
    user_setup = "; ".join(
        [
            f"useradd --create-home --shell /bin/bash --uid {UID} {USER}",
            f"mkdir -p {home}/.config/pip {home}/.npm-global {home}/.local/bin",
            # bookworm's pip refuses to install outside a venv (PEP 668) unless told: the
            # user's packages go to ~/.local, never into the system's site-packages.
            f"printf '[global]\\nuser = true\\nbreak-system-packages = true\\n'"
            f" > {home}/.config/pip/pip.conf",
            f"printf 'prefix=%s\\n' {home}/.npm-global > {home}/.npmrc",
            f"chown -R {USER}:{USER} {home}",
            f"echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}",
            f"chmod 0440 /etc/sudoers.d/{USER}",
        ]
    )
    kled_setup = "; ".join(
        [
            f"python3 -m venv --without-pip {KLED_PREFIX}",
            f"tar -xzf /tmp/kled-bundle.tar.gz -C {site}",
            "rm /tmp/kled-bundle.tar.gz",
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        ]
    )
    # debootstrap only the base: configuring npm's hundred node-* packages inside
    # debootstrap's own ordering fails; apt-get in the finished base does it properly.
    install = (
        "apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        f"--no-install-recommends {' '.join(PACKAGES)}"
    )
    steps = [
        ["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE, str(root),
         mirror],
        ["mount", "-t", "proc", "proc", str(root / "proc")],
        _chroot(root, install),
        ["umount", str(root / "proc")],
        _chroot(root, user_setup),
        ["cp", str(bundle), str(root / "tmp" / "kled-bundle.tar.gz")],
        _chroot(root, kled_setup),
        ["sh", "-c", f"printf %s {shlex.quote(agentbundle.launcher(f'{KLED_PREFIX}/bin/python'))}"
         f" > {shlex.quote(launcher)} && chmod 0755 {shlex.quote(launcher)}"],
        ["sh", "-c", f"tar -C {shlex.quote(str(root))} -c . | podman import "
         + " ".join(f"--change {shlex.quote(c)}" for c in _changes()) + f" - {shlex.quote(tag)}"],
    ]  # fmt: skip
    return Plan(mirror=mirror, steps=steps, changes=_changes())


def _changes() -> list[str]:
    env = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()]
    return [*env, f"USER {USER}", f"WORKDIR /home/{USER}", 'CMD ["/bin/bash"]']


def wants_preload(folder: Path, config: str | None) -> bool:
    """True when ``kled ws up`` of ``folder`` should run in the preload image: no
    ``--config`` and no devcontainer.json anywhere discovery looks."""
    return config is None and not find_configs(folder)


def with_preload_config(archive: bytes, tag: str = DEFAULT_TAG) -> bytes:
    """The source archive (a gzipped tar) with a ``.devcontainer.json`` naming ``tag``.

    Added to the uploaded copy only, never to the user's folder; the node then reads it
    as it reads any repository's. Deterministic bytes, as the archive's are.
    """
    config = json.dumps(preload_config(tag, USER), indent=2)
    raw = io.BytesIO(gzip.decompress(archive))
    with tarfile.open(fileobj=raw, mode="a", format=tarfile.PAX_FORMAT) as tar:
        body = (config + "\n").encode()
        info = tarfile.TarInfo(".devcontainer.json")
        info.size, info.mode = len(body), 0o644
        tar.addfile(info, io.BytesIO(body))
    out_buf = io.BytesIO()
    with gzip.GzipFile(fileobj=out_buf, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out_buf.getvalue()


def image_exists(tag: str) -> bool:
    done = subprocess.run(["podman", "image", "exists", tag], capture_output=True, check=False)
    return done.returncode == 0


def _run(step: list[str]) -> None:
    done = subprocess.run(step, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{step[0]} failed ({done.returncode}): {' / '.join(last)}")


def build_image(tag: str, rebuild: bool) -> bool:
    """Build ``tag``; False when it existed and ``rebuild`` was not asked."""
    for tool in ("debootstrap", "podman", "chroot"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (Debian: apt-get install {tool})")
    if not rebuild and image_exists(tag):
        return False
    old = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    mirror = read_mirror()
    with tempfile.TemporaryDirectory(prefix="kled-preload-") as tmp:
        bundle = agentbundle.build(Path(tmp) / "bundle.tar.gz")
        the_plan = plan(Path(tmp) / "root", mirror, bundle, tag)
        try:
            for i, step in enumerate(the_plan.steps, start=1):
                note(f"[{i}/{len(the_plan.steps)}] {' '.join(step).splitlines()[0][:100]}")
                _run(step)
        finally:
            _unmount_under(Path(tmp))
    if old:
        # the image --rebuild replaced, untagged now; kept if a container still uses it
        subprocess.run(["podman", "rmi", old], capture_output=True, check=False)
    return True


def _unmount_under(folder: Path) -> None:
    """Unmount what a failed step left mounted in the tree, before the tree is removed."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@app.command("build")
def build_command(
    tag: Annotated[str, typer.Option("--tag", help="The image's name.")] = DEFAULT_TAG,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build again even when the tag exists.")
    ] = False,
) -> None:
    """Build the preload image (debootstrap + podman import; minutes, cached by tag)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*", tag):
        raise InvalidInput(f"--tag {tag!r}: lower-case letters, digits, . _ / : -", field="--tag")
    started = time.monotonic()
    if not build_image(tag, rebuild):
        out(f"image {tag} exists (--rebuild to build it again)")
        return
    out(f"image {tag} built in {time.monotonic() - started:.0f} s")

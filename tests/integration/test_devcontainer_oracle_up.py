"""``kled ws up`` beside the reference CLI's ``devcontainer up``, on the same configs.

For each config below, written into a folder of its own, the reference
(``@devcontainers/cli``, pinned in the Makefile) runs ``up`` on this machine's podman and
then ``exec`` of one probe; Kled runs ``kled ws up`` of the same folder (a real ``kled
server`` and ``kled agent``, the same podman) and ``kled ws exec`` of the same probe. The
probe prints what a user inside sees: the environment, ``id -un``, ``pwd``, the lines the
lifecycle hooks appended to a log (each hook writes its name, user, folder and an
environment variable, so their order and setting are compared), and what the case asks
for. Both must be equal, but for the differences Kled intends (``INTENDED``, listed in
docs/workspaces.md).

The base image is made here from busybox (no registry): root and a user ``vscode``, an
``/etc/os-release``, a writable ``/tmp``. Rootful podman refuses the reference's
``--userns=keep-id`` and this sandbox podman's default rlimits, so the reference runs
podman through a wrapper (written into the test's folder) that drops the one and adds
the other, as Kled's agent does (``engine_flags``).
"""

from __future__ import annotations

import getpass
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostkit import Hosts, eventually

from imagekit import podman
from kled.workspace.variables import (
    CONFIG_FILE_LABEL,
    LOCAL_FOLDER_LABEL,
    devcontainer_id,
    id_labels,
)

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / ".tools" / "node_modules" / ".bin" / "devcontainer"
PODMAN = shutil.which("podman")


def _why_skip() -> str | None:
    if not ORACLE.exists():
        return f"{ORACLE} is missing: run `make oracle` (needs npm)"
    if shutil.which("node") is None:
        return "node is not installed"
    if PODMAN is None or shutil.which("busybox") is None or os.geteuid() != 0:
        return "needs root, podman and busybox-static"
    return None


pytestmark = [
    pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or ""),
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.xdist_group("workspaces"),
]

SUFFIX = f"{os.getpid()}-{random.randint(1000, 9999)}"
TEAM = f"wso-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-oracle-up:{SUFFIX}"
UP_TIMEOUT = 600  # guards a hang only
#: the client environment both see (``${localEnv:…}``)
CLIENT_ENV = {"KLED_ORACLE_USER": "ann", "KLED_ORACLE_EMPTY": ""}

#: Where Kled differs on purpose (docs/workspaces.md, "Where Kled differs … up"):
#: environment variables only one side sets, and why.
INTENDED_ENV = {
    # the container's name: Kled names it after the workspace (its DNS name on the mesh)
    "HOSTNAME",
    # the shell's own bookkeeping: ``kled ws exec`` starts one more shell level
    "SHLVL",
}

#: Kled's own variables (the ``kled`` CLI inside finds its server and team by them)
KLED_OWN = ("KLED_",)

#: what every hook appends to the log: its name, user, folder and one variable
HOOK = 'echo "{hook} $(id -un) $(pwd) ${{HOOK_VAR:-none}}" >> /tmp/hooks.log'

PROBE = (
    'env | LC_ALL=C sort; echo "=== id"; id -un; echo "=== pwd"; pwd; '
    'echo "=== hooks"; cat /tmp/hooks.log 2>/dev/null; echo "=== extra"; {extra}'
)


@dataclass
class Case:
    name: str
    config: dict[str, Any]
    #: more files of the folder, relative to it
    files: dict[str, str] = field(default_factory=dict)
    #: the config's path (the reference's and Kled's ``--config``); None: discovery
    config_path: str = ".devcontainer/devcontainer.json"
    explicit: bool = False
    #: more of the probe, its output compared too
    extra: str = "true"
    #: hooks run in parallel (an object's commands): their lines compared sorted
    parallel: bool = False
    #: files initializeCommand writes into the folder: removed after the reference's run,
    #: so Kled's must write them again
    client_files: tuple[str, ...] = ()


def hooks(*names: str) -> dict[str, Any]:
    return {name: HOOK.format(hook=name) for name in names}


ALL_HOOKS = ("onCreateCommand", "updateContentCommand", "postCreateCommand", "postStartCommand")


def _feature(name: str, meta: dict[str, Any], install: str) -> dict[str, str]:
    base = f".devcontainer/{name}"
    return {
        f"{base}/devcontainer-feature.json": json.dumps({"id": name, "version": "1.0.0", **meta}),
        f"{base}/install.sh": "#!/bin/sh\nset -e\n" + install,
    }


def cases() -> list[Case]:
    vol = f"kled-oracle-cache-{SUFFIX}"
    return [
        Case(
            "env-image",
            {
                "image": IMAGE,
                "containerEnv": {"FROM_CONTAINER": "c1", "HOOK_VAR": "from-container"},
                "remoteEnv": {
                    "FROM_REMOTE": "r-${containerEnv:FROM_CONTAINER}",
                    "HOOK_VAR": "from-remote",
                    "PATH": "${containerEnv:PATH}:/opt/extra",
                },
                **hooks(*ALL_HOOKS, "postAttachCommand"),
            },
        ),
        Case(
            "variables",
            {
                "image": IMAGE,
                "containerEnv": {
                    "LOCAL_USER": "${localEnv:KLED_ORACLE_USER}",
                    "LOCAL_DEFAULT": "${localEnv:KLED_ORACLE_UNSET:fallback}",
                    "LOCAL_EMPTY": "${localEnv:KLED_ORACLE_EMPTY:notused}",
                    "ENV_ALIAS": "${env:KLED_ORACLE_USER}",
                    "BASENAME": "${localWorkspaceFolderBasename}",
                    "CWF": "${containerWorkspaceFolder}",
                    "CWF_BASE": "${containerWorkspaceFolderBasename}",
                    "UNKNOWN": "${notAVariable}",
                    "ID": "${devcontainerId}",
                },
                "remoteEnv": {
                    "HOOK_VAR": "${containerEnv:LOCAL_USER}-${containerEnv:NOPE:dflt}",
                    "FROM_IMAGE": "${containerEnv:GREETING}",
                },
                **hooks("postCreateCommand"),
            },
        ),
        Case(
            "remote-user",
            {"image": IMAGE, "remoteUser": "vscode", **hooks(*ALL_HOOKS)},
            extra="echo $HOME; ls -ld /workspaces/remote-user | cut -c1-10",
        ),
        Case(
            "container-user",
            {"image": IMAGE, "containerUser": "vscode", **hooks("onCreateCommand")},
            extra="echo $HOME; cat /proc/1/status | grep ^Uid | cut -f2",
        ),
        Case(
            "folder-and-mount",
            {
                "image": IMAGE,
                "workspaceMount": "source=${localWorkspaceFolder},target=/src,type=bind",
                "workspaceFolder": "/src/sub",
                "containerEnv": {"CWF": "${containerWorkspaceFolder}"},
                **hooks("postCreateCommand"),
            },
            files={"sub/hello.txt": "hello\n"},
            extra="cat hello.txt; ls /workspaces 2>&1 | wc -l",
        ),
        Case(
            "lifecycle-forms",
            {
                "image": IMAGE,
                "onCreateCommand": HOOK.format(hook="onCreateCommand"),
                "updateContentCommand": [
                    "/bin/sh",
                    "-c",
                    HOOK.format(hook="updateContentCommand"),
                ],
                "postCreateCommand": {
                    "one": HOOK.format(hook="postCreateCommand.one"),
                    "two": ["/bin/sh", "-c", HOOK.format(hook="postCreateCommand.two")],
                },
                "postStartCommand": ["/bin/sh", "-c", HOOK.format(hook="postStartCommand")],
                "postAttachCommand": {"only": HOOK.format(hook="postAttachCommand")},
                "remoteEnv": {"HOOK_VAR": "remote"},
                "initializeCommand": {
                    "a": ["/bin/sh", "-c", "echo a-$KLED_ORACLE_USER > init-a.txt"],
                    "b": "echo b-$(basename $PWD) > init-b.txt",
                },
            },
            parallel=True,
            extra="cat init-a.txt init-b.txt",
            client_files=("init-a.txt", "init-b.txt"),
        ),
        Case(
            "local-feature",
            {
                "image": IMAGE,
                "features": {"./greeter": {"greeting": "hi there", "loud": True}},
                **hooks("postCreateCommand"),
            },
            files=_feature(
                "greeter",
                {
                    "options": {
                        "greeting": {"type": "string", "default": "hello"},
                        "loud": {"type": "boolean", "default": False},
                        "name": {"type": "string", "default": "world"},
                    },
                    "containerEnv": {"HOOK_VAR": "from-feature", "GREETER": "installed"},
                    "postCreateCommand": HOOK.format(hook="feature.postCreateCommand"),
                },
                'echo "$GREETING/$LOUD/$NAME" > /greeter.txt\n',
            ),
            extra="cat /greeter.txt",
        ),
        Case(
            "dockerfile-build",
            {
                "build": {
                    "dockerfile": "Dockerfile",
                    "args": {"WHO": "${localEnv:KLED_ORACLE_USER}", "STAGE_NOTE": "dev"},
                    "target": "dev",
                },
                **hooks("postCreateCommand"),
            },
            files={
                ".devcontainer/Dockerfile": (
                    f"FROM {IMAGE} AS base\nARG WHO=nobody\nRUN echo built-for-$WHO > /built\n"
                    "ENV HOOK_VAR=from-dockerfile\n"
                    "FROM base AS dev\nARG STAGE_NOTE\nRUN echo $STAGE_NOTE > /stage\n"
                    "FROM base AS prod\nRUN echo prod > /stage\n"
                )
            },
            extra="cat /built /stage",
        ),
        Case(
            "volume-mount",
            {
                "image": IMAGE,
                "remoteUser": "vscode",
                "mounts": [
                    f"source={vol},target=/cache,type=volume",
                    {"type": "tmpfs", "target": "/scratch"},
                ],
                "postCreateCommand": "echo created > /tmp/created; ls -d /cache /scratch && "
                + HOOK.format(hook="postCreateCommand"),
            },
            extra="cat /tmp/created; grep -c ' /cache ' /proc/mounts; "
            "grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
        ),
        Case(
            "override-command-false",
            {"image": IMAGE, "overrideCommand": False, **hooks("postStartCommand")},
            extra="tr '\\0' ' ' < /proc/1/cmdline; echo",
        ),
        Case(
            "monorepo-api",
            {
                "name": "api",
                "image": IMAGE,
                "workspaceFolder": "/workspaces/monorepo-api/services/api",
                "containerEnv": {"SERVICE": "api"},
                **hooks("postCreateCommand"),
            },
            files={
                "services/api/main.txt": "the api\n",
                ".devcontainer/web/devcontainer.json": json.dumps({"image": IMAGE}),
            },
            config_path=".devcontainer/api/devcontainer.json",
            explicit=True,
            extra="cat main.txt",
        ),
        Case(
            "root-dot-devcontainer",
            {
                "image": IMAGE,
                "remoteEnv": {"HOOK_VAR": "${localEnv:KLED_ORACLE_USER}"},
                "initializeCommand": "echo init-$KLED_ORACLE_USER > init.txt",
                **hooks("onCreateCommand", "postStartCommand"),
            },
            config_path=".devcontainer.json",
            extra="cat init.txt",
            client_files=("init.txt",),
        ),
    ]


CASES = cases()

# ---- the image and the reference's podman --------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("rootfs")
    busybox = shutil.which("busybox")
    assert busybox is not None
    for folder in ("bin", "etc", "root", "home/vscode", "workspaces"):
        (root / folder).mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.chown(root / "home" / "vscode", 1000, 1000)
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nvscode:x:1000:1000::/home/vscode:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nvscode:x:1000:\n")
    (root / "etc" / "os-release").write_text("ID=busybox\nVERSION_ID=1\n")
    # what login shells add (userEnvProbe): both must see it in hooks and sessions
    (root / "etc" / "profile").write_text(
        'export PROFILE_VAR=from-profile\nexport PATH="/opt/profile/bin:$PATH"\n'
    )
    (root / "home" / "vscode" / ".profile").write_text("export VSCODE_PROFILE=yes\n")
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
    changes = ["ENV PATH=/bin:/usr/bin", "ENV GREETING=hello", 'CMD ["sleep", "100000"]']
    args = [arg for change in changes for arg in ("--change", change)]
    done = subprocess.run(
        ["podman", "import", "-q", *args, "-", IMAGE], input=tar.stdout, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    try:
        yield IMAGE
    finally:
        podman("rmi", "-f", IMAGE)


WRAPPER = """#!/bin/sh
# The reference's podman on this host: rootful (no --userns=keep-id) and this sandbox's
# rlimits, as Kled's agent runs it.
case "$1" in
  run|create|build)
    sub=$1; shift
    for a in "$@"; do shift; [ "$a" = "--userns=keep-id" ] || set -- "$@" "$a"; done
    exec {podman} "$sub" {flags} "$@";;
esac
exec {podman} "$@"
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    from kled.agent.runtime.container import engine_flags

    assert PODMAN is not None
    root = tmp_path_factory.mktemp("reference")
    global_flags, run_flags = engine_flags(PODMAN)
    wrapper = root / "podman"
    wrapper.write_text(
        WRAPPER.format(podman=" ".join([PODMAN, *global_flags]), flags=" ".join(run_flags))
    )
    wrapper.chmod(0o755)
    tmp = root / "tmp"
    # ``up`` fetches a control manifest from containers.dev unless a fresh copy is cached
    cache = tmp / f"devcontainercli-{getpass.getuser()}"
    cache.mkdir(parents=True)
    (cache / "control-manifest.json").write_text('{"disallowedFeatures":[],"featureAdvisories":[]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env.update(CLIENT_ENV, TMPDIR=str(tmp))
    ref = Reference(wrapper, env)
    try:
        yield ref
    finally:
        ref.clean()


class Reference:
    def __init__(self, wrapper: Path, env: dict[str, str]) -> None:
        self.wrapper = wrapper
        self.env = env
        self.folders: list[Path] = []

    def _args(self, command: str, folder: Path, case: Case) -> list[str]:
        args = [str(ORACLE), command, "--workspace-folder", str(folder)]
        args += ["--docker-path", str(self.wrapper)]
        if case.explicit:
            args += ["--config", str(folder / case.config_path)]
        return args

    def up(self, folder: Path, case: Case) -> dict[str, Any]:
        self.folders.append(folder)
        done = subprocess.run(
            self._args("up", folder, case),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT,
        )
        outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "success", done.stderr[-3000:]
        return outcome

    def exec(self, folder: Path, case: Case, script: str) -> str:
        done = subprocess.run(
            [*self._args("exec", folder, case), "/bin/sh", "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def clean(self) -> None:
        for folder in self.folders:
            found = podman("ps", "-aq", "--filter", f"label=devcontainer.local_folder={folder}")
            for ident in found.stdout.split():
                podman("rm", "-f", "-t", "0", ident)
        images = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
        for tag in images.stdout.split():
            if tag.startswith("localhost/vsc-") and any(
                f"vsc-{f.name}-" in tag for f in self.folders
            ):
                podman("rmi", "-f", tag)
        podman("volume", "rm", "-f", f"kled-oracle-cache-{SUFFIX}")


# ---- Kled's side ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("kled")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("oracle-node")
        eventually(lambda: h.node_phase("oracle-node") == "Ready", "node oracle-node Ready")
        yield h
    finally:
        for case in CASES:
            h.cli("ws", "delete", case.name, "--yes")
        h.close([])
        for case in CASES:
            podman("rm", "-f", "-t", "0", f"kled-ws-{TEAM}-{case.name}")
        volumes = podman("volume", "ls", "-q", "--filter", "label=kled.workspace")
        for name in volumes.stdout.split():
            if TEAM in name:
                podman("volume", "rm", "-f", name)
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
        for tag in listed.stdout.split():
            if f"kled-ws/{TEAM}-" in tag:
                podman("rmi", "-f", tag)


# ---- what is compared -----------------------------------------------------------------


def parse(output: str) -> dict[str, Any]:
    sections: dict[str, list[str]] = {"env": []}
    current = "env"
    for line in output.splitlines():
        if line.startswith("=== "):
            current = line[4:]
            sections[current] = []
        else:
            sections[current].append(line)
    env = dict(line.split("=", 1) for line in sections["env"] if "=" in line)
    return {
        "env": env,
        "id": sections["id"],
        "pwd": sections["pwd"],
        "hooks": sections["hooks"],
        "extra": sections["extra"],
    }


def write(folder: Path, case: Case) -> None:
    config = folder / case.config_path
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("// written by the oracle test\n" + json.dumps(case.config, indent=2))
    for rel, text in case.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def comparable(seen: dict[str, Any], case: Case) -> dict[str, Any]:
    env = {
        k: v for k, v in seen["env"].items() if k not in INTENDED_ENV and not k.startswith(KLED_OWN)
    }
    hooks_seen: Any = seen["hooks"]
    if case.parallel:
        # an object's commands run at once: their lines in any order, the hooks in order
        names = [line.split()[0].split(".")[0] for line in hooks_seen]
        hooks_seen = ([n for i, n in enumerate(names) if not i or names[i - 1] != n],
                      sorted(hooks_seen))  # fmt: skip
    return {**seen, "env": env, "hooks": hooks_seen}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kled_up_matches_the_reference_up(
    tmp_path: Path, case: Case, hosts: Hosts, reference: Reference
) -> None:
    folder = tmp_path / case.name
    write(folder, case)
    probe = PROBE.format(extra=case.extra)

    reference.up(folder, case)
    theirs = parse(reference.exec(folder, case, probe))
    for name in case.client_files:
        (folder / name).unlink()  # the reference's initializeCommand wrote it; Kled's must too

    args = ["ws", "up", str(folder)]
    if case.explicit:
        args += ["--config", case.config_path]
    up = hosts.cli(*args, env=CLIENT_ENV, timeout=UP_TIMEOUT)
    assert up.code == 0, up
    done = hosts.cli("ws", "exec", case.name, "--no-stdin", "--", "/bin/sh", "-c", probe)
    assert done.code == 0, done
    ours = parse(done.out)
    # an SSH session (OpenSSH's client through `kled ws proxy`) sees what exec sees
    ssh = hosts.cli("ws", "ssh", case.name, "--", "/bin/sh", "-c", probe, timeout=120)
    assert ssh.code == 0, ssh
    over_ssh = parse(ssh.out)
    for seen in (over_ssh, ours):
        for key in [k for k in seen["env"] if k.startswith(("SSH_", *KLED_OWN))]:
            seen["env"].pop(key)
    assert over_ssh == ours, _differ(over_ssh, ours)

    # ${devcontainerId} and ${localWorkspaceFolder} name the folder each side mounts: the
    # user's here, the node's copy for Kled. Each must be the id of its own container.
    for seen, container in (
        (theirs, _reference_container(folder)),
        (ours, f"kled-ws-{TEAM}-{case.name}"),
    ):
        labels = json.loads(
            podman("inspect", "--format", "{{json .Config.Labels}}", container).stdout
        )
        if "ID" in seen["env"]:
            mine = id_labels(labels[LOCAL_FOLDER_LABEL], labels[CONFIG_FILE_LABEL])
            assert seen["env"].pop("ID") == devcontainer_id(mine)
    assert theirs["id"] and theirs["pwd"] and theirs["env"], "the probe ran in the reference"
    if any(key.endswith("Command") for key in case.config):
        assert theirs["hooks"], "the reference ran the hooks"
    print(json.dumps({"case": case.name, "reference": theirs, "kled": ours}))  # in -s runs
    assert comparable(ours, case) == comparable(theirs, case), _differ(
        comparable(ours, case), comparable(theirs, case)
    )


def _differ(left: dict[str, Any], right: dict[str, Any]) -> str:
    """What differs, readably: each variable of one side's env that the other lacks or
    has another value of, and every other part that differs."""
    out = []
    for key in sorted(set(left["env"]) | set(right["env"])):
        if left["env"].get(key) != right["env"].get(key):
            out.append(f"env {key}: {left['env'].get(key)!r} vs {right['env'].get(key)!r}")
    out += [f"{part}: {left[part]!r} vs {right[part]!r}" for part in left if part != "env"
            and left[part] != right.get(part)]  # fmt: skip
    return "; ".join(out)


def _reference_container(folder: Path) -> str:
    found = podman("ps", "-q", "--filter", f"label=devcontainer.local_folder={folder}")
    return found.stdout.split()[0]

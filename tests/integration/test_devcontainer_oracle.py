"""Kled's reading of devcontainer.json beside the reference CLI's, on the same configs.

The oracle is ``@devcontainers/cli`` (pinned in the Makefile, installed into ``.tools/``
by ``make deps``). For each config below, written into a fresh folder, the test runs
``devcontainer read-configuration`` and compares what it resolved with what Kled
resolved: the workspace folder and mount, every substituted value of the file, and the
install order of local features. ``read-configuration`` needs no container, so nothing
runs but the two readers.

The CLI asks the engine whether the workspace already has a container (``ps --filter
label=…``); its ``--docker-path`` here is a stub that answers "none", the state being
compared. A real podman would add only the chance of finding a stray container, and
it cannot take a folder with a comma in a label filter (the reference then fails).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kled.workspace.devcontainer import load_config
from kled.workspace.discovery import git_root, select_config
from kled.workspace.features import resolve_features
from kled.workspace.jsonc import ConfigError

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / ".tools" / "node_modules" / ".bin" / "devcontainer"


def _why_skip() -> str | None:
    if not ORACLE.exists():
        return f"{ORACLE} is missing: run `make oracle` (needs npm)"
    if shutil.which("node") is None:
        return "node is not installed"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")

#: the client environment both readers see
ENV_EXTRA = {"KLED_ORACLE_USER": "ann", "KLED_ORACLE_EMPTY": "", "KLED_ORACLE_PY": "3.11"}


@dataclass
class Case:
    name: str
    files: dict[str, str]
    #: the workspace folder, relative to the case's folder
    workspace: str = "ws"
    config: str | None = None
    features: bool = False
    prepare: Callable[[Path], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _feature(name: str, **meta: Any) -> dict[str, str]:
    base = f"ws/.devcontainer/{name}"
    return {
        f"{base}/devcontainer-feature.json": json.dumps({"id": name, "version": "1.0.0", **meta}),
        f"{base}/install.sh": "#!/bin/sh\necho installing\n",
    }


def _git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root / "repo")], check=True)


CASES = [
    Case(
        "jsonc-image",
        {
            "ws/.devcontainer/devcontainer.json": """// comments and trailing commas
{
  "name": "plain", /* block */
  "image": "debian:12",
  "runArgs": ["--init",],
  "customizations": {"vscode": {"extensions": ["a.b",],},},
}
"""
        },
    ),
    Case(
        "build-context-args",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "build": {
                        "dockerfile": "Dockerfile",
                        "context": "..",
                        "args": {
                            "PY": "${localEnv:KLED_ORACLE_PY:3.12}",
                            "NODE": "${localEnv:KLED_ORACLE_NODE:20}",
                        },
                        "target": "dev",
                        "options": ["--network=host"],
                    }
                }
            ),
            "ws/.devcontainer/Dockerfile": "FROM debian:12\n",
        },
    ),
    Case(
        "root-dot-devcontainer-json",
        {"ws/.devcontainer.json": '{"image": "alpine:3", "workspaceFolder": "/code"}'},
    ),
    Case(
        "local-features-order",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "features": {
                        "./zeta": {"flavour": "full"},
                        "./alpha": True,
                        "./beta": "2.0",
                        "./gamma": {},
                    },
                    "overrideFeatureInstallOrder": ["./gamma"],
                }
            ),
            **_feature(
                "zeta",
                installsAfter=["./alpha"],
                options={"flavour": {"type": "string", "default": "slim"}},
            ),
            **_feature("alpha"),
            **_feature(
                "beta",
                dependsOn={"./delta": {}},
                options={"version": {"type": "string", "default": "1"}},
            ),
            **_feature("gamma"),
            **_feature("delta"),
        },
        features=True,
    ),
    Case(
        "mounts-both-forms",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "mounts": [
                        "source=cache-${localEnv:KLED_ORACLE_USER},target=/cache,type=volume",
                        {
                            "type": "bind",
                            "source": "${localWorkspaceFolder}/data",
                            "target": "/data",
                        },
                        {
                            "type": "volume",
                            "source": "${localWorkspaceFolderBasename}-home",
                            "target": "/home/dev",
                        },
                        "type=bind,src=/etc/hosts,dst=/etc/hosts2,readonly",
                    ],
                }
            )
        },
    ),
    Case(
        "forward-ports",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "forwardPorts": [3000, "db:5432", 8080],
                    "portsAttributes": {"3000": {"label": "web", "onAutoForward": "notify"}},
                    "appPort": [9000],
                }
            )
        },
    ),
    Case(
        "lifecycle-forms",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "initializeCommand": "echo ${localWorkspaceFolderBasename}",
                    "onCreateCommand": ["echo", "${containerWorkspaceFolder}"],
                    "updateContentCommand": "make deps",
                    "postCreateCommand": {"a": "echo a", "b": ["echo", "b"]},
                    "postStartCommand": "echo ${localEnv:KLED_ORACLE_USER}",
                    "postAttachCommand": "",
                    "waitFor": "postCreateCommand",
                }
            )
        },
    ),
    Case(
        "variables",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "containerEnv": {
                        "USER_ON_HOST": "${localEnv:KLED_ORACLE_USER}",
                        "ALIAS": "${env:KLED_ORACLE_USER}",
                        "DEFAULTED": "${localEnv:KLED_ORACLE_UNSET:fallback}",
                        "EMPTY_NOT_DEFAULTED": "${localEnv:KLED_ORACLE_EMPTY:fallback}",
                        "UNSET": "${localEnv:KLED_ORACLE_UNSET}",
                        "FOLDER": "${localWorkspaceFolder}",
                        "BASENAME": "${localWorkspaceFolderBasename}",
                        "CFOLDER": "${containerWorkspaceFolder}",
                        "CBASENAME": "${containerWorkspaceFolderBasename}",
                        "ID": "${devcontainerId}",
                        "UNKNOWN": "${notAVariable}",
                    },
                    "remoteEnv": {
                        "PATH": "${containerEnv:PATH}:/opt/bin",
                        "WITH_DEFAULT": "${containerEnv:NOPE:dflt}",
                        "DROPPED": None,
                    },
                    "remoteUser": "${localEnv:KLED_ORACLE_USER}",
                }
            )
        },
    ),
    Case(
        "monorepo-subfolder-config",
        {
            "ws/.devcontainer/devcontainer.json": '{"image": "debian:12", "name": "top"}',
            "ws/.devcontainer/api/devcontainer.json": json.dumps(
                {
                    "name": "api",
                    "build": {"dockerfile": "Dockerfile"},
                    "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}/services/api",
                }
            ),
            "ws/.devcontainer/api/Dockerfile": "FROM debian:12\n",
            "ws/.devcontainer/web/devcontainer.json": '{"image": "node:20", "name": "web"}',
        },
        config=".devcontainer/api/devcontainer.json",
    ),
    Case(
        "workspace-mount-override",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "workspaceMount": "source=${localWorkspaceFolder},"
                    "target=/src/${localWorkspaceFolderBasename},type=bind",
                    "workspaceFolder": "/src/${localWorkspaceFolderBasename}",
                    "containerEnv": {"WS": "${containerWorkspaceFolder}"},
                }
            )
        },
    ),
    Case(
        "git-root-mounted",
        {
            "repo/services/api/.devcontainer/devcontainer.json": (
                '{"image": "debian:12", "containerEnv": {"W": "${containerWorkspaceFolder}"}}'
            )
        },
        workspace="repo/services/api",
        prepare=_git_init,
    ),
    Case(
        "comma-in-folder-name",
        {"a,b/.devcontainer/devcontainer.json": '{"image": "debian:12"}'},
        workspace="a,b",
    ),
    Case(
        "host-requirements-and-more",
        {
            "ws/.devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "hostRequirements": {
                        "cpus": 2,
                        "memory": "4gb",
                        "storage": "32gb",
                        "gpu": "optional",
                    },
                    "overrideCommand": False,
                    "containerUser": "root",
                    "remoteUser": "dev",
                    "capAdd": ["SYS_PTRACE"],
                    "securityOpt": ["seccomp=unconfined"],
                    "unknownProperty": {"kept": True},
                }
            )
        },
    ),
]


def _write(root: Path, case: Case) -> Path:
    if case.prepare:
        case.prepare(root)
    for rel, text in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / case.workspace


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_ORACLE_")}
    env.update(ENV_EXTRA)
    env["TMPDIR"] = str(tmp)  # the CLI caches features under the temp folder
    return env


def _no_engine(tmp: Path) -> Path:
    """A container engine with no containers: ``ps`` lists nothing."""
    stub = tmp / "no-containers"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return stub


def _oracle(workspace: Path, case: Case, env: dict[str, str]) -> dict[str, Any]:
    args = [
        str(ORACLE),
        "read-configuration",
        "--workspace-folder",
        str(workspace),
        "--docker-path",
        str(_no_engine(Path(env["TMPDIR"]))),
        "--log-level",
        "info",
    ]
    if case.config:
        args += ["--config", str(workspace / case.config)]
    if case.features:
        args.append("--include-features-configuration")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kled_resolves_like_the_reference(tmp_path: Path, case: Case) -> None:
    workspace = _write(tmp_path / "case", case)
    env = _env(tmp_path)
    expected = _oracle(workspace, case, env)

    config_file = select_config(workspace, case.config)
    assert config_file is not None
    got = load_config(workspace, config_file, env=env, host_mount_folder=git_root(workspace))

    reference = expected["configuration"]
    assert Path(reference.pop("configFilePath")["fsPath"]) == config_file
    assert got.substituted == reference
    assert got.workspace_folder == expected["workspace"]["workspaceFolder"]
    assert got.workspace_mount == expected["workspace"]["workspaceMount"]
    if case.features:
        sets = expected["featuresConfiguration"]["featureSets"]
        features = resolve_features(got)
        assert [f.user_id for f in features] == [
            s["sourceInformation"]["userFeatureId"] for s in sets
        ]
        assert [f.path for f in features] == [
            Path(s["sourceInformation"]["resolvedFilePath"]) for s in sets
        ]
        assert [f.value for f in features] == [s["features"][0]["value"] for s in sets]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ('{\n "image": "debian:12"\n "name": "no comma before me"\n}', 3, "image"),
        ('{\n "image": "debian:12",\n "containerEnv": {"PORT": 8080}\n}', 3, "containerEnv.PORT"),
    ],
)
def test_where_kled_refuses_what_the_reference_lets_through(
    tmp_path: Path, text: str, line: int, field: str | None
) -> None:
    """An intentional difference: the reference's tolerant parser makes what it can of a
    broken file and passes wrong types on; Kled stops at the first problem, in one line."""
    case = Case("broken", {"ws/.devcontainer/devcontainer.json": text})
    workspace = _write(tmp_path / "case", case)
    env = _env(tmp_path)
    assert _oracle(workspace, case, env)["configuration"]["image"] == "debian:12"
    with pytest.raises(ConfigError) as caught:
        load_config(workspace, workspace / ".devcontainer" / "devcontainer.json", env=env)
    assert (caught.value.line, caught.value.field) == (line, field)


# --- with a container: ${devcontainerId} and ${containerEnv:…} -------------------------
#
# Two variables resolve only once a container exists. Here the reference runs ``up`` on
# real podman, from an image made on the spot of busybox (no registry), and Kled's
# resolution of the same file, given that container's environment, must match what the
# reference then reads back.


def _static_busybox() -> Path | None:
    found = shutil.which("busybox")
    if found is None:
        return None
    data = Path(found).read_bytes()
    return None if b".interp" in data else Path(found)  # a dynamic one needs its libc


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    busybox = _static_busybox()
    if shutil.which("podman") is None or busybox is None:
        pytest.skip("needs podman and a static busybox (Debian busybox-static)")
    root = tmp_path_factory.mktemp("rootfs")
    for folder in ("bin", "etc", "root", "tmp"):
        (root / folder).mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "os-release").write_text("ID=busybox\nVERSION_ID=1\n")
    image = f"localhost/kled-oracle-busybox:{os.getpid()}"
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
    subprocess.run(
        [
            "podman",
            "import",
            "-q",
            "--change",
            "ENV PATH=/bin:/usr/bin",
            "--change",
            "ENV GREETING=hello",
            "-",
            image,
        ],
        input=tar.stdout,
        capture_output=True,
        check=True,
    )
    try:
        yield image
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)


def _seed_control_manifest(tmp: Path) -> None:
    """``up`` fetches a control manifest from containers.dev unless a fresh copy is cached;
    an empty one keeps the run offline."""
    cache = tmp / f"devcontainercli-{getpass.getuser()}"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "control-manifest.json").write_text('{"disallowedFeatures":[],"featureAdvisories":[]}')


@pytest.mark.slow
def test_container_variables_resolve_like_the_reference(tmp_path: Path, busybox_image: str) -> None:
    config = {
        "image": busybox_image,
        # this sandbox refuses podman's default rlimits
        "runArgs": ["--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:32768"],
        "containerEnv": {"ID": "${devcontainerId}", "MINE": "${localEnv:KLED_ORACLE_USER}"},
        "remoteEnv": {
            "P": "${containerEnv:PATH}:/opt/bin",
            "G": "${containerEnv:GREETING}",
            "D": "${containerEnv:NOPE:dflt}",
            "M": "${containerEnv:MINE}",
        },
        "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}/sub",
    }
    case = Case("up", {"ws/.devcontainer/devcontainer.json": json.dumps(config)})
    workspace = _write(tmp_path / "case", case)
    env = _env(tmp_path)
    _seed_control_manifest(tmp_path)
    up = subprocess.run(
        [str(ORACLE), "up", "--workspace-folder", str(workspace), "--docker-path", "podman"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    outcome = json.loads(up.stdout.strip().splitlines()[-1])
    container = outcome.get("containerId")
    try:
        assert outcome["outcome"] == "success", up.stderr[-2000:]
        inspect = subprocess.run(
            ["podman", "inspect", "-f", "{{json .Config.Env}}", container],
            capture_output=True,
            text=True,
            check=True,
        )
        container_env = dict(item.split("=", 1) for item in json.loads(inspect.stdout))
        done = subprocess.run(
            [
                str(ORACLE),
                "read-configuration",
                "--workspace-folder",
                str(workspace),
                "--docker-path",
                "podman",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        reference = json.loads(done.stdout.strip().splitlines()[-1])["configuration"]

        got = load_config(workspace, workspace / ".devcontainer" / "devcontainer.json", env=env)
        live = got.for_container(container_env)
        assert live.container_env == reference["containerEnv"]
        assert (
            live.remote_env
            == reference["remoteEnv"]
            == {
                "P": "/bin:/usr/bin:/opt/bin",
                "G": "hello",
                "D": "dflt",
                "M": "ann",
            }
        )
        # the id Kled computes is the one the reference gave the container
        assert container_env["ID"] == got.devcontainer_id
        assert outcome["remoteWorkspaceFolder"] == got.workspace_folder
    finally:
        if container:
            subprocess.run(["podman", "rm", "-f", container], capture_output=True)


# --- features, built: the options' environment and the install order ------------------
#
# The reference's ``build`` installs local features into an image; each install.sh here
# records its order and copies the env file the reference wrote for it
# (``devcontainer-features.env``), which Kled's ``Feature.env()`` must equal.


def _recording_feature(name: str, **meta: Any) -> dict[str, str]:
    files = _feature(name, **meta)
    files[f"ws/.devcontainer/{name}/install.sh"] = (
        "#!/bin/sh\nset -e\nmkdir -p /kled-env\n"
        f"echo {name} >> /kled-env/order\n"
        # numbered: a feature asked for twice with different options installs twice
        'cp ./devcontainer-features.env "/kled-env/$(wc -l < /kled-env/order).env"\n'
    )
    return files


@pytest.mark.slow
def test_features_build_with_the_env_and_order_kled_computes(
    tmp_path: Path, busybox_image: str
) -> None:
    features = {
        "./web": {"port-number": "8080", "tls": True},
        "./base": True,
        "./node": "20",
        "./lint": {},
    }
    files = {
        "ws/.devcontainer/devcontainer.json": json.dumps(
            {
                "image": busybox_image,
                "features": features,
                "overrideFeatureInstallOrder": ["./lint"],
            }
        ),
        **_recording_feature(
            "web",
            installsAfter=["./node"],
            dependsOn={"./base": {"level": "high"}},
            options={
                "port-number": {"type": "string", "default": "80"},
                "tls": {"type": "boolean", "default": False},
                "9th.option": {"type": "string", "default": "nine"},
            },
        ),
        **_recording_feature("base", options={"level": {"type": "string", "default": "low"}}),
        **_recording_feature("node", options={"version": {"type": "string", "default": "lts"}}),
        **_recording_feature("lint", options={"strict": {"type": "boolean", "default": True}}),
    }
    case = Case("build", files)
    workspace = _write(tmp_path / "case", case)
    env = {**_env(tmp_path), "BUILDAH_LAYERS": "false"}  # no intermediate images left
    _seed_control_manifest(tmp_path)
    image = f"localhost/kled-oracle-built:{os.getpid()}"
    try:
        built = subprocess.run(
            [
                str(ORACLE),
                "build",
                "--workspace-folder",
                str(workspace),
                "--docker-path",
                "podman",
                "--image-name",
                image,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert json.loads(built.stdout.strip().splitlines()[-1])["outcome"] == "success", (
            built.stderr[-3000:]
        )
        got = load_config(workspace, workspace / ".devcontainer" / "devcontainer.json", env=env)
        ours = resolve_features(got)
        names = ["order", *(f"{i}.env" for i in range(1, len(ours) + 1))]
        shown = subprocess.run(
            [
                "podman",
                "run",
                "--rm",
                "--ulimit",
                "nofile=1024:20000",
                "--ulimit",
                "nproc=4096:32768",
                image,
                "sh",
                "-c",
                " && ".join(f"cat /kled-env/{n} && echo ===" for n in names),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        parts = dict(zip(names, shown.stdout.split("===\n"), strict=False))

        # lint first (overrideFeatureInstallOrder); base twice: as asked (true, defaults) and
        # as web's dependency (level=high), true sorting first; web after node and base.
        assert (
            [f.id for f in ours]
            == parts["order"].split()
            == [
                "lint",
                "base",
                "base",
                "node",
                "web",
            ]
        )
        for index, feature in enumerate(ours, start=1):
            written = parts[f"{index}.env"].splitlines()
            reference = dict(line.split("=", 1) for line in written if line)
            assert feature.env() == {k: json.loads(v) for k, v in reference.items()}, feature.id
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)
        subprocess.run(
            ["podman", "rmi", "localhost/dev_container_feature_content_temp"], capture_output=True
        )

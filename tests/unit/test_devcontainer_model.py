"""devcontainer.json → typed, resolved configuration; errors name file, line, property."""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.workspace.devcontainer import ResolvedConfig, load_config
from kled.workspace.jsonc import ConfigError
from kled.workspace.properties import (
    ExecCommand,
    ForwardPort,
    Mount,
    ParallelCommands,
    ShellCommand,
    parse_mount,
    size_bytes,
)

FULL = """{
  // everything the issue lists
  "name": "shop",
  "build": {
    "dockerfile": "Dockerfile",
    "context": "..",
    "args": {"PY": "${localEnv:PY_VERSION:3.12}"},
    "target": "dev",
    "options": ["--network=host"],
  },
  "features": {"./tools": {"flavour": "full"}},
  "workspaceFolder": "/src/${localWorkspaceFolderBasename}",
  "mounts": [
    "source=cache-${localEnv:USER},target=/cache,type=volume",
    {"type": "bind", "source": "${localEnv:HOME}/.ssh", "target": "/home/dev/.ssh"},
    "type=bind,src=/etc/hosts,dst=/etc/hosts2,readonly,consistency=cached",
  ],
  "containerEnv": {"WS": "${containerWorkspaceFolder}"},
  "remoteEnv": {"PATH": "${containerEnv:PATH}:/opt/bin", "DROP": null},
  "remoteUser": "dev",
  "containerUser": "root",
  "runArgs": ["--cap-add=SYS_PTRACE"],
  "forwardPorts": [8080, "db:5432"],
  "portsAttributes": {"8080": {"label": "web", "onAutoForward": "silent", "x-tool": 1}},
  "overrideCommand": false,
  "hostRequirements": {"cpus": 2, "memory": "4gb", "storage": "32gb", "gpu": "optional"},
  "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
  "initializeCommand": "echo init",
  "onCreateCommand": ["pip", "install", "-e", "."],
  "postCreateCommand": {"deps": "make deps", "db": ["./migrate", "--all"]},
  "postStartCommand": "",
  "waitFor": "postCreateCommand",
  "madeUpThing": true,
  "build2": {}
}
"""

ENV = {"HOME": "/home/ann", "USER": "ann"}


def write(root: Path, text: str, rel: str = ".devcontainer/devcontainer.json") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(root: Path, text: str, **kw: object) -> ResolvedConfig:
    path = write(root, text)
    return load_config(root, path, env=ENV, source=".devcontainer/devcontainer.json", **kw)  # type: ignore[arg-type]


def test_every_listed_property_is_typed(tmp_path: Path) -> None:
    ws = tmp_path / "shop"
    got = load(ws, FULL)
    c = got.config
    assert c.name == "shop"
    assert c.build is not None
    assert c.build.args == {"PY": "3.12"}
    assert (c.build.target, c.build.options) == ("dev", ["--network=host"])
    assert got.dockerfile_path == ws / ".devcontainer" / "Dockerfile"
    assert got.build_context == ws  # ".." relative to the json file, not to the workspace
    assert c.features == {"./tools": {"flavour": "full"}}
    assert got.workspace_folder == "/src/shop"
    assert c.mounts == [
        Mount(type="volume", source="cache-ann", target="/cache"),
        Mount(type="bind", source="/home/ann/.ssh", target="/home/dev/.ssh"),
        Mount(
            type="bind",
            source="/etc/hosts",
            target="/etc/hosts2",
            read_only=True,
            options={"consistency": "cached"},
        ),
    ]
    assert c.container_env == {"WS": "/src/shop"}
    assert c.remote_env == {"PATH": "${containerEnv:PATH}:/opt/bin", "DROP": None}
    assert (c.remote_user, c.container_user) == ("dev", "root")
    assert c.run_args == ["--cap-add=SYS_PTRACE"]
    assert c.forward_ports == [ForwardPort(port=8080), ForwardPort(host="db", port=5432)]
    assert [str(p) for p in c.forward_ports] == ["8080", "db:5432"]
    assert c.ports_attributes["8080"].label == "web"
    assert c.ports_attributes["8080"].on_auto_forward == "silent"
    assert c.override_command is False
    hr = c.host_requirements
    assert hr is not None
    assert (hr.cpus, hr.memory_bytes, hr.storage_bytes, hr.gpu) == (
        2,
        4 * 1024**3,
        32 * 1024**3,
        "optional",
    )
    assert c.customizations == {"vscode": {"extensions": ["ms-python.python"]}}
    assert c.initialize_command == ShellCommand(script="echo init")
    assert c.on_create_command == ExecCommand(argv=["pip", "install", "-e", "."])
    assert c.post_create_command == ParallelCommands(
        commands={
            "deps": ShellCommand(script="make deps"),
            "db": ExecCommand(argv=["./migrate", "--all"]),
        }
    )
    assert c.post_start_command is None  # an empty command runs nothing
    assert c.wait_for == "postCreateCommand"


def test_unknown_properties_are_returned_as_one_warning_each(tmp_path: Path) -> None:
    got = load(tmp_path, FULL)
    assert [str(w) for w in got.warnings] == [
        ".devcontainer/devcontainer.json:33: madeUpThing: unknown property, ignored",
        ".devcontainer/devcontainer.json:34: build2: unknown property, ignored",
    ]
    nested = load(tmp_path, '{"image": "x",\n "build": {"dockerfile": "D",\n "squash": true}}')
    assert [w.property for w in nested.warnings] == ["build.squash"]
    assert nested.warnings[0].line == 3


def test_default_workspace_mount_is_the_folder_at_workspaces_basename(tmp_path: Path) -> None:
    ws = tmp_path / "shop"
    got = load(ws, '{"image": "debian:12"}')
    assert got.workspace_folder == "/workspaces/shop"
    assert got.workspace_mount == f"type=bind,source={ws},target=/workspaces/shop"
    spec = got.workspace_mount_spec
    assert spec is not None
    assert (spec.type, spec.source, spec.target) == ("bind", str(ws), "/workspaces/shop")


def test_default_mount_is_the_git_root_when_given_and_folder_is_below_it(tmp_path: Path) -> None:
    repo = tmp_path / "mono"
    ws = repo / "services" / "api"
    got = load(ws, '{"image": "debian:12"}', host_mount_folder=repo)
    assert got.workspace_mount == f"type=bind,source={repo},target=/workspaces/mono"
    assert got.workspace_folder == "/workspaces/mono/services/api"


def test_a_comma_in_the_folder_is_quoted_in_the_mount(tmp_path: Path) -> None:
    ws = tmp_path / "a,b"
    got = load(ws, '{"image": "debian:12"}')
    assert got.workspace_mount == f'type=bind,"source={ws}","target=/workspaces/a,b"'
    spec = got.workspace_mount_spec
    assert spec is not None
    assert (spec.source, spec.target) == (str(ws), "/workspaces/a,b")


def test_workspace_mount_and_folder_overrides(tmp_path: Path) -> None:
    got = load(
        tmp_path,
        '{"image": "x", "workspaceMount": "source=${localWorkspaceFolder},target=/code,type=bind",'
        ' "workspaceFolder": "/code"}',
    )
    assert got.workspace_mount == f"source={tmp_path},target=/code,type=bind"
    assert got.workspace_folder == "/code"
    none = load(tmp_path, '{"image": "x", "workspaceMount": "", "workspaceFolder": "/w"}')
    assert none.workspace_mount is None


def test_legacy_properties_move_to_their_places(tmp_path: Path) -> None:
    got = load(
        tmp_path,
        '{"dockerFile": "Dockerfile", "context": "..",'
        ' "extensions": ["a.b"], "settings": {"x": 1}}',
    )
    assert got.config.build is not None
    assert (got.config.build.dockerfile, got.config.build.context) == ("Dockerfile", "..")
    assert got.config.customizations == {"vscode": {"extensions": ["a.b"], "settings": {"x": 1}}}
    assert got.warnings == ()


def test_build_context_defaults_to_the_dockerfile_folder(tmp_path: Path) -> None:
    got = load(tmp_path, '{"build": {"dockerfile": "../docker/Dockerfile"}}')
    assert got.dockerfile_path == tmp_path / "docker" / "Dockerfile"
    assert got.build_context == tmp_path / "docker"


def test_for_container_resolves_id_and_container_env(tmp_path: Path) -> None:
    got = load(
        tmp_path,
        '{"image": "x", "mounts": ["source=v-${devcontainerId},target=/v,type=volume"],'
        ' "remoteEnv": {"P": "${containerEnv:PATH}:/x"}}',
    )
    assert got.config.mounts[0].source == "v-${devcontainerId}"
    live = got.for_container({"PATH": "/bin"})
    assert live.mounts[0].source == f"v-{got.devcontainer_id}"
    assert live.remote_env == {"P": "/bin:/x"}


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (
            '{\n "image": "x",\n "containerEnv": {\n  "PORT": 8080\n }\n}',
            4,
            "containerEnv.PORT",
            "must be a string",
        ),
        (
            '{\n "image": "x",\n "forwardPorts": [\n  80,\n  "db"\n ]\n}',
            5,
            "forwardPorts[1]",
            "host:port",
        ),
        ('{\n "image": "x",\n "forwardPorts": [70000]\n}', 3, "forwardPorts[0]", "0-65535"),
        (
            '{\n "image": "x",\n "mounts": [\n  {"type": "bind", "source": "/a"}\n ]\n}',
            4,
            "mounts[0].target",
            "field required",
        ),
        ('{\n "image": "x",\n "mounts": ["source=a,type=volume"]\n}', 3, "mounts[0]", "no target"),
        (
            '{\n "image": "x",\n "postCreateCommand": {"a": 1}\n}',
            3,
            "postCreateCommand.a",
            "string or an array",
        ),
        (
            '{\n "image": "x",\n "postStartCommand": ["ok", 2]\n}',
            3,
            "postStartCommand",
            "only strings",
        ),
        (
            '{\n "image": "x",\n "hostRequirements": {\n  "memory": "4 GiB"\n }\n}',
            4,
            "hostRequirements.memory",
            "size like",
        ),
        ('{\n "image": "x",\n "overrideCommand": "yes"\n}', 3, "overrideCommand", "true or false"),
        ('{\n "image": "x",\n "waitFor": "postAttach"\n}', 3, "waitFor", "must be one of"),
        ('{\n "name": "no image"\n}', 1, None, "set 'image'"),
        (
            '{\n "image": "x",\n "workspaceFolder": "relative/dir"\n}',
            3,
            "workspaceFolder",
            "absolute",
        ),
        (
            '{\n "dockerComposeFile": "compose.yml",\n "service": "app"\n}',
            2,
            "dockerComposeFile",
            "not supported",
        ),
        (
            '{\n "image": "x",\n "containerEnv": {"A": "${localEnv}"}\n}',
            3,
            "containerEnv.A",
            "names no environment",
        ),
        ("[1, 2]", 1, None, "JSON object"),
    ],
)
def test_errors_name_file_line_and_property(
    tmp_path: Path, text: str, line: int, field: str | None, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert words in error.message
    assert str(error).startswith(f".devcontainer/devcontainer.json:{line}: ")
    assert "\n" not in str(error)


def test_several_problems_are_counted_in_the_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '{"image": 1, "runArgs": "--x", "remoteUser": 2}')
    assert "(and 2 more problems)" in str(caught.value)


def test_mount_strings_read_as_docker_reads_them() -> None:
    assert parse_mount("type=tmpfs,target=/tmp,tmpfs-size=64m") == Mount(
        type="tmpfs", target="/tmp", options={"tmpfs-size": "64m"}
    )
    assert parse_mount("destination=/d,source=vol") == Mount(
        type="volume", source="vol", target="/d"
    )
    assert parse_mount("type=bind,src=/a,dst=/b,ro=false").read_only is False
    m = parse_mount("type=volume,source=data,target=/data,readonly")
    assert parse_mount(m.to_arg()) == m
    assert (
        Mount(type="bind", source="/x,y", target="/t").to_arg()
        == 'type=bind,source="/x,y",target=/t'
    )


def test_sizes_are_powers_of_1024() -> None:
    assert size_bytes("512mb") == 512 * 1024**2
    assert size_bytes("1TB") == 1024**4
    assert size_bytes("100") == 100
    with pytest.raises(ValueError):
        size_bytes("4g")


def test_null_properties_are_unset(tmp_path: Path) -> None:
    got = load(tmp_path, '{"image": "x", "containerEnv": null, "mounts": null, "name": null}')
    assert (got.config.container_env, got.config.mounts, got.config.name) == ({}, [], None)

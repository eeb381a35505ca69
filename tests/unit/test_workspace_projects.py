"""Subprojects of a repository without devcontainer.json, the configs Kled writes for
them, and the client variables a config names (``workspace/projects.py``, ``variables``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kled.errors import InvalidInput
from kled.workspace.devcontainer import load_config
from kled.workspace.projects import (
    Project,
    check_project,
    find_projects,
    preload_config,
    project_config,
)
from kled.workspace.variables import local_env_names


def _tree(root: Path, files: list[str]) -> Path:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("FROM scratch\n")
    return root


def test_projects_are_folders_with_a_dockerfile_outside_hidden_and_dependency_folders(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path / "repo",
        [
            "Dockerfile",
            "services/api/Dockerfile",
            "services/web/Containerfile",
            "services/web/Dockerfile.prod",  # not the name a build looks for
            "node_modules/x/Dockerfile",
            ".devcontainer/Dockerfile",
            "a/b/c/d/Dockerfile",
            "a/b/c/d/e/Dockerfile",  # deeper than MAX_DEPTH
        ],
    )
    assert find_projects(root) == [
        Project(".", "Dockerfile"),
        Project("a/b/c/d", "Dockerfile"),
        Project("services/api", "Dockerfile"),
        Project("services/web", "Containerfile"),
    ]
    assert find_projects(tmp_path / "repo" / "node_modules" / "x") == [Project(".", "Dockerfile")]


def test_a_project_config_builds_its_dockerfile_and_opens_in_its_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "shop", ["services/api/Dockerfile"])
    config = project_config(root, "services/api/")
    assert config["build"] == {
        "dockerfile": str(root / "services/api/Dockerfile"),
        "context": str(root / "services/api"),
    }
    written = tmp_path / "generated" / "devcontainer.json"
    written.parent.mkdir()
    written.write_text(json.dumps(config))
    resolved = load_config(root, written, env={})
    assert resolved.workspace_folder == "/workspaces/shop/services/api"
    assert resolved.dockerfile_path == root / "services/api/Dockerfile"
    assert resolved.build_context == root / "services/api"
    assert resolved.config.name == "api"


@pytest.mark.parametrize(
    ("project", "words"),
    [
        ("/etc", "must be a folder inside the repository"),
        ("../x", "must be a folder inside the repository"),
        ("", "must be a folder inside the repository"),
        ("nope", "no such folder"),
        ("services", "no Dockerfile or Containerfile in it"),
    ],
)
def test_a_bad_project_is_one_line_naming_the_flag(
    tmp_path: Path, project: str, words: str
) -> None:
    root = _tree(tmp_path / "r", ["services/api/Dockerfile"])
    with pytest.raises(InvalidInput) as caught:
        check_project(root, project)
    assert words in str(caught.value) and "--project" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_preload_config_names_the_image_and_its_user() -> None:
    assert preload_config() == {"name": "preload", "image": "kled/preload", "remoteUser": "dev"}


def test_local_env_names_are_those_the_config_names_and_no_more() -> None:
    doc = {
        "containerEnv": {"A": "${localEnv:HOME}/x", "B": "${env:TOKEN:fallback}"},
        "remoteEnv": {"C": "${containerEnv:PATH}", "D": "${localWorkspaceFolder}"},
        "build": {"args": {"V": "${localEnv:VERSION}-${localEnv:}"}},
        "${localEnv:NOT_IN_KEYS}": "keys are never substituted",
    }
    assert local_env_names(doc) == {"HOME", "TOKEN", "VERSION"}

"""Which devcontainer.json a repository uses: the spec's order, monorepos, --config."""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.errors import InvalidInput
from kled.workspace.discovery import find_configs, git_root, select_config


def put(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"image": "debian:12"}')
    return path


def test_spec_order_folder_file_first_then_root_file_then_subfolders(tmp_path: Path) -> None:
    sub_b = put(tmp_path, ".devcontainer/web/devcontainer.json")
    sub_a = put(tmp_path, ".devcontainer/api/devcontainer.json")
    root = put(tmp_path, ".devcontainer.json")
    main = put(tmp_path, ".devcontainer/devcontainer.json")
    put(tmp_path, ".devcontainer/deep/er/devcontainer.json")  # two levels: not looked at
    (tmp_path / ".devcontainer" / "empty").mkdir()
    assert find_configs(tmp_path) == [main, root, sub_a, sub_b]
    assert select_config(tmp_path) == main


def test_root_file_when_the_folder_has_none(tmp_path: Path) -> None:
    root = put(tmp_path, ".devcontainer.json")
    put(tmp_path, ".devcontainer/api/devcontainer.json")
    assert select_config(tmp_path) == root


def test_monorepo_with_several_configs_asks_for_config_and_names_them(tmp_path: Path) -> None:
    put(tmp_path, ".devcontainer/api/devcontainer.json")
    put(tmp_path, ".devcontainer/web/devcontainer.json")
    with pytest.raises(InvalidInput) as caught:
        select_config(tmp_path)
    message = str(caught.value)
    assert ".devcontainer/api/devcontainer.json, .devcontainer/web/devcontainer.json" in message
    assert "--config" in message


def test_a_single_subfolder_config_is_used(tmp_path: Path) -> None:
    only = put(tmp_path, ".devcontainer/api/devcontainer.json")
    assert select_config(tmp_path) == only


def test_config_flag_is_relative_to_the_workspace_or_absolute(tmp_path: Path) -> None:
    put(tmp_path, ".devcontainer/devcontainer.json")
    web = put(tmp_path, ".devcontainer/web/devcontainer.json")
    assert select_config(tmp_path, ".devcontainer/web/devcontainer.json") == web
    assert select_config(tmp_path, web) == web
    with pytest.raises(InvalidInput, match=r"nope\.json: no such file"):
        select_config(tmp_path, "nope.json")


def test_no_config_at_all_is_none(tmp_path: Path) -> None:
    (tmp_path / ".devcontainer").mkdir()
    assert find_configs(tmp_path) == []
    assert select_config(tmp_path) is None


def test_git_root_is_the_nearest_folder_with_dot_git(tmp_path: Path) -> None:
    repo = tmp_path / "mono"
    (repo / ".git").mkdir(parents=True)
    (repo / "services" / "api").mkdir(parents=True)
    assert git_root(repo / "services" / "api") == repo
    assert git_root(repo) == repo
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text("gitdir: ../mono/.git/worktrees/wt\n")  # a worktree
    assert git_root(worktree) == worktree
    assert git_root(tmp_path) is None

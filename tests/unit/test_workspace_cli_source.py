"""What ``kled ws up`` makes of its SOURCE before anything is sent: names and the archive."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from kled.cli.workspaces import check_folder, default_name, is_git_url, pack
from kled.errors import InvalidInput


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return tar.getnames()


def test_git_urls_and_folders_are_told_apart() -> None:
    for url in ("https://x.org/a/b.git", "file:///srv/repo", "git@host:team/repo.git"):
        assert is_git_url(url)
    for folder in ("./shop", "/home/ada/shop", "shop"):
        assert not is_git_url(folder)


def test_default_names_are_dns_labels() -> None:
    assert default_name("/home/ada/My_Shop/") == "my-shop"
    assert default_name("git@host:team/Api.git") == "api"
    with pytest.raises(InvalidInput, match="--name"):
        default_name("/___/")


def test_the_archive_follows_gitignore_and_is_the_same_for_the_same_files(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("build/\n*.log\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out").write_text("x")
    (tmp_path / "app.log").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)\n")
    first = pack(tmp_path)
    assert sorted(names(first)) == [".gitignore", "src", "src/main.py"]
    os.utime(tmp_path / "app.log", (1, 1))  # an ignored file changing changes nothing
    assert pack(tmp_path) == first
    (tmp_path / "src" / "main.py").write_text("print(2)\n")
    assert pack(tmp_path) != first


def test_a_folder_without_a_config_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        check_folder(tmp_path, None)
    text = str(err.value)
    assert str(tmp_path) in text
    assert ".devcontainer/devcontainer.json" in text and ".devcontainer.json" in text
    assert "\n" not in text

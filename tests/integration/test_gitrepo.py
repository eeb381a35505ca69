"""The git seam on real repositories: a shallow fetch of a branch, a tag or a commit into
the cache, the files of a path, and the bounds on file count and blob size, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitkit import Origin, git
from kled.control.gitrepo import Auth, GitCache, GitError, Limits


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "repo")


async def test_fetches_a_branch_a_tag_and_a_commit_shallowly(
    origin: Origin, tmp_path: Path
) -> None:
    first = origin.commit({"a.yaml": "kind: App\n", "notes.txt": "x"}, "one")
    origin.tag("v1")
    second = origin.commit({"b/c.yml": "kind: Config\n"}, "two")
    cache = GitCache(tmp_path / "cache")
    assert await cache.fetch("t", "s", origin.url, "main", Auth()) == second
    tree = await cache.read("t", "s", second, ".")
    assert tree.files == {"a.yaml": "kind: App\n", "b/c.yml": "kind: Config\n"}
    assert (await cache.read("t", "s", second, "b")).files == {"b/c.yml": "kind: Config\n"}
    repo = cache.repo_of("t", "s")
    assert git("rev-list", "--count", "refs/kled/fetched", cwd=repo) == "1"  # depth 1
    assert await cache.fetch("t", "s", origin.url, "v1", Auth()) == first
    assert await cache.fetch("t", "s", origin.url, first, Auth()) == first


async def test_errors_carry_gits_words(origin: Origin, tmp_path: Path) -> None:
    head = origin.commit({"a.yaml": "kind: App\n"})
    cache = GitCache(tmp_path / "cache")
    with pytest.raises(GitError, match="couldn't find remote ref nope"):
        await cache.fetch("t", "s", origin.url, "nope", Auth())
    with pytest.raises(GitError, match="does not appear to be a git repository"):
        await cache.fetch("t", "s", f"file://{tmp_path}/missing", "main", Auth())
    await cache.fetch("t", "s", origin.url, "main", Auth())
    with pytest.raises(GitError, match="path 'nowhere' is not a folder"):
        await cache.read("t", "s", head, "nowhere")
    with pytest.raises(GitError, match=r"path 'a\.yaml' is not a folder"):
        await cache.read("t", "s", head, "a.yaml")


async def test_the_file_count_and_the_blob_size_are_bounded(origin: Origin, tmp_path: Path) -> None:
    files: dict[str, str | None] = {f"many/{i}.yaml": "kind: App\n" for i in range(6)}
    files["big/big.yaml"] = "#" * 5000
    files["big/picture.png"] = "x" * 50_000  # not a document: not bounded by size
    head = origin.commit(files)
    cache = GitCache(tmp_path / "cache", Limits(max_files=5, max_blob_bytes=4096))
    await cache.fetch("t", "s", origin.url, "main", Auth())
    with pytest.raises(GitError, match="6 files under 'many': over the limit of 5 files"):
        await cache.read("t", "s", head, "many")
    with pytest.raises(GitError, match=r"big/big\.yaml is 5000 bytes: over the limit of 4096"):
        await cache.read("t", "s", head, "big")


async def test_a_50_mb_blob_is_fetched_but_never_read_as_a_document(
    origin: Origin, tmp_path: Path
) -> None:
    big = "#" * (50 * 1024 * 1024)
    head = origin.commit({"data/dump.bin": big, "apps/a.yaml": "kind: App\n", "big/x.yaml": big})
    cache = GitCache(tmp_path / "cache")  # the default limits
    assert await cache.fetch("t", "s", origin.url, "main", Auth()) == head
    assert (await cache.read("t", "s", head, "apps")).files == {"apps/a.yaml": "kind: App\n"}
    assert (await cache.read("t", "s", head, "data")).files == {}
    with pytest.raises(GitError, match=r"x\.yaml is 52428800 bytes: over the limit of 1048576"):
        await cache.read("t", "s", head, "big")

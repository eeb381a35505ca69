"""Excludes in .gitignore syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.sync.ignore import Ignore, nested
from kled.sync.index import Escape, link_escapes, resolve, scan, valid_rel


@pytest.mark.parametrize(
    ("patterns", "path", "is_dir", "excluded"),
    [
        (["*.pyc"], "a.pyc", False, True),
        (["*.pyc"], "x/y/a.pyc", False, True),
        (["*.pyc"], "a.py", False, False),
        (["node_modules"], "web/node_modules", True, True),
        (["node_modules"], "web/node_modules/react/index.js", False, True),
        (["/build"], "build", True, True),
        (["/build"], "src/build", True, False),
        (["docs/*.md"], "docs/a.md", False, True),
        (["docs/*.md"], "docs/sub/a.md", False, False),
        (["docs/*.md"], "x/docs/a.md", False, False),
        (["logs/"], "logs", True, True),
        (["logs/"], "logs", False, False),
        (["logs/"], "a/logs/x.txt", False, True),
        (["**/tmp"], "tmp", True, True),
        (["**/tmp"], "a/b/tmp", False, True),
        (["a/**/z"], "a/z", False, True),
        (["a/**/z"], "a/b/c/z", False, True),
        (["a/**"], "a/b/c", False, True),
        (["a/**"], "a", True, False),
        (["*.log", "!keep.log"], "keep.log", False, False),
        (["*.log", "!keep.log"], "x/drop.log", False, True),
        (["!keep.log", "*.log"], "keep.log", False, True),
        (["file?.txt"], "file1.txt", False, True),
        (["file[0-9].txt"], "fileA.txt", False, False),
        (["file[!0-9].txt"], "fileA.txt", False, True),
        (["# comment", "", "  "], "# comment", False, False),
        (["\\#hash"], "#hash", False, True),
        ([], ".kled-sync-tmp-abc", False, True),
    ],
)
def test_rules(patterns: list[str], path: str, is_dir: bool, excluded: bool) -> None:
    assert Ignore(patterns).excluded(path, is_dir) is excluded


def test_a_file_in_an_excluded_dir_cannot_be_reincluded() -> None:
    assert Ignore(["build/", "!build/keep"]).excluded("build/keep") is True


def test_the_roots_gitignore_then_the_session_excludes(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.tmp\n!important.tmp\n")
    rules = Ignore.for_root(tmp_path, ["important.tmp"])
    assert rules.excluded("a.tmp") and rules.excluded("important.tmp")
    assert not Ignore.for_root(tmp_path, gitignore=False).excluded("a.tmp")


def test_scan_prunes_excluded_dirs_and_reuses_hashes(tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "i.js").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)")
    (tmp_path / "src" / "a.pyc").write_text("junk")
    (tmp_path / "l").symlink_to("src/a.py")
    idx = scan(str(tmp_path), Ignore(["node_modules", "*.pyc"]))
    assert sorted(idx) == ["l", "src", "src/a.py"]
    assert idx["l"].kind == "symlink" and idx["l"].digest == "src/a.py"
    fake = {"src/a.py": idx["src/a.py"].__class__("file", 8, idx["src/a.py"].mtime_ns, 0, "x")}
    again = scan(str(tmp_path), Ignore(["node_modules", "*.pyc"]), fake)
    assert again["src/a.py"].digest == "x", "an unchanged size+mtime is not hashed again"


def test_paths_that_leave_the_root_are_refused(tmp_path: Path) -> None:
    for bad in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "./a"]:
        assert not valid_rel(bad)
    (tmp_path / "out").symlink_to("/etc")
    with pytest.raises(Escape):
        resolve(str(tmp_path), "out/passwd")
    assert resolve(str(tmp_path), "ok/x") == str(tmp_path / "ok/x")
    assert link_escapes(str(tmp_path), "a/l", "../../etc")
    assert link_escapes(str(tmp_path), "l", "/etc/passwd")
    assert not link_escapes(str(tmp_path), "a/l", "../b")


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_nested_gitignores_hold_under_their_folder_and_the_nearest_wins(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            ".gitignore": "*.log\nbuild/\n",
            "web/.gitignore": "*.tmp\n/dist\n!keep.log\n",
            "web/static/.gitignore": "!*.tmp\n",
            "api/x.tmp": "",
        },
    )
    ignore = Ignore.for_root(tmp_path, ["secret.txt"])
    verdicts = {
        "a.log": True,
        "web/a.log": True,
        "web/keep.log": False,  # web's "!keep.log" is nearer than the root's "*.log"
        "keep.log": True,  # … and holds only under web/
        "web/a.tmp": True,
        "web/deep/b.tmp": True,
        "api/x.tmp": False,  # web's rules stay in web/
        "web/static/c.tmp": False,  # the deeper file re-includes
        "web/dist/app.js": True,  # "/dist" anchored to web/
        "dist/app.js": False,
        "web/sub/dist/app.js": False,
        "secret.txt": True,  # the session's excludes still apply
    }
    assert {rel: ignore.excluded(rel) for rel in verdicts} == verdicts


def test_gitignores_inside_excluded_folders_and_dot_git_are_not_read(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            ".gitignore": "build/\n",
            "build/.gitignore": "!*\n",
            ".git/.gitignore": "*.py\n",
            "src/.gitignore": "*.o\n",
        },
    )
    ignore = Ignore.for_root(tmp_path)
    assert ignore.excluded("build/x.c") and ignore.excluded("src/a.o")
    assert not ignore.excluded("src/a.py")
    assert Ignore.for_root(tmp_path, gitignore=False).patterns == []


def test_folder_names_with_glob_characters_are_taken_literally() -> None:
    rules = nested("a[1]/b*", ["x", "/y/", "!z"])
    assert rules == ["/a\\[1]/b\\*/**/x", "/a\\[1]/b\\*/y/", "!/a\\[1]/b\\*/**/z"]
    ignore = Ignore(rules)
    assert ignore.excluded("a[1]/b*/q/x") and not ignore.excluded("a1/bb/q/x")
    assert ignore.excluded("a[1]/b*/y", True) and not ignore.excluded("a[1]/b*/y", False)

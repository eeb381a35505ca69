"""The sync planner as state transitions: (base, local, remote) → the exact plan."""

from __future__ import annotations

import pytest

from kled.sync.index import Entry
from kled.sync.plan import Conflict, Plan, Strategy, plan, settled


def f(content: str, mtime: int = 1, mode: int = 0o644) -> Entry:
    return Entry("file", len(content), mtime, mode, f"h-{content}")


D = Entry("dir", mode=0o755)


def link(target: str) -> Entry:
    return Entry("symlink", 0, 1, 0, target)


# --- after the first sync: three-way against the base ---------------------------------


def test_nothing_changed_nothing_to_do() -> None:
    idx = {"a": f("1"), "d": D, "d/b": f("2")}
    assert plan(idx, idx, idx) == Plan()


def test_only_mtimes_differ_nothing_is_sent() -> None:
    base = {"a": f("1", mtime=1)}
    assert plan(base, {"a": f("1", mtime=5)}, {"a": f("1", mtime=9)}) == Plan()


def test_first_sync_with_equal_content_and_other_mtimes_sends_nothing() -> None:
    assert plan(None, {"a": f("1", mtime=5)}, {"a": f("1", mtime=9)}) == Plan()


def test_local_edit_is_uploaded() -> None:
    base = {"a": f("1")}
    assert plan(base, {"a": f("2")}, base) == Plan(uploads=("a",))


def test_remote_edit_is_downloaded() -> None:
    base = {"a": f("1")}
    assert plan(base, base, {"a": f("2")}) == Plan(downloads=("a",))


def test_new_local_file_and_dir_go_up() -> None:
    local = {"d": D, "d/x": f("x")}
    assert plan({}, local, {}) == Plan(mkdirs_remote=("d",), uploads=("d/x",))


def test_new_remote_file_and_dir_come_down() -> None:
    remote = {"d": D, "d/x": f("x")}
    assert plan({}, {}, remote) == Plan(mkdirs_local=("d",), downloads=("d/x",))


def test_local_delete_of_unchanged_remote_file_propagates() -> None:
    base = {"a": f("1"), "b": f("2")}
    assert plan(base, {"b": f("2")}, base) == Plan(deletes_remote=("a",))


def test_remote_delete_of_unchanged_local_file_propagates() -> None:
    base = {"a": f("1")}
    assert plan(base, base, {}) == Plan(deletes_local=("a",))


def test_local_delete_does_not_remove_a_remote_edit() -> None:
    base = {"a": f("1")}
    assert plan(base, {}, {"a": f("2")}) == Plan(downloads=("a",))


def test_remote_delete_does_not_remove_a_local_edit() -> None:
    base = {"a": f("1")}
    assert plan(base, {"a": f("2")}, {}) == Plan(uploads=("a",))


def test_deleted_on_both_sides_is_nothing() -> None:
    assert plan({"a": f("1")}, {}, {}) == Plan()


def test_same_edit_on_both_sides_is_no_conflict() -> None:
    assert plan({"a": f("1")}, {"a": f("2")}, {"a": f("2")}) == Plan()


def test_conflict_local_wins_remote_kept_aside() -> None:
    got = plan({"a": f("1")}, {"a": f("L")}, {"a": f("R")}, stamp="T")
    assert got == Plan(
        conflicts=(Conflict("a", "a.conflict-T", "remote"),),
        uploads=("a",),
        downloads=("a.conflict-T",),
    )


def test_conflict_on_two_new_files() -> None:
    got = plan({}, {"n": f("L")}, {"n": f("R")}, stamp="T")
    assert got.conflicts == (Conflict("n", "n.conflict-T", "remote"),)
    assert got.uploads == ("n",)


def test_conflict_local_file_against_remote_dir_keeps_the_dir() -> None:
    got = plan({}, {"x": f("L")}, {"x": D, "x/y": f("y")}, stamp="T")
    assert got == Plan(
        conflicts=(Conflict("x", "x.conflict-T", "local"),),
        uploads=("x.conflict-T",),
        mkdirs_local=("x",),
        downloads=("x/y",),
    )


def test_local_mode_change_only() -> None:
    base = {"a": f("1")}
    assert plan(base, {"a": f("1", mode=0o755)}, base) == Plan(chmods_remote=(("a", 0o755),))


def test_remote_mode_change_only() -> None:
    base = {"a": f("1")}
    assert plan(base, base, {"a": f("1", mode=0o600)}) == Plan(chmods_local=(("a", 0o600),))


def test_uploaded_file_carries_its_mode_no_chmod() -> None:
    assert plan({}, {"a": f("1", mode=0o755)}, {}) == Plan(uploads=("a",))


def test_symlinks_both_ways() -> None:
    base = {"l": link("a")}
    assert plan(base, {"l": link("b")}, base) == Plan(links_remote=(("l", "b"),))
    assert plan(base, base, {"l": link("c")}) == Plan(links_local=(("l", "c"),))
    assert plan({}, {"n": link("x")}, {}) == Plan(links_remote=(("n", "x"),))


def test_empty_dirs_both_ways() -> None:
    assert plan({}, {"e": D}, {}) == Plan(mkdirs_remote=("e",))
    assert plan({"e": D}, {}, {"e": D}) == Plan(deletes_remote=("e",))
    assert plan({"e": D}, {"e": D}, {}) == Plan(deletes_local=("e",))


def test_dir_delete_children_first() -> None:
    base = {"d": D, "d/e": D, "d/e/x": f("x"), "d/y": f("y")}
    assert plan(base, {}, base) == Plan(deletes_remote=("d/e/x", "d/e", "d/y", "d"))


def test_local_dir_delete_keeps_remote_dir_with_an_edit_inside() -> None:
    base = {"d": D, "d/x": f("x"), "d/y": f("y")}
    remote = {"d": D, "d/x": f("x2"), "d/y": f("y")}
    assert plan(base, {}, remote) == Plan(
        deletes_remote=("d/y",), mkdirs_local=("d",), downloads=("d/x",)
    )


def test_file_replaced_by_dir_locally() -> None:
    base = {"a": f("1")}
    assert plan(base, {"a": D, "a/b": f("2")}, base) == Plan(mkdirs_remote=("a",), uploads=("a/b",))


def test_rename_of_a_big_directory_is_moves_not_uploads() -> None:
    old = {"old": D} | {f"old/{i}": f(str(i)) for i in range(10_000)}
    new = {"new": D} | {f"new/{i}": f(str(i)) for i in range(10_000)}
    got = plan(old, new, old)
    assert got.uploads == ()
    assert len(got.moves_remote) == 10_000
    assert ("old/7", "new/7") in got.moves_remote
    assert got.mkdirs_remote == ("new",)
    assert got.deletes_remote == ("old",)


def test_rename_back_from_remote_is_moves_locally() -> None:
    base = {"a": f("x")}
    assert plan(base, base, {"b": f("x")}) == Plan(moves_local=(("a", "b"),))


def test_a_move_with_another_mode_gets_a_chmod() -> None:
    base = {"a": f("x")}
    got = plan(base, {"b": f("x", mode=0o755)}, base)
    assert got == Plan(moves_remote=(("a", "b"),), chmods_remote=(("b", 0o755),))


def test_plan_paths_lists_every_touched_path() -> None:
    got = plan({"a": f("1")}, {"a": f("L"), "n": f("n")}, {"a": f("R")}, stamp="T")
    assert got.paths() == {"a", "a.conflict-T", "n"}


# --- the first sync: strategies -------------------------------------------------------

LOCAL = {"both": f("L", mtime=2), "same": f("s"), "lonly": f("l")}
REMOTE = {"both": f("R", mtime=3), "same": f("s"), "ronly": f("r")}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.MIRROR_LOCAL, Plan(uploads=("both", "lonly"), deletes_remote=("ronly",))),
        (Strategy.MIRROR_REMOTE, Plan(downloads=("both", "ronly"), deletes_local=("lonly",))),
        (Strategy.PREFER_LOCAL, Plan(uploads=("both", "lonly"), downloads=("ronly",))),
        (Strategy.PREFER_REMOTE, Plan(uploads=("lonly",), downloads=("both", "ronly"))),
        (Strategy.PREFER_NEWEST, Plan(uploads=("lonly",), downloads=("both", "ronly"))),
        (
            Strategy.KEEP_ALL,
            Plan(
                conflicts=(Conflict("both", "both.conflict-T"),),
                uploads=("both", "lonly"),
                downloads=("both.conflict-T", "ronly"),
            ),
        ),
    ],
)
def test_initial_strategies(strategy: Strategy, expected: Plan) -> None:
    assert plan(None, LOCAL, REMOTE, strategy, stamp="T") == expected


def test_prefer_newest_takes_the_newer_local() -> None:
    got = plan(None, {"a": f("L", mtime=9)}, {"a": f("R", mtime=3)}, Strategy.PREFER_NEWEST)
    assert got == Plan(uploads=("a",))


def test_initial_modes_follow_the_strategy() -> None:
    local, remote = {"a": f("1", mode=0o755)}, {"a": f("1", mode=0o644)}
    assert plan(None, local, remote) == Plan(chmods_remote=(("a", 0o755),))
    assert plan(None, local, remote, Strategy.MIRROR_REMOTE) == Plan(chmods_local=(("a", 0o644),))


def test_mirror_local_removes_a_remote_only_tree() -> None:
    assert plan(None, {}, {"d": D, "d/x": f("x")}) == Plan(deletes_remote=("d/x", "d"))


# --- the base after a plan ran ----------------------------------------------------------


def test_settled_base_takes_the_winning_side() -> None:
    base = {"a": f("1"), "gone": f("g"), "c": f("1")}
    local = {"a": f("2"), "c": f("L"), "n": f("n")}
    remote = {"a": f("1"), "gone": f("g"), "c": f("R"), "r": f("r")}
    done = plan(base, local, remote, stamp="T")
    assert settled(base, local, remote, done) == {
        "a": f("2"),
        "c": f("L"),
        "c.conflict-T": f("R"),
        "n": f("n"),
        "r": f("r"),
    }


def test_settled_keeps_the_old_base_of_a_failed_path() -> None:
    base = {"a": f("1")}
    local = {"a": f("2")}
    done = plan(base, local, base)
    assert settled(base, local, base, done, {"a"}) == {"a": f("1")}
    assert plan(settled(base, local, base, done, {"a"}), local, base) == done

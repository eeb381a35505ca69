"""Pod IPs let go are not handed to the next replica while others are free: the replica
that had one may still be stopping on its node (a rolling update removes one replica and
adds another in the same step)."""

from __future__ import annotations

from kled.control.hostnet import PodAddressBook


def test_a_freed_address_waits_while_others_are_free() -> None:
    book = PodAddressBook()
    first = book.assign("100.64.8.0/24", ["a.0", "a.1"])
    assert first == {"a.0": "100.64.8.10", "a.1": "100.64.8.11"}
    book.forget_except(["a.1"])  # a.0 leaves, a.2 arrives in the same step
    assert book.assign("100.64.8.0/24", ["a.1", "a.2"]) == {
        "a.1": "100.64.8.11",
        "a.2": "100.64.8.12",
    }


def test_an_address_let_go_in_the_same_pass_is_not_reused() -> None:
    book = PodAddressBook()
    book.assign("100.64.8.0/24", ["a.0", "a.1"])
    # a.0 leaves and a.2 arrives in one pass: assign comes before forget_except.
    assert book.assign("100.64.8.0/24", ["a.1", "a.2"])["a.2"] == "100.64.8.12"


def test_a_full_subnet_reuses_the_address_freed_longest_ago() -> None:
    book = PodAddressBook()
    book.assign("100.64.8.0/28", [f"a.{i}" for i in range(5)])  # .10-.14
    book.forget_except(["a.1", "a.2", "a.3", "a.4"])  # .10 freed first
    book.forget_except(["a.2", "a.3", "a.4"])  # then .11
    got = book.assign("100.64.8.0/28", ["a.2", "a.3", "a.4", "b.0", "b.1"])
    assert got["b.0"] == "100.64.8.10" and got["b.1"] == "100.64.8.11"

"""Label selectors: the string form, the object form, and what they match."""

from __future__ import annotations

from typing import Any

import pytest

from kled.errors import InvalidInput
from kled.resources.selectors import (
    EVERYTHING,
    Operator,
    Requirement,
    from_label_selector,
    parse_selector,
)

FULL = "tier=backend,env!=prod,app in (a,b),track notin (x),gpu,!legacy"


def test_full_syntax_parses_into_requirements() -> None:
    selector = parse_selector(FULL)
    assert selector.requirements == (
        Requirement("tier", Operator.EQUALS, ("backend",)),
        Requirement("env", Operator.NOT_EQUALS, ("prod",)),
        Requirement("app", Operator.IN, ("a", "b")),
        Requirement("track", Operator.NOT_IN, ("x",)),
        Requirement("gpu", Operator.EXISTS),
        Requirement("legacy", Operator.DOES_NOT_EXIST),
    )
    assert str(selector) == FULL
    assert parse_selector(str(selector)) == selector


MATCHING = {"tier": "backend", "app": "a", "gpu": ""}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (MATCHING, True),
        ({**MATCHING, "env": "dev", "track": "y"}, True),
        ({**MATCHING, "tier": "frontend"}, False),
        ({**MATCHING, "env": "prod"}, False),
        ({**MATCHING, "app": "c"}, False),
        ({k: v for k, v in MATCHING.items() if k != "app"}, False),
        ({**MATCHING, "track": "x"}, False),
        ({k: v for k, v in MATCHING.items() if k != "gpu"}, False),
        ({**MATCHING, "legacy": "true"}, False),
    ],
)
def test_matches_every_requirement(labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(FULL).matches(labels) is expected


def test_double_equals_is_equals_and_spaces_are_allowed() -> None:
    assert parse_selector("tier==backend") == parse_selector("tier = backend")
    assert parse_selector(" a in ( x , y ) , ! b ") == parse_selector("a in (x,y),!b")


def test_not_equal_and_notin_match_objects_without_the_label() -> None:
    assert parse_selector("env!=prod").matches({})
    assert parse_selector("env notin (prod)").matches({"other": "x"})
    assert not parse_selector("env in (prod)").matches({})


def test_empty_value_is_a_value() -> None:
    selector = parse_selector("gpu=")
    assert selector.matches({"gpu": ""})
    assert not selector.matches({"gpu": "yes"})
    assert not selector.matches({})


def test_empty_selector_matches_everything() -> None:
    for text in ("", "   ", None):
        selector = parse_selector(text)
        assert selector.empty
        assert selector.matches({}) and selector.matches({"a": "b"})
    assert EVERYTHING.matches(None)


def test_prefixed_keys() -> None:
    selector = parse_selector("kled.io/tier in (backend),!example.com/legacy")
    assert selector.matches({"kled.io/tier": "backend"})
    assert not selector.matches({"kled.io/tier": "backend", "example.com/legacy": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a in b", "expected '(' after 'in' at position 6 of 'a in b'"),
        ("a in (b", "expected ',' or ')' at the end of 'a in (b'"),
        ("a in ()", "'in' needs at least one value in 'a in ()'"),
        ("a notin (,)", "'notin' needs at least one value in 'a notin (,)'"),
        ("a=b c", "expected ',' at position 5 of 'a=b c'"),
        ("a,", "expected a label key at the end of 'a,'"),
        (",a", "expected a label key at position 1 of ',a'"),
        ("=x", "expected a label key at position 1 of '=x'"),
        ("!", "expected a label key after '!' at the end of '!'"),
        ("a b", "expected '=', '!=', 'in', 'notin' or ',' at position 3 of 'a b'"),
        ("a=b=c", "expected ',' at position 4 of 'a=b=c'"),
        ("Bad Key!=x", "expected '=', '!=', 'in', 'notin' or ',' at position 5 of 'Bad Key!=x'"),
        ("a=-x", "label value '-x' must be at most 63 letters, digits, '-', '_' or '.', "
         "starting and ending with a letter or digit"),
        ("-a=x", "label key '-a': name must be at most 63 letters, digits, '-', '_' or '.', "
         "starting and ending with a letter or digit"),
        ("A_B.c/d=x", "label key 'A_B.c/d': prefix must be a DNS subdomain (lowercase, dots, "
         "at most 253)"),
    ],
)  # fmt: skip
def test_bad_syntax_is_invalid_input_naming_label_selector(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_selector(text)
    assert caught.value.field == "labelSelector"
    assert caught.value.message == message


def test_the_field_can_be_named_by_the_caller() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_selector("a in", field="selector")
    assert str(caught.value) == "selector: expected '(' after 'in' at the end of 'a in'"


def test_object_form_matches_like_the_string_form() -> None:
    selector = from_label_selector(
        {
            "matchLabels": {"tier": "backend"},
            "matchExpressions": [
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "app", "operator": "In", "values": ["a", "b"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist", "values": []},
            ],
        }
    )
    assert selector == parse_selector("tier=backend,env notin (prod),app in (a,b),gpu,!legacy")
    assert selector.matches(MATCHING)
    assert not selector.matches({**MATCHING, "env": "prod"})


def test_object_form_empty_or_absent_matches_everything() -> None:
    assert from_label_selector(None).empty
    assert from_label_selector({}).matches({"a": "b"})
    assert from_label_selector({"matchLabels": None, "matchExpressions": None}).empty


@pytest.mark.parametrize(
    ("obj", "field", "message"),
    [
        ([], "labelSelector", "must be a mapping with matchLabels and matchExpressions"),
        ({"matchLabel": {}}, "labelSelector.matchLabel", "unknown field"),
        ({"matchLabels": ["a"]}, "labelSelector.matchLabels", "must be a mapping"),
        ({"matchLabels": {"a": 1}}, "labelSelector.matchLabels",
         "keys and values must be strings"),
        ({"matchExpressions": {}}, "labelSelector.matchExpressions", "must be a list"),
        ({"matchExpressions": ["a"]}, "labelSelector.matchExpressions[0]",
         "must be a mapping with key, operator and values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "labelSelector.matchExpressions[0].key",
         "field required"),
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
         "labelSelector.matchExpressions[0].operator",
         "must be one of In, NotIn, Exists or DoesNotExist"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]},
         "labelSelector.matchExpressions[0].values", "must not be empty for operator In"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
         "labelSelector.matchExpressions[0].values", "must be empty for operator Exists"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
         "labelSelector.matchExpressions[0].values", "must be a list of strings"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x y"]}]},
         "labelSelector.matchExpressions[0].values[0]",
         "label value 'x y' must be at most 63 letters, digits, '-', '_' or '.', "
         "starting and ending with a letter or digit"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"], "extra": 1}]},
         "labelSelector.matchExpressions[0].extra", "unknown field"),
    ],
)  # fmt: skip
def test_object_form_errors_name_the_field(obj: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        from_label_selector(obj)
    assert (caught.value.field, caught.value.message) == (field, message)


def test_object_form_field_prefix_for_policies() -> None:
    with pytest.raises(InvalidInput) as caught:
        from_label_selector({"matchLabels": {"a": "-"}}, field="spec.objectSelector")
    assert caught.value.field == "spec.objectSelector.matchLabels"

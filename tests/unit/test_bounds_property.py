"""Properties of the resource loader and validators under arbitrary input (issue 10).

Whatever a user sends — any nesting, any text (lone surrogates, newlines, control
characters), YAML anchors and aliases — the loader and the bounds either accept it or
refuse it with Kled's own one-line error; they never raise anything else, and what they
accept always encodes as UTF-8 JSON within the depth bound.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kled.errors import InvalidInput
from kled.resources import bounds
from kled.resources.kinds import validate
from kled.resources.loading import MAX_YAML_NODES, load_documents
from kled.resources.meta import is_dns_label

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc00"])
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec=None), max_size=8),
    SURROGATES,
    st.sampled_from(["api", "aapp\n", "dev\n", "x" * 64, "A", "-a", "a.b", " "]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@given(JSON_VALUES | st.integers(1, 200).map(deep))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bounds_either_accept_json_that_encodes_or_name_a_problem(value: Any) -> None:
    found = bounds.problem(value)
    if found is None:
        encoded = json.dumps(value, ensure_ascii=False).encode("utf-8")
        assert len(encoded) <= bounds.MAX_DOCUMENT_BYTES
        assert depth(value) <= bounds.MAX_DEPTH
    else:
        field, message = found
        assert isinstance(field, str) and message and "\n" not in message


@given(
    name=TEXT,
    labels=st.dictionaries(TEXT, TEXT, max_size=3),
    annotations=st.dictionaries(TEXT, TEXT, max_size=3),
    spec_extra=st.dictionaries(st.sampled_from(["env", "args", "x"]), JSON_VALUES, max_size=2),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_validation_accepts_only_whole_names_and_never_crashes(
    name: str, labels: dict[str, str], annotations: dict[str, str], spec_extra: dict[str, Any]
) -> None:
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": name,
            "team": "t",
            "environment": "dev",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"command": ["x"], **spec_extra},
    }
    try:
        bounds.check(doc)
        accepted = validate(doc)
    except InvalidInput as e:
        assert "\n" not in str(e)  # one line, whatever the input held
        return
    meta = accepted["metadata"]
    assert is_dns_label(meta["name"]) and "\n" not in meta["name"]
    for key, value in meta["labels"].items():
        assert "\n" not in key and "\n" not in value
    for key in meta["annotations"]:
        assert "\n" not in key


ANCHORED = st.lists(st.integers(1, 12), min_size=1, max_size=9)


@given(widths=ANCHORED, payload=JSON_VALUES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_yaml_aliases_load_or_are_refused_within_the_bound(widths: list[int], payload: Any) -> None:
    """Chains of anchors, each level repeating the last: from harmless to a billion laughs."""
    lines = [
        "apiVersion: kled.io/v1",
        "kind: ManagedService",
        "metadata: {name: db, team: t, environment: dev}",
        "spec:",
        "  template: postgres",
        "  parameters:",
        f"    l0: &l0 {json.dumps(json.dumps(payload, default=str))}",
    ]
    for level, width in enumerate(widths, start=1):
        items = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"    l{level}: &l{level} [{items}]")
    text = "\n".join(lines) + "\n"
    expanded = 1
    for width in widths:
        expanded = expanded * width + 1
    try:
        docs = load_documents(text, "alias.yaml")
    except InvalidInput as e:
        assert "\n" not in str(e)
        return
    assert expanded <= MAX_YAML_NODES  # accepted only when the expansion was small
    # measured as the bound is: compact JSON, UTF-8
    assert bounds.problem(docs[0]) is None


def test_a_billion_laughs_is_refused_in_one_line() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    try:
        load_documents("\n".join(lines) + "\n", "bomb.yaml")
    except InvalidInput as e:
        assert "alias" in str(e) and str(e).startswith("bomb.yaml: line ")
    else:
        raise AssertionError("an alias bomb was loaded")


def test_ordinary_anchors_still_load() -> None:
    text = (
        "apiVersion: kled.io/v1\nkind: App\n"
        "metadata: {name: api, team: t, environment: dev, labels: &l {tier: web}}\n"
        "spec:\n  command: [x]\n  nodeSelector: *l\n"
    )
    (doc,) = load_documents(text, "app.yaml")
    assert doc["spec"]["nodeSelector"] == doc["metadata"]["labels"] == {"tier": "web"}

"""The patch types of Kled Clusters' API, as pure functions (kled.kube.patching)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kled.kube.patching import json_patch, merge_patch, strategic_merge
from kled.kube.status import KubeError

POD_SPEC: dict[str, Any] = {
    "containers": [
        {"name": "web", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "side", "image": "s:1"},
    ],
    "volumes": [{"name": "v", "emptyDir": {}}],
}  # fmt: skip


def test_strategic_merge_merges_containers_by_name_and_keeps_the_rest() -> None:
    patched = strategic_merge(POD_SPEC, {"containers": [{"name": "web", "image": "a:2"}]})
    web, side = patched["containers"]
    assert web["image"] == "a:2" and web["ports"] == POD_SPEC["containers"][0]["ports"]
    assert side == POD_SPEC["containers"][1]
    assert POD_SPEC["containers"][0]["image"] == "a:1"  # the input is not changed


def test_strategic_merge_directives_as_kubectl_apply_sends_them() -> None:
    patch = {
        "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
        "containers": [
            {"name": "web", "$setElementOrder/env": [{"name": "B"}],
             "env": [{"name": "A", "$patch": "delete"}]},
        ],
        "volumes": [{"$patch": "replace"}, {"name": "w", "emptyDir": {}}],
    }  # fmt: skip
    patched = strategic_merge(POD_SPEC, patch)
    assert [c["name"] for c in patched["containers"]] == ["side", "web"]
    assert patched["containers"][1]["env"] == [{"name": "B", "value": "2"}]
    assert patched["volumes"] == [{"name": "w", "emptyDir": {}}]


def test_strategic_merge_retain_keys_and_primitive_list_deletion() -> None:
    doc = {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
           "finalizers": ["a", "b", "c"]}  # fmt: skip
    patch = {
        "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None},
        "$deleteFromPrimitiveList/finalizers": ["b"],
    }
    assert strategic_merge(doc, patch) == {
        "strategy": {"type": "Recreate"},
        "finalizers": ["a", "c"],
    }


def test_merge_patch_replaces_lists_and_null_deletes() -> None:
    patched = merge_patch(POD_SPEC, {"containers": [{"name": "only"}], "volumes": None})
    assert patched == {"containers": [{"name": "only"}]}


def test_json_patch_operations_and_a_failed_test_refuses_all() -> None:
    doc = {"data": {"a": "1"}, "list": [1, 2]}
    ops = [
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/a", "value": "x"},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "remove", "path": "/list/0"},
        {"op": "move", "from": "/data/b", "path": "/data/c"},
        {"op": "test", "path": "/data/c", "value": "2"},
    ]
    assert json_patch(doc, ops) == {"data": {"a": "x", "c": "2"}, "list": [2, 3]}
    with pytest.raises(KubeError) as failed:
        json_patch(doc, [{"op": "test", "path": "/data/a", "value": "nope"}])
    assert failed.value.code == 422
    with pytest.raises(KubeError):
        json_patch(doc, [{"op": "remove", "path": "/missing"}])
    assert doc == {"data": {"a": "1"}, "list": [1, 2]}


maps = st.recursive(
    st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
    lambda inner: st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), inner, max_size=4),
    max_leaves=20,
)
docs = st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), maps, max_size=5)


@settings(deadline=None, max_examples=200)
@given(docs, docs)
def test_without_lists_strategic_merge_is_a_merge_patch(
    doc: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert strategic_merge(doc, patch) == merge_patch(doc, patch)
    assert merge_patch(doc, {}) == doc
    assert merge_patch(merge_patch(doc, patch), patch) == merge_patch(doc, patch)

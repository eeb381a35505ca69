"""The line of a YAML text where an admission error's field is written (the console's
highlight when an edit is refused)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kled.ui.yamlpath import field_line, path_parts

TEXT = """\
kind: App
metadata:
  name: web
  labels:
    "a b": x
spec:
  replicas: -1
  ports:
  - port: 80
  - {port: 99999, name: http}
"""


def test_paths_split_as_admission_writes_them() -> None:
    assert path_parts("spec.ports[1].port") == ["spec", "ports", 1, "port"]
    assert path_parts("metadata.labels['a b']") == ["metadata", "labels", "a b"]
    assert path_parts("kind") == ["kind"]


def test_the_line_of_a_field_in_block_and_flow_style() -> None:
    assert field_line(TEXT, "spec.replicas") == 7
    assert field_line(TEXT, "spec.ports[0].port") == 9
    assert field_line(TEXT, "spec.ports[1].port") == 10
    assert field_line(TEXT, "metadata.labels['a b']") == 5


def test_a_missing_field_points_at_its_nearest_written_parent() -> None:
    assert field_line(TEXT, "spec.resources.cpu") == 6
    assert field_line(TEXT, "spec.ports[7].port") == 8
    assert field_line(TEXT, "status") is None
    assert field_line(TEXT, None) is None


def test_text_that_is_not_yaml_has_no_line() -> None:
    assert field_line("kind: [", "kind") is None


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=200), st.text(max_size=40))
def test_any_text_and_path_give_a_line_of_the_text_or_none(text: str, path: str) -> None:
    line = field_line(text, path)
    assert line is None or 1 <= line <= len(text.splitlines()) + 1


def test_in_a_stream_the_failing_document_is_searched() -> None:
    stream = "kind: Environment\nmetadata: {name: dev}\n---\n" + TEXT
    assert field_line(stream, "spec.replicas", "App", "web") == 10
    assert field_line(stream, "metadata.name", "Environment", "dev") == 2
    assert field_line(stream, "spec.replicas", "App", "other") is None
    assert field_line(stream, "spec.replicas") is None  # which one, without a kind and name?

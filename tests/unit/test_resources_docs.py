"""The examples in docs/resources.md are valid resources, one for every kind."""

from __future__ import annotations

import re
from pathlib import Path

from kled.resources.loading import load_documents
from kled.resources.registry import KINDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "resources.md"


def yaml_examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_every_yaml_example_in_the_docs_loads() -> None:
    kinds = []
    for number, example in enumerate(yaml_examples(), start=1):
        for resource in load_documents(example, source=f"resources.md example {number}"):
            kinds.append(resource["kind"])
    assert {info.kind for info in KINDS} <= set(kinds)


def test_every_kind_has_a_section() -> None:
    text = DOC.read_text(encoding="utf-8")
    for info in KINDS:
        assert re.search(rf"^## {info.kind} \(", text, flags=re.M), info.kind

"""Label and field selectors of list, watch and deletecollection requests.

Labels use Kled's selector grammar (the Kubernetes one); fields are the equality-based
subset Kubernetes supports for these kinds: ``metadata.name``, ``metadata.namespace``,
``status.phase``, ``spec.nodeName``, ``type`` (Secret, Event), and an Event's
``involvedObject.*`` and ``reason``, with ``=``, ``==`` and ``!=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kled.errors import InvalidInput
from kled.kube.status import bad_request
from kled.resources.selectors import parse_selector

FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "status.phase",
    "spec.nodeName",
    "type",
    # Events, as ``kubectl describe`` asks for those of one object
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "reason",
)
LabelMatcher = Callable[[dict[str, str]], bool]
FieldMatcher = Callable[[dict[str, Any]], bool]


def labels(text: str | None) -> LabelMatcher | None:
    if not text:
        return None
    try:
        return parse_selector(text).matches
    except InvalidInput as e:
        raise bad_request(f"unable to parse requirement: {e.message}") from None


def _value(obj: dict[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    return "" if current is None else str(current)


def fields(text: str | None) -> FieldMatcher | None:
    if not text:
        return None
    terms: list[tuple[str, bool, str]] = []
    for term in text.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            equal = False
        elif "==" in term:
            key, value = term.split("==", 1)
            equal = True
        elif "=" in term:
            key, value = term.split("=", 1)
            equal = True
        else:
            raise bad_request(f'invalid field selector: "{term}": expected key=value')
        key = key.strip()
        if key not in FIELDS:
            raise bad_request(f'field label not supported: "{key}"')
        terms.append((key, equal, value.strip()))

    def matches(obj: dict[str, Any]) -> bool:
        return all((_value(obj, key) == value) == equal for key, equal, value in terms)

    return matches

"""Which owner an App was made for: the controllers that run their kinds as Apps (Jobs,
managed services) label each App with its owner's name and find their work from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def owner_refs(apps: Iterable[dict[str, Any]], label: str) -> set[tuple[str, str, str]]:
    """``(team, environment, owner)`` of every App that carries ``label``."""
    refs = set()
    for app in apps:
        owner = ((app.get("metadata") or {}).get("labels") or {}).get(label)
        if owner:
            m = app["metadata"]
            refs.add((m["team"], m.get("environment") or "", str(owner)))
    return refs

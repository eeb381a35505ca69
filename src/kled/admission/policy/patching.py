"""The change a mutating policy made, as a JSON Patch (RFC 6902).

``mutate(object)`` hands back a whole object; people and logs want to see what changed.
``json_patch`` computes the add/remove/replace operations from the object before to the
object after, so ``kled policy test`` can print them and the API can report them.
"""

from __future__ import annotations

from typing import Any


def _pointer(path: list[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def json_patch(before: Any, after: Any, path: list[str] | None = None) -> list[dict[str, Any]]:
    """Operations turning ``before`` into ``after``; objects are compared key by key,
    lists as whole values (a changed list is one ``replace``)."""
    here = path or []
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": _pointer([*here, str(key)])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": _pointer([*here, str(key)]), "value": value})
            elif before[key] != value:
                ops.extend(json_patch(before[key], value, [*here, str(key)]))
        return ops
    if before == after and type(before) is type(after):
        return []
    return [{"op": "replace", "path": _pointer(here), "value": after}]

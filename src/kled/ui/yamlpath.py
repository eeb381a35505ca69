"""Where a field path (``spec.ports[0].port``, as admission errors name fields) is written in
a YAML text: the line the console highlights when an edit is refused.

Pure: the text is composed (not loaded) by PyYAML, whose nodes keep their marks; the path
is followed key by key and index by index as far as the text has it, so a missing field
points at its nearest written parent.
"""

from __future__ import annotations

import re

import yaml

_PART = re.compile(r"""\.?([A-Za-z_$][\w$-]*)|\[(\d+)\]|\[(['"])(.*?)\3\]""")


def path_parts(path: str) -> list[str | int]:
    """``spec.ports[0].port`` → ``["spec", "ports", 0, "port"]``; ``labels['a b']`` too."""
    parts: list[str | int] = []
    at = 0
    while at < len(path):
        found = _PART.match(path, at)
        if found is None or found.end() == at:
            break
        name, index, _, quoted = found.groups()
        parts.append(int(index) if index is not None else (name if name is not None else quoted))
        at = found.end()
    return parts


def field_line(
    text: str, path: str | None, kind: str | None = None, name: str | None = None
) -> int | None:
    """The 1-based line of ``text`` where ``path`` (or its nearest written parent) is, or
    None when the path names nothing in it. In a stream of several documents, the one of
    ``kind`` named ``name`` is searched (a lone document needs neither)."""
    if not path:
        return None
    try:
        found = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
    except yaml.YAMLError:
        return None
    if kind is None:
        chosen = found[0] if len(found) == 1 else None
    else:
        chosen = next(
            (
                n
                for n in found
                if _scalar(n, ["kind"]) == kind and _scalar(n, ["metadata", "name"]) == name
            ),
            None,
        )
    return _walk(chosen, path_parts(path)) if chosen is not None else None


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    """The node under ``part`` (a mapping's value, a sequence's item), or None."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key if value is None else value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item
    return None


def _scalar(node: yaml.Node, parts: list[str | int]) -> str | None:
    for part in parts:
        found = _child(node, part)
        if found is None:
            return None
        node = found
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _walk(node: yaml.Node, parts: list[str | int]) -> int | None:
    line: int | None = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line

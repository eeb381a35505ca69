"""The bounds every stored document keeps: size, depth, text that is real UTF-8, plain JSON.

Free-form parts of a resource (``status``, annotations, a ManagedService's ``parameters``)
are not shaped by a schema, so without a bound one member's request could store a document
that every later reader chokes on: 500 levels of nesting overflow the recursion of
``copy.deepcopy`` and ``json``; a lone surrogate (``"\\ud800"``) is stored but cannot be
encoded into any response; a huge document slows every list. These checks run at the edge
(the API, before admission) and again in the store on every write, so nothing outside the
bounds is ever stored, whoever writes it — a member, a controller or an agent's status.

The walk is iterative: it must not itself be the thing a deep document overflows.
"""

from __future__ import annotations

import json
from typing import Any

from kled.errors import InvalidInput

#: the largest document, as compact JSON (the issue's figure: Kubernetes allows 1.5 MiB
#: per object in etcd; Kled's documents are far smaller, and every one is held in memory)
MAX_DOCUMENT_BYTES = 256 * 1024
#: the deepest nesting of mappings and lists, the document itself being level 1
MAX_DEPTH = 32


def problem(value: Any, *, max_bytes: int | None = MAX_DOCUMENT_BYTES) -> tuple[str, str] | None:
    """``(field, message)`` for the first bound ``value`` breaks, or None when it keeps all.

    Checks depth, key and value types (JSON's: mappings with text keys, lists, text,
    numbers, booleans, null), that every text encodes as UTF-8, then the size (unless
    ``max_bytes`` is None: a document read back was measured when it was written).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels"
            for key, child in item.items():
                if not isinstance(key, str):
                    return path, f"key {key!r} must be text"
                where = _join(path, key)
                if not _is_utf8(key):
                    return path, f"key {key.encode('utf-8', 'backslashreplace')!r} is not UTF-8"
                stack.append((child, where, depth + 1))
        elif isinstance(item, list | tuple):
            if depth > MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels"
            for index, child in enumerate(item):
                stack.append((child, f"{path}[{index}]", depth + 1))
        elif isinstance(item, str):
            if not _is_utf8(item):
                return path, "is not valid UTF-8 text (a lone surrogate such as \\ud800)"
        elif item is None or isinstance(item, bool | int):
            continue
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return path, "must be a finite number"
        else:
            kind = type(item).__name__
            return path, f"must be JSON (text, number, boolean, list or mapping), not {kind}"
    if max_bytes is None:
        return None
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > max_bytes:
        return "", f"the document is {size} bytes, over the limit of {max_bytes}"
    return None


def check(value: Any, *, prefix: str = "", max_bytes: int | None = MAX_DOCUMENT_BYTES) -> None:
    """Raise InvalidInput naming the field when ``value`` breaks a bound."""
    found = problem(value, max_bytes=max_bytes)
    if found is None:
        return
    path, message = found
    if prefix and path:
        field: str | None = prefix + (path if path.startswith("[") else f".{path}")
    else:
        field = path or prefix or None
    raise InvalidInput(message, field=field)


def loads(raw: bytes | str) -> Any:
    """JSON text as Python values, refusing what the bounds refuse, with one-line errors.

    ``json.loads`` itself recurses per level and overflows near 1,000, which is within a
    1 MiB body; that overflow is an error in the input, not in the server.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidInput(f"the body is JSON nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the body is not UTF-8: {e.reason}") from None
    except ValueError as e:
        raise InvalidInput(f"the body is not JSON: {e}") from None
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"

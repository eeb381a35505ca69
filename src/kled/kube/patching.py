"""The three patch types of the Kubernetes API, as pure functions of (object, patch).

- JSON patch (RFC 6902): a list of operations on JSON pointers.
- JSON merge patch (RFC 7386): a partial object; ``null`` deletes a key; lists replace.
- Strategic merge patch: a merge patch that merges the lists Kubernetes gives a merge key
  (containers by ``name``, container ports by ``containerPort``, service ports by ``port``,
  env and volumes by ``name``, …) instead of replacing them, with the directives kubectl's
  client-side ``apply`` sends: ``$patch: replace|delete|merge``, ``$retainKeys``,
  ``$setElementOrder/<list>`` and ``$deleteFromPrimitiveList/<list>``.

The merge keys are those of the kinds ``kled.kube.served`` lists; a list without one is
replaced, as it is for an atomic list in Kubernetes.
"""

from __future__ import annotations

import copy
from typing import Any

from kled.kube.status import KubeError, bad_request

#: list field → the keys that identify its items, tried in order
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "secrets": ("name",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
}
ORDER = "$setElementOrder/"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


# ---- JSON patch -------------------------------------------------------------------------


def json_patch(doc: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    result = copy.deepcopy(doc)
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"JSON patch operation {index} needs 'op' and 'path'")
        result = _apply_op(result, op)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _get(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise KubeError(422, "Invalid", f"the path /{'/'.join(parts)} does not exist")
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind = op["op"]
    parts = _pointer(str(op["path"]))
    if kind == "test":
        if _get(doc, parts) != op.get("value"):
            raise KubeError(422, "Invalid", f"test operation failed at {op['path']}")
        return doc
    if kind in ("copy", "move"):
        source = _pointer(str(op.get("from", "")))
        value = copy.deepcopy(_get(doc, source))
        if kind == "move":
            doc = _apply_op(doc, {"op": "remove", "path": op["from"]})
        return _apply_op(doc, {"op": "add", "path": op["path"], "value": value})
    if kind not in ("add", "remove", "replace"):
        raise bad_request(f"unknown JSON patch operation {kind!r}")
    if not parts:
        return None if kind == "remove" else copy.deepcopy(op.get("value"))
    parent = _get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if kind != "add" and last not in parent:
            raise KubeError(422, "Invalid", f"the path {op['path']} does not exist")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op.get("value"))
    elif isinstance(parent, list):
        if last == "-" and kind == "add":
            parent.append(copy.deepcopy(op.get("value")))
            return doc
        if not last.isdigit() or int(last) > len(parent) - (0 if kind == "add" else 1):
            raise KubeError(422, "Invalid", f"the path {op['path']} does not exist")
        at = int(last)
        if kind == "add":
            parent.insert(at, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            del parent[at]
        else:
            parent[at] = copy.deepcopy(op.get("value"))
    else:
        raise KubeError(422, "Invalid", f"the path {op['path']} does not exist")
    return doc


# ---- JSON merge patch -------------------------------------------------------------------


def merge_patch(doc: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---- strategic merge patch --------------------------------------------------------------


def strategic_merge(doc: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise bad_request("a strategic merge patch must be a JSON object")
    return _merge_map(doc if isinstance(doc, dict) else {}, patch)


def _merge_map(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return {}
    result = copy.deepcopy(original)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(ORDER):
            continue
        if key.startswith(DELETE_PRIMITIVE):
            field = key[len(DELETE_PRIMITIVE) :]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            merged = _merge_map(current if isinstance(current, dict) else {}, value)
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            order = patch.get(ORDER + key)
            result[key] = _merge_list(key, result.get(key), value, order)
        else:
            result[key] = copy.deepcopy(value)
    for key, order in patch.items():
        if key.startswith(ORDER) and key[len(ORDER) :] not in patch:
            field = key[len(ORDER) :]
            result[field] = _merge_list(field, result.get(field), [], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    candidates = MERGE_KEYS.get(field)
    if not candidates:
        return None
    dicts = [item for item in items if isinstance(item, dict) and item.get("$patch") is None]
    for key in candidates:
        if all(key in item for item in dicts):
            return key
    return None


def _merge_list(field: str, original: Any, patch: list[Any], order: Any) -> list[Any]:
    current = original if isinstance(original, list) else []
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    key = _merge_key(field, [*current, *patch])
    if key is None or not all(isinstance(i, dict) for i in [*current, *patch]):
        return copy.deepcopy(patch)
    merged: dict[Any, Any] = {item.get(key): copy.deepcopy(item) for item in current}
    for item in patch:
        ident = item.get(key)
        if item.get("$patch") == "delete":
            merged.pop(ident, None)
        elif ident in merged:
            merged[ident] = _merge_map(merged[ident], item)
        else:
            merged[ident] = _merge_map({}, item)
    if isinstance(order, list):
        wanted = [o.get(key) if isinstance(o, dict) else o for o in order]
        ordered = [merged[i] for i in wanted if i in merged]
        rest = [v for i, v in merged.items() if i not in wanted]
        return [*ordered, *rest]
    return list(merged.values())

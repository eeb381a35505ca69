"""Reading resources from YAML or JSON files, and writing them back as YAML.

``kled apply -f``, the server's bootstrap files and the tests read resources through
:func:`load_documents` and :func:`load_path`. Every error names where it is, in one
line a person can act on::

    app.yaml: document 2 (App/api): spec.ports[0].port: must be 1-65535
    app.yaml: line 3, column 5: mapping values are not allowed here

Documents in a foreign form (jsPolicy's ``JsPolicy``, for one) are turned into Kled's
form by translators registered with :func:`register_translator`, before validation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from kled.errors import InvalidInput, KledError
from kled.resources import bounds
from kled.resources.kinds import validate

log = logging.getLogger(__name__)

Translator = Callable[[dict[str, Any]], dict[str, Any]]

_TRANSLATORS: dict[tuple[str, str], Translator] = {}

SUFFIXES = (".yaml", ".yml", ".json")


class DocumentError(InvalidInput):
    """A problem in one document (or in a whole file) of a source.

    ``message`` is the full line, prefixed with the source and document; ``field`` is
    the path inside the document, if any; ``document`` counts from 1 (0: the file).
    """

    def __init__(
        self, message: str, *, source: str, document: int = 0, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.source = source
        self.document = document

    def __str__(self) -> str:
        return self.message


def register_translator(api_version: str, kind: str, fn: Translator) -> None:
    """Turn documents of ``api_version``/``kind`` into Kled's form with ``fn``.

    ``fn`` gets a copy of the document and returns a ``kled.io/v1`` one; it may raise
    InvalidInput, which is reported like any other error in the document.
    """
    _TRANSLATORS[(api_version, kind)] = fn


def unregister_translator(api_version: str, kind: str) -> None:
    _TRANSLATORS.pop((api_version, kind), None)


def translate(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` in Kled's form: translated if a translator knows its apiVersion and kind."""
    fn = _TRANSLATORS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if fn is None:
        return doc
    translated = fn(json.loads(json.dumps(doc, default=str)))
    if not isinstance(translated, dict):
        raise InvalidInput("translator did not return a mapping")
    return translated


#: how many nodes a YAML document may stand for once its aliases are expanded; a
#: "billion laughs" document of a few hundred bytes stands for billions
MAX_YAML_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice, which silently drops data otherwise, and
    aliases that expand past :data:`MAX_YAML_NODES` nodes or refer to themselves."""

    def get_node(self) -> yaml.Node | None:
        node = super().get_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes ``root`` expands to, each alias counted in full, without expanding."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)",
                    node.start_mark,
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the node that contains it", node.start_mark
            )
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key fails in construct_mapping, with its own message
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _describe(doc: Any) -> str:
    """``(App/api)`` for a document that has a kind, else nothing."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return ""
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str) and name:
        return f" ({doc['kind']}/{name if name.isprintable() else repr(name)})"
    return f" ({doc['kind']})"


def _yaml_documents(text: str, source: str) -> Iterator[Any]:
    try:
        yield from yaml.load_all(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "not valid YAML"
        raise DocumentError(f"{source}: {where}{what}", source=source) from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"{source}: not valid YAML: {exc}", source=source) from None
    except RecursionError:
        raise DocumentError(f"{source}: YAML nested too deep", source=source) from None


def _json_documents(text: str, source: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"{source}: line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
        ) from None
    return value if isinstance(value, list) else [value]


def _load_one(raw: Any, source: str, number: int) -> dict[str, Any]:
    where = f"{source}: document {number}"
    if not isinstance(raw, dict):
        raise DocumentError(
            f"{where}: must be a mapping, not {_kind_of(raw)}", source=source, document=number
        )
    described = f"{where}{_describe(raw)}"
    try:
        bounds.check(raw)
        try:
            translated = translate(raw)
        except KledError:
            raise
        except Exception as exc:  # a translator is outside code: report its bug as such
            log.exception("translator failed on %s", described)
            raise InvalidInput(f"cannot translate: {exc}") from exc
        return validate(translated)
    except KledError as exc:
        field = exc.field
        text = f"{field}: {exc.message}" if field else exc.message
        raise DocumentError(
            f"{described}: {text}", source=source, document=number, field=field
        ) from None


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def load_documents(text: str, source: str = "-") -> list[dict[str, Any]]:
    """Every resource in ``text`` (multi-document YAML, or JSON), validated.

    Empty documents are skipped; documents are numbered from 1 as they stand in the
    text, empty ones included, so a number points at the right ``---`` section.
    """
    if source.endswith(".json"):
        raw_docs: list[Any] = _json_documents(text, source)
    else:
        raw_docs = list(_yaml_documents(text, source))
    return [
        _load_one(raw, source, number)
        for number, raw in enumerate(raw_docs, start=1)
        if raw is not None
    ]


def files_in(path: Path, *, recursive: bool = False) -> list[Path]:
    """The resource files in a folder (``*.yaml``, ``*.yml``, ``*.json``), sorted."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in SUFFIXES)


def load_path(path: str | Path, *, recursive: bool = False) -> list[dict[str, Any]]:
    """The resources in a file, or in every resource file of a folder, in name order."""
    target = Path(path)
    if target.is_dir():
        files = files_in(target, recursive=recursive)
    elif target.exists():
        files = [target]
    else:
        raise InvalidInput(f"{path}: no such file or directory", field="path")
    docs: list[dict[str, Any]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentError(f"{file}: cannot read: {exc}", source=str(file)) from None
        docs.extend(load_documents(text, source=str(file)))
    return docs


class _Dumper(yaml.SafeDumper):
    """Block style, keys in document order, multi-line text (scripts) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    """``docs`` as multi-document YAML that :func:`load_documents` reads back."""
    return yaml.dump_all(
        docs,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        explicit_start=len(docs) > 1,
    )

"""Dev container features kept in the repository (``./name``): metadata, options, order.

A feature is a folder with ``devcontainer-feature.json`` and ``install.sh``; the
devcontainer.json names it by a path relative to itself and gives it options. Before
``install.sh`` runs (as root, at build), its options become environment variables: the
option's name upper-cased, every non-word character turned into ``_`` (``opt-x`` →
``OPT_X``), the user's value or else the option's default.

Features are installed in the reference's order (``containerFeaturesOrder.ts``): in
rounds; a round holds every feature whose ``dependsOn`` (hard, pulled in with its
options) and ``installsAfter`` (soft, only among features present) are installed; the
highest ``overrideFeatureInstallOrder`` priority in a round goes first and the rest wait;
a round is sorted by the feature's resolved path.

Kled fetches nothing here: an OCI reference (``ghcr.io/…:1``), an ``https://`` tarball or
a legacy short id is refused with ``FeatureUnavailable``, one line naming it, before
anything is built. The runtime surfaces it as the workspace's failure.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kled.errors import PermanentError
from kled.workspace import jsonc
from kled.workspace.devcontainer import ResolvedConfig
from kled.workspace.discovery import DEVCONTAINER_DIR
from kled.workspace.jsonc import Document
from kled.workspace.properties import LIFECYCLE_HOOKS, Command, FeatureOptions, to_command

METADATA_FILE = "devcontainer-feature.json"
INSTALL_SCRIPT = "install.sh"

SourceKind = Literal["local", "oci", "tarball", "legacy"]


class FeatureUnavailable(PermanentError):
    """A feature Kled cannot get: nothing is fetched, so only local features install."""

    status = 422
    reason = "FeatureUnavailable"

    def __init__(self, feature: str, why: str) -> None:
        super().__init__(f"feature {feature!r} is unavailable: {why}")
        self.feature = feature


def source_kind(user_id: str) -> SourceKind:
    """How a feature id is fetched, by the reference's rules."""
    if user_id.startswith(("./", "../", "/")):
        return "local"
    if user_id.startswith("https://"):
        return "tarball"
    if "/" not in user_id and "\\" not in user_id:
        return "legacy"
    return "oci"


@dataclass(frozen=True)
class FeatureOption:
    type: Literal["boolean", "string"]
    default: bool | str | None = None
    enum: tuple[str, ...] = ()
    proposals: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class Feature:
    """A local feature as devcontainer.json asks for it, with its metadata read."""

    #: as written in devcontainer.json (``./node``) or in a ``dependsOn``
    user_id: str
    path: Path
    #: the metadata's ``id``
    id: str
    #: what devcontainer.json gave: true, a string (the ``version`` option), or options
    value: FeatureOptions
    version: str | None = None
    name: str | None = None
    options: Mapping[str, FeatureOption] = field(default_factory=dict)
    depends_on: Mapping[str, FeatureOptions] = field(default_factory=dict)
    installs_after: tuple[str, ...] = ()
    container_env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Any, ...] = ()
    privileged: bool = False
    init: bool = False
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    entrypoint: str | None = None
    #: the feature's own lifecycle commands, which run before devcontainer.json's
    hooks: Mapping[str, Command] = field(default_factory=dict)

    @property
    def install_script(self) -> Path:
        return self.path / INSTALL_SCRIPT

    def option_values(self) -> dict[str, bool | str]:
        """Each option's value: the user's, else its default (the reference's rule,
        ``getFeatureValueObject``: a bare string or boolean sets ``version`` when the
        feature has that option, and nothing else)."""
        values: dict[str, bool | str] = {
            name: option.default
            for name, option in self.options.items()
            if option.default is not None
        }
        if isinstance(self.value, dict):
            values.update(self.value)
        elif "version" in self.options:
            values["version"] = self.value
        return values

    def env(self) -> dict[str, str]:
        """The environment ``install.sh`` runs with: one variable per option."""
        return {
            safe_env_name(name): _js_string(value) for name, value in self.option_values().items()
        }


def safe_env_name(name: str) -> str:
    """An option name as an environment variable: non-word → ``_``, leading digits and
    underscores → one ``_``, upper case (the reference's ``getSafeId``)."""
    return re.sub(r"^[\d_]+", "_", re.sub(r"[^\w]", "_", name, flags=re.ASCII)).upper()


def _js_string(value: bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def resolve_features(resolved: ResolvedConfig) -> list[Feature]:
    """The features of ``resolved``, read from disk, in the order they install.

    Raises FeatureUnavailable for a feature that would have to be fetched, and
    ConfigError for a local one that is missing or malformed.
    """
    config = resolved.config
    roots = [_Node(uid, options) for uid, options in config.features.items()]
    for node in roots:
        _check_fetchable(node.user_id, None)
    nodes = _build_graph(roots, resolved)
    return _order(nodes, config.override_feature_install_order or [], resolved)


# --- reading ----------------------------------------------------------------------------


def _check_fetchable(user_id: str, wanted_by: str | None) -> None:
    kind = source_kind(user_id)
    if kind == "local":
        return
    by = f" (a dependency of {wanted_by!r})" if wanted_by else ""
    if kind == "legacy":
        why = "a short id of the retired feature catalogue; write './name' for a local feature"
    else:
        where = "an OCI registry" if kind == "oci" else "a URL"
        why = f"it would be fetched from {where}, and Kled installs only local features (./name)"
    raise FeatureUnavailable(user_id, why + by)


def _feature_folder(user_id: str, resolved: ResolvedConfig) -> Path:
    if user_id.startswith("/"):
        raise resolved.error("a local feature must be a relative path", ["features", user_id])
    folder = Path(posixpath.normpath(posixpath.join(resolved.config_folder.as_posix(), user_id)))
    allowed = resolved.local_workspace_folder / DEVCONTAINER_DIR
    if folder != allowed and allowed not in folder.parents:
        raise resolved.error(
            f"a local feature must be inside {DEVCONTAINER_DIR}/ (resolves to {folder})",
            ["features", user_id],
        )
    return folder


def read_feature(user_id: str, value: FeatureOptions, resolved: ResolvedConfig) -> Feature:
    """Read the local feature ``user_id`` (relative to the devcontainer.json)."""
    folder = _feature_folder(user_id, resolved)
    metadata_path = folder / METADATA_FILE
    if not folder.is_dir():
        raise resolved.error(f"no feature folder at {folder}", ["features", user_id])
    if not metadata_path.is_file():
        raise resolved.error(f"{folder} has no {METADATA_FILE}", ["features", user_id])
    if not (folder / INSTALL_SCRIPT).is_file():
        raise resolved.error(f"{folder} has no {INSTALL_SCRIPT}", ["features", user_id])
    document = jsonc.load(metadata_path)
    return parse_metadata(document, user_id, folder, value)


def parse_metadata(
    document: Document, user_id: str, folder: Path, value: FeatureOptions
) -> Feature:
    """A Feature from its parsed ``devcontainer-feature.json``."""
    meta = document.value
    if not isinstance(meta, dict):
        raise document.error("must contain a JSON object")
    ident = meta.get("id")
    if not isinstance(ident, str) or not ident:
        raise document.error("field required: the feature's id", ["id"])
    options: dict[str, FeatureOption] = {}
    raw_options = _mapping(document, meta, "options")
    for name, spec in raw_options.items():
        if not isinstance(spec, dict):
            raise document.error("must be an object {type, default…}", ["options", name])
        kind = spec.get("type")
        if kind not in ("boolean", "string"):
            raise document.error("must be 'boolean' or 'string'", ["options", name, "type"])
        default = spec.get("default")
        if default is not None and not isinstance(default, bool if kind == "boolean" else str):
            raise document.error(f"must be a {kind}", ["options", name, "default"])
        options[name] = FeatureOption(
            type=kind,
            default=default,
            enum=tuple(spec.get("enum") or ()),
            proposals=tuple(spec.get("proposals") or ()),
            description=spec.get("description"),
        )
    hooks: dict[str, Command] = {}
    for hook in LIFECYCLE_HOOKS[1:]:
        if hook in meta:
            try:
                command = to_command(meta[hook])
            except ValueError as exc:
                raise document.error(str(exc), [hook]) from None
            if command is not None:
                hooks[hook] = command
    installs_after = meta.get("installsAfter") or []
    if not isinstance(installs_after, list) or not all(isinstance(x, str) for x in installs_after):
        raise document.error("must be an array of feature ids", ["installsAfter"])
    return Feature(
        user_id=user_id,
        path=folder,
        id=ident,
        value=value,
        version=meta.get("version"),
        name=meta.get("name"),
        options=options,
        depends_on=_mapping(document, meta, "dependsOn"),
        installs_after=tuple(installs_after),
        container_env=_mapping(document, meta, "containerEnv"),
        mounts=tuple(meta.get("mounts") or ()),
        privileged=bool(meta.get("privileged", False)),
        init=bool(meta.get("init", False)),
        cap_add=tuple(meta.get("capAdd") or ()),
        security_opt=tuple(meta.get("securityOpt") or ()),
        entrypoint=meta.get("entrypoint"),
        hooks=hooks,
    )


def _mapping(document: Document, meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key) or {}
    if not isinstance(value, dict):
        raise document.error("must be an object", [key])
    return value


# --- ordering ---------------------------------------------------------------------------


@dataclass
class _Node:
    user_id: str
    options: FeatureOptions
    feature: Feature | None = None
    depends_on: list[_Node] = field(default_factory=list)
    installs_after: list[Path] = field(default_factory=list)
    priority: int = 0

    @property
    def path(self) -> Path:
        assert self.feature is not None
        return self.feature.path

    def same(self, other: _Node) -> bool:
        return self.path == other.path and self.options == other.options

    def sort_key(self) -> tuple[Any, ...]:
        # The reference sorts with localeCompare; case-folding first comes closest.
        path = self.path.as_posix()
        return (path.casefold(), path, _options_key(self.options))


def _options_key(options: FeatureOptions) -> tuple[Any, ...]:
    """The reference's ``optionsCompareTo``: by type name (boolean < object < string),
    false before true, fewer options first, then key by key."""
    if isinstance(options, bool):
        return (0, int(options))
    if isinstance(options, dict):
        items = tuple((key.casefold(), key, _options_key(options[key])) for key in sorted(options))
        return (1, len(options), items)
    return (2, options.casefold(), options)


def _build_graph(roots: list[_Node], resolved: ResolvedConfig) -> list[_Node]:
    worklist = list(roots)
    done: list[_Node] = []
    while worklist:
        node = worklist.pop(0)
        node.feature = read_feature(node.user_id, node.options, resolved)
        if any(node.same(seen) for seen in done):
            continue
        for dep_id, dep_options in node.feature.depends_on.items():
            _check_fetchable(dep_id, node.user_id)
            # Ids in a feature's metadata are, like devcontainer.json's, relative to the
            # devcontainer.json: the reference resolves them the same way.
            dependency = _Node(dep_id, dep_options)
            node.depends_on.append(dependency)
            worklist.append(dependency)
        for soft_id in node.feature.installs_after:
            if source_kind(soft_id) == "local":
                node.installs_after.append(_feature_folder(soft_id, resolved))
        done.append(node)
    return done


def _order(nodes: list[_Node], override: Sequence[str], resolved: ResolvedConfig) -> list[Feature]:
    for index, user_id in enumerate(override):
        priority = len(override) - index
        if source_kind(user_id) != "local":
            continue
        folder = _feature_folder(user_id, resolved)
        for node in nodes:
            if node.path == folder:
                node.priority = max(node.priority, priority)
    present = {node.path for node in nodes}
    for node in nodes:
        node.installs_after = [path for path in node.installs_after if path in present]
    installed: list[_Node] = []
    worklist = list(nodes)
    while worklist:
        ready = [
            node
            for node in worklist
            if all(any(dep.same(done) for done in installed) for dep in node.depends_on)
            and all(any(done.path == path for done in installed) for path in node.installs_after)
        ]
        if not ready:
            names = ", ".join(sorted(node.user_id for node in worklist))
            raise resolved.error(f"features depend on each other in a cycle: {names}", ["features"])
        top = max(node.priority for node in ready)
        ready = [node for node in ready if node.priority == top]
        worklist = [node for node in worklist if not any(node.same(r) for r in ready)]
        ready.sort(key=_Node.sort_key)
        installed.extend(ready)
    result: list[Feature] = []
    for node in installed:
        assert node.feature is not None
        result.append(node.feature)
    return result

"""devcontainer.json as typed data, resolved the way the reference CLI resolves it.

``load_config`` is the whole path from a file to something a runtime can act on: parse
the JSONC (``jsonc``), compute the default workspace mount and folder from the raw file,
substitute the client-side variables (``variables``), then validate the result against
``DevContainer``. Every problem is a ``ConfigError`` naming the file, the line and the
property; every property Kled does not know is one ``ConfigWarning``, returned to the
caller (never printed here), and otherwise ignored as the spec asks.

The order of those steps is the reference's (``readDevContainerConfigFile``): the
default ``workspaceFolder`` and ``workspaceMount`` are computed before substitution
(``/workspaces/<basename of the git root>/<path below it>``, source the git root), and
the substituted values of both properties, when written, replace the defaults.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from kled.resources.meta import error_location, field_path, friendly_message
from kled.workspace import jsonc
from kled.workspace.jsonc import ConfigError, Document
from kled.workspace.properties import (
    Build,
    Command,
    FeatureOptions,
    ForwardPortEntry,
    HookName,
    HostRequirements,
    LifecycleCommand,
    Mount,
    MountEntry,
    PortAttributes,
    SpecModel,
    parse_mount,
)
from kled.workspace.variables import (
    LocalContext,
    SubstitutionError,
    devcontainer_id,
    id_labels,
    substitute,
    substitute_container_env,
    substitute_devcontainer_id,
)

WORKSPACES_ROOT = "/workspaces"


class DevContainer(SpecModel):
    """The properties of devcontainer.json that Kled reads (image and Dockerfile forms)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    image: str | None = None
    build: Build | None = None
    features: dict[str, FeatureOptions] = Field(default_factory=dict)
    override_feature_install_order: list[str] | None = None
    workspace_folder: str | None = None
    workspace_mount: str | None = None
    mounts: list[MountEntry] = Field(default_factory=list)
    container_env: dict[str, str] = Field(default_factory=dict)
    #: a null value unsets the variable
    remote_env: dict[str, str | None] = Field(default_factory=dict)
    remote_user: str | None = None
    container_user: str | None = None
    update_remote_user_uid: bool | None = Field(default=None, alias="updateRemoteUserUID")
    user_env_probe: (
        Literal["none", "interactiveShell", "loginShell", "loginInteractiveShell"] | None
    ) = None
    run_args: list[str] = Field(default_factory=list)
    forward_ports: list[ForwardPortEntry] = Field(default_factory=list)
    app_port: int | str | list[int | str] | None = None
    ports_attributes: dict[str, PortAttributes] = Field(default_factory=dict)
    other_ports_attributes: PortAttributes | None = None
    #: None means the default: true (replace the command with a keep-alive loop)
    override_command: bool | None = None
    shutdown_action: Literal["none", "stopContainer"] | None = None
    init: bool | None = None
    privileged: bool | None = None
    cap_add: list[str] = Field(default_factory=list)
    security_opt: list[str] = Field(default_factory=list)
    host_requirements: HostRequirements | None = None
    #: tools' own settings (``vscode``, ``coder``…), kept and not read by Kled
    customizations: dict[str, Any] = Field(default_factory=dict)
    initialize_command: LifecycleCommand = None
    on_create_command: LifecycleCommand = None
    update_content_command: LifecycleCommand = None
    post_create_command: LifecycleCommand = None
    post_start_command: LifecycleCommand = None
    post_attach_command: LifecycleCommand = None
    wait_for: HookName | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # A property written as null is not set, as in the reference (JavaScript's
        # ``config.x || default``); null keeps its meaning inside values (``remoteEnv``).
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def hook(self, name: str) -> Command | None:
        """The command of lifecycle hook ``name`` (``postCreateCommand``…), if any."""
        command: Command | None = getattr(self, _SNAKE[name])
        return command


_SNAKE = {
    "initializeCommand": "initialize_command",
    "onCreateCommand": "on_create_command",
    "updateContentCommand": "update_content_command",
    "postCreateCommand": "post_create_command",
    "postStartCommand": "post_start_command",
    "postAttachCommand": "post_attach_command",
}

#: every top-level property the model reads, as written in the file
KNOWN_PROPERTIES = frozenset(
    (info.alias or name) for name, info in DevContainer.model_fields.items()
) | {"$schema"}
_NESTED_KNOWN = {
    "build": frozenset((info.alias or name) for name, info in Build.model_fields.items()),
    "hostRequirements": frozenset(
        (info.alias or name) for name, info in HostRequirements.model_fields.items()
    ),
}
#: spec properties of orchestrations Kled does not run (yet)
_UNSUPPORTED = ("dockerComposeFile", "service", "runServices")


@dataclass(frozen=True)
class ConfigWarning:
    """Something in the file that Kled ignores; the caller shows it once."""

    file: str
    line: int | None
    property: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.property}: {self.message}"


@dataclass(frozen=True)
class ResolvedConfig:
    """A devcontainer.json resolved for one workspace folder on the client."""

    config: DevContainer
    #: the file as written, with legacy properties moved to their current places
    raw: dict[str, Any]
    #: ``raw`` after client-side substitution: what ``config`` was validated from
    substituted: dict[str, Any]
    config_file: Path
    local_workspace_folder: Path
    #: the workspace's folder inside the container
    workspace_folder: str
    #: the ``--mount`` of the source; None when ``workspaceMount`` is set empty
    workspace_mount: str | None
    warnings: tuple[ConfigWarning, ...] = ()
    document: Document | None = field(default=None, repr=False, compare=False)

    @property
    def config_folder(self) -> Path:
        return self.config_file.parent

    @property
    def workspace_mount_spec(self) -> Mount | None:
        return parse_mount(self.workspace_mount) if self.workspace_mount else None

    @property
    def dockerfile_path(self) -> Path | None:
        build = self.config.build
        if build is None or build.dockerfile is None:
            return None
        return _resolve(self.config_folder, build.dockerfile)

    @property
    def build_context(self) -> Path | None:
        """The build context: ``build.context`` relative to the json file, else the
        Dockerfile's folder (the reference's rule; the spec's default ``.`` is the same
        whenever the Dockerfile sits beside the json file)."""
        build = self.config.build
        dockerfile = self.dockerfile_path
        if build is None or dockerfile is None:
            return None
        if build.context:
            return _resolve(self.config_folder, build.context)
        return dockerfile.parent

    @property
    def id_labels(self) -> dict[str, str]:
        return id_labels(str(self.local_workspace_folder), str(self.config_file))

    @property
    def devcontainer_id(self) -> str:
        return devcontainer_id(self.id_labels)

    def for_container(self, container_env: Mapping[str, str] | None = None) -> DevContainer:
        """The config with ``${devcontainerId}`` resolved, and ``${containerEnv:…}`` too
        once the container's environment is known."""
        value = substitute_devcontainer_id(self.substituted, self.id_labels)
        if container_env is not None:
            try:
                value = substitute_container_env(value, container_env)
            except SubstitutionError as exc:
                raise self.error(exc.message, exc.loc) from None
        return _validate(value, self.document, str(self.config_file))

    def error(self, message: str, loc: Sequence[str | int] = ()) -> ConfigError:
        """A ConfigError about the property at ``loc`` of this config's file."""
        if self.document is not None:
            return self.document.error(message, loc)
        return ConfigError(message, file=str(self.config_file), field=field_path(tuple(loc)))


def _resolve(folder: Path, relative: str) -> Path:
    return Path(posixpath.normpath(posixpath.join(folder.as_posix(), relative)))


def load_config(
    workspace: Path,
    config_file: Path,
    *,
    env: Mapping[str, str],
    host_mount_folder: Path | None = None,
    source: str | None = None,
) -> ResolvedConfig:
    """Read ``config_file`` for the workspace folder ``workspace``.

    ``env`` is the client's environment (``${localEnv:…}``); ``host_mount_folder`` is the
    folder mounted into the container, by default ``workspace`` (the runtime passes the
    git root, as the reference does). ``source`` is how errors name the file.
    """
    name = source or str(config_file)
    document = jsonc.load(config_file, source=name)
    return resolve_document(
        document, workspace, config_file, env=env, host_mount_folder=host_mount_folder
    )


def resolve_document(
    document: Document,
    workspace: Path,
    config_file: Path,
    *,
    env: Mapping[str, str],
    host_mount_folder: Path | None = None,
) -> ResolvedConfig:
    """``load_config`` for a document already parsed."""
    if not isinstance(document.value, dict):
        raise document.error("must contain a JSON object")
    raw = _update_old_properties(dict(document.value))
    for key in _UNSUPPORTED:
        if key in raw:
            raise document.error("Docker Compose configurations are not supported yet", [key])
    warnings = _unknown(raw, document)

    mount_folder = host_mount_folder or workspace
    if mount_folder != workspace and mount_folder not in workspace.parents:
        raise ValueError(f"{mount_folder} does not hold the workspace folder {workspace}")
    container_mount = posixpath.join(WORKSPACES_ROOT, mount_folder.name)
    default_folder = posixpath.normpath(
        posixpath.join(container_mount, workspace.relative_to(mount_folder).as_posix())
    )
    workspace_folder = raw.get("workspaceFolder") or default_folder
    workspace_mount: Any = (
        raw["workspaceMount"]
        if "workspaceMount" in raw
        else f"type=bind,{_csv_pair('source', str(mount_folder))},"
        f"{_csv_pair('target', container_mount)}"
    )
    context = LocalContext(env, str(workspace), str(workspace_folder))
    try:
        substituted: dict[str, Any] = substitute(raw, context)
    except SubstitutionError as exc:
        raise document.error(exc.message, exc.loc) from None
    if isinstance(substituted.get("workspaceFolder"), str):
        workspace_folder = substituted["workspaceFolder"]
    if "workspaceMount" in substituted:
        workspace_mount = substituted["workspaceMount"]
    config = _validate(substituted, document, document.source)
    if not workspace_folder:
        raise document.error("must not be empty", ["workspaceFolder"])
    if not PurePosixPath(workspace_folder).is_absolute():
        raise document.error(
            f"must be an absolute path in the container (got {workspace_folder!r})",
            ["workspaceFolder"],
        )
    if config.image is None and (config.build is None or config.build.dockerfile is None):
        raise document.error("set 'image', or 'build.dockerfile' to build one", [])
    if workspace_mount:
        try:
            parse_mount(workspace_mount)
        except ValueError as exc:
            raise document.error(str(exc), ["workspaceMount"]) from None
    return ResolvedConfig(
        config=config,
        raw=raw,
        substituted=substituted,
        config_file=config_file,
        local_workspace_folder=workspace,
        workspace_folder=workspace_folder,
        workspace_mount=workspace_mount or None,
        warnings=tuple(warnings),
        document=document,
    )


def _csv_pair(key: str, value: str) -> str:
    # The reference quotes the whole pair when the value holds a comma.
    return f'"{key}={value}"' if "," in value else f"{key}={value}"


def _validate(value: dict[str, Any], document: Document | None, source: str) -> DevContainer:
    try:
        return DevContainer.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        loc = error_location(first)
        message = friendly_message(first)
        if len(errors) > 1:
            more = len(errors) - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        if document is not None:
            raise document.error(message, loc) from None
        raise ConfigError(message, file=source, field=field_path(loc)) from None


def _unknown(raw: Mapping[str, Any], document: Document) -> list[ConfigWarning]:
    found: list[ConfigWarning] = []

    def warn(loc: tuple[str, ...]) -> None:
        found.append(
            ConfigWarning(
                document.source, document.line_of(loc), field_path(loc), "unknown property, ignored"
            )
        )

    for key, value in raw.items():
        if key not in KNOWN_PROPERTIES:
            warn((key,))
        elif key in _NESTED_KNOWN and isinstance(value, dict):
            for inner in value:
                if inner not in _NESTED_KNOWN[key]:
                    warn((key, inner))
    return found


def _update_old_properties(raw: dict[str, Any]) -> dict[str, Any]:
    """Move properties of older versions of the spec to where they live now.

    ``dockerFile`` and ``context`` at the top become ``build.dockerfile`` and
    ``build.context``; ``extensions``, ``settings`` and ``devPort`` become
    ``customizations.vscode``, as the reference does.
    """
    if "dockerFile" in raw:
        build = dict(raw.get("build") or {})
        build.setdefault("dockerfile", raw.pop("dockerFile"))
        if "context" in raw:
            build.setdefault("context", raw.pop("context"))
        raw["build"] = build
    if any(key in raw for key in ("extensions", "settings", "devPort")):
        customizations = dict(raw.get("customizations") or {})
        vscode = dict(customizations.get("vscode") or {})
        if isinstance(raw.get("extensions"), list):
            vscode["extensions"] = [*vscode.get("extensions", []), *raw.pop("extensions")]
        if isinstance(raw.get("settings"), dict):
            vscode["settings"] = {**raw.pop("settings"), **vscode.get("settings", {})}
        if "devPort" in raw and "devPort" not in vscode:
            vscode["devPort"] = raw.pop("devPort")
        customizations["vscode"] = vscode
        raw["customizations"] = customizations
    return raw

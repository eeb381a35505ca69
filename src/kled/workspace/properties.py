"""The values of devcontainer.json's properties, typed: commands, mounts, ports, sizes.

Each property the spec lets a user write in more than one form is read here into one
type, so that nothing downstream looks at the raw forms again: a lifecycle command
(string, array or object) becomes a ``ShellCommand``, ``ExecCommand`` or
``ParallelCommands``; a mount (Docker's ``--mount`` string or an object) a ``Mount``; a
forwarded port (``3000`` or ``"db:5432"``) a ``ForwardPort``; a size (``8gb``) is checked
and read in powers of 1024. ``devcontainer.DevContainer`` assembles them.
"""

from __future__ import annotations

import csv
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kled.resources.meta import problem

#: The lifecycle hooks, in the order they run.
LIFECYCLE_HOOKS = (
    "initializeCommand",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
)
HookName = Literal[
    "initializeCommand",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
]


class SpecModel(BaseModel):
    """Base of the spec's objects: camelCase in the file, strict types, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )


# --- lifecycle commands ---------------------------------------------------------------


class ShellCommand(SpecModel):
    """A string: run by ``/bin/sh -c``."""

    kind: Literal["shell"] = "shell"
    script: str


class ExecCommand(SpecModel):
    """An array: run as it is, with no shell."""

    kind: Literal["exec"] = "exec"
    argv: list[str]


class ParallelCommands(SpecModel):
    """An object: named commands, run at the same time; all must succeed."""

    kind: Literal["parallel"] = "parallel"
    commands: dict[str, ShellCommand | ExecCommand]


Command = ShellCommand | ExecCommand | ParallelCommands


def _single(value: Any) -> Any:
    if isinstance(value, str):
        return ShellCommand(script=value) if value.strip() else None
    if isinstance(value, list):
        if not all(isinstance(part, str) for part in value):
            raise problem("a command array must hold only strings")
        return ExecCommand(argv=value) if value else None
    raise problem("must be a string, an array of strings or an object of them")


def to_command(value: Any) -> Any:
    """A lifecycle command as written (string, array or object) → a Command, or None
    when there is nothing to run (an empty string, array or object)."""
    if value is None:
        return None
    if isinstance(value, dict):
        commands: dict[str, ShellCommand | ExecCommand] = {}
        for name, one in value.items():
            if not isinstance(one, str | list):
                raise problem("must be a string or an array of strings", [name])
            command = _single(one)
            if command is not None:
                commands[name] = command
        return ParallelCommands(commands=commands) if commands else None
    return _single(value)


LifecycleCommand = Annotated[Command | None, BeforeValidator(to_command)]


# --- mounts ---------------------------------------------------------------------------

_MOUNT_KEYS = {"src": "source", "source": "source", "destination": "target", "dst": "target"}
_MOUNT_KEYS["target"] = "target"
_TRUE = ("", "1", "true")


class Mount(SpecModel):
    """One ``--mount``: a bind of a host path, a named volume, or a tmpfs."""

    model_config = ConfigDict(validate_by_name=True)

    type: str = "volume"
    source: str | None = None
    target: str
    read_only: bool = False
    #: volumes only: the volume exists outside Kled, which must not delete it
    external: bool = False
    #: every other ``key=value`` of the string form (``consistency``, ``volume-opt``…)
    options: dict[str, str] = Field(default_factory=dict)

    def to_arg(self) -> str:
        """The value of ``--mount`` that makes this mount."""
        parts = [f"type={self.type}"]
        if self.source:
            parts.append(f"source={_quote_csv(self.source)}")
        parts.append(f"target={_quote_csv(self.target)}")
        if self.read_only:
            parts.append("readonly")
        parts += [f"{key}={_quote_csv(value)}" for key, value in self.options.items()]
        return ",".join(parts)


def _quote_csv(value: str) -> str:
    return f'"{value}"' if "," in value else value


def parse_mount(text: str) -> Mount:
    """The string form, as Docker reads ``--mount``: comma-separated ``key=value``."""
    values: dict[str, Any] = {"options": {}}
    for item in next(csv.reader([text])):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            values["read_only"] = value.strip().lower() in _TRUE
        elif key in _MOUNT_KEYS:
            values[_MOUNT_KEYS[key]] = value
        elif key == "type":
            values["type"] = value
        elif key == "external":
            values["external"] = value.strip().lower() in _TRUE
        elif key:
            values["options"][key] = value if eq else "true"
    if not values.get("target"):
        raise problem(f"mount {text!r} has no target")
    return Mount.model_validate(values)


def _to_mount(value: Any) -> Any:
    if isinstance(value, str):
        return parse_mount(value)
    if isinstance(value, dict):
        unknown = [key for key in value if key not in ("type", "source", "target", "external")]
        if unknown:
            raise problem("unknown field", [unknown[0]])
        # the spec's schema says bind or volume; the reference runs a tmpfs too (and
        # the string form allows one), so Kled does
        if value.get("type") not in ("bind", "volume", "tmpfs"):
            raise problem("must be 'bind', 'volume' or 'tmpfs'", ["type"])
        if not isinstance(value.get("target"), str) or not value["target"]:
            raise problem("field required: the path in the container", ["target"])
        return Mount.model_validate(value)
    raise problem("must be a mount string or an object {type, source, target}")


MountEntry = Annotated[Mount, BeforeValidator(_to_mount)]


# --- ports ----------------------------------------------------------------------------

_HOST_PORT = re.compile(r"^([a-z0-9.-]+):(\d{1,5})\Z")


class ForwardPort(SpecModel):
    """A ``forwardPorts`` entry: a port of the container, or ``host:port`` beside it."""

    port: int = Field(ge=0, le=65535)
    host: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.host else str(self.port)


def _to_forward_port(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem("must be a port number or 'host:port'")
    if isinstance(value, int):
        return ForwardPort(port=value) if 0 <= value <= 65535 else _bad_port(value)
    if isinstance(value, str):
        found = _HOST_PORT.match(value)
        if found and int(found.group(2)) <= 65535:
            return ForwardPort(host=found.group(1), port=int(found.group(2)))
    raise problem(f"must be a port number or 'host:port' (got {value!r})")


def _bad_port(value: int) -> Any:
    raise problem(f"must be a port number 0-65535 (got {value})")


ForwardPortEntry = Annotated[ForwardPort, BeforeValidator(_to_forward_port)]


class PortAttributes(SpecModel):
    """How a port is shown and forwarded; tools add their own keys, which are kept."""

    model_config = ConfigDict(extra="allow")

    label: str | None = None
    protocol: Literal["http", "https"] | None = None
    on_auto_forward: (
        Literal["notify", "openBrowser", "openBrowserOnce", "openPreview", "silent", "ignore"]
        | None
    ) = None
    require_local_port: bool | None = None
    elevate_if_needed: bool | None = None


# --- host requirements ----------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)([tgmk]b)?\Z")
_SIZE_UNITS = {"": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def size_bytes(value: str) -> int:
    """``"8gb"`` → bytes, as the spec writes sizes (``\\d+([tgmk]b)?``, powers of 1024)."""
    found = _SIZE.match(value.lower())
    if not found:
        raise ValueError(f"{value!r} is not a size like 4gb")
    return int(found.group(1)) * _SIZE_UNITS[found.group(2) or ""]


def _check_size(value: Any) -> Any:
    if isinstance(value, str) and not _SIZE.match(value.lower()):
        raise problem(f"must be a size like 512mb or 8gb (got {value!r})")
    return value


Size = Annotated[str, BeforeValidator(_check_size)]


class GpuRequirements(SpecModel):
    cores: int | None = Field(default=None, ge=1)
    memory: Size | None = None


class HostRequirements(SpecModel):
    """What a node must offer to run the workspace; the scheduler reads it."""

    model_config = ConfigDict(extra="ignore")

    cpus: int | None = Field(default=None, ge=1)
    memory: Size | None = None
    storage: Size | None = None
    gpu: bool | Literal["optional"] | GpuRequirements | None = None

    @property
    def memory_bytes(self) -> int | None:
        return size_bytes(self.memory) if self.memory else None

    @property
    def storage_bytes(self) -> int | None:
        return size_bytes(self.storage) if self.storage else None


# --- build ----------------------------------------------------------------------------


class Build(SpecModel):
    model_config = ConfigDict(extra="ignore")

    dockerfile: str | None = None
    #: relative to the devcontainer.json; by default the Dockerfile's folder
    context: str | None = None
    args: dict[str, str] = Field(default_factory=dict)
    target: str | None = None
    options: list[str] = Field(default_factory=list)
    cache_from: str | list[str] | None = None


FeatureOptions = bool | str | dict[str, bool | str]

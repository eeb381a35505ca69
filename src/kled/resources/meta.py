"""What every resource shares: names, labels, metadata, and how schema errors read.

The schemas in ``kled.resources.kinds`` are built from the pieces here: the naming rules
of Kubernetes (DNS labels, label keys and values), the ``metadata`` block every kind
carries, the base model configuration (camelCase on the wire, unknown fields refused),
and the translation of pydantic's errors into the one-line messages Kled shows people
(``spec.ports[0].port: must be 1-65535``). Selectors reuse the label rules, so a label a
resource may carry is exactly a label a selector may name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from kled.errors import InvalidInput

#: The error type of every check written in Kled; its message is shown as it is.
KLED_ERROR = "kled"

DNS_LABEL_MESSAGE = "must be a DNS label (lowercase letters, digits and '-', at most 63)"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def problem(message: str, at: Sequence[str | int] = ()) -> PydanticCustomError:
    """A schema error with a message meant for people.

    ``at`` extends the error's location below the model that raised it, so a check on a
    whole model can still name the field at fault (``spec.image`` rather than ``spec``).
    Braces are doubled because pydantic formats the message as a template.
    """
    template = message.replace("{", "{{").replace("}", "}}")
    return PydanticCustomError(KLED_ERROR, template, {"at": tuple(at)})


# --- naming rules ---------------------------------------------------------------------


def is_dns_label(value: str) -> bool:
    """RFC 1123 label: what Kubernetes accepts as a namespace or service name."""
    return len(value) <= 63 and _DNS_LABEL.match(value) is not None


def is_dns_name(value: str) -> bool:
    """Dotted DNS labels (a zone or a host name), at most 253 characters."""
    return 0 < len(value) <= 253 and all(is_dns_label(part) for part in value.split("."))


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns_name(prefix):
        return f"label key {key!r}: prefix must be a DNS subdomain (lowercase, dots, at most 253)"
    if not name:
        return f"label key {key!r}: name must not be empty"
    if len(name) > 63 or _LABEL_NAME.match(name) is None:
        return (
            f"label key {key!r}: name must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None when it is (empty is valid)."""
    if value and (len(value) > 63 or _LABEL_NAME.match(value) is None):
        return (
            f"label value {value!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def env_name_problem(name: str) -> str | None:
    """Environment variable names: any printable ASCII but '=', as Kubernetes allows now."""
    if not name or "=" in name or not all(" " <= c <= "~" for c in name):
        return f"variable name {name!r} must be printable ASCII without '='"
    return None


def is_identifier(value: str) -> bool:
    return _IDENTIFIER.match(value) is not None


def _check_dns_label(value: str) -> str:
    if not is_dns_label(value):
        raise problem(DNS_LABEL_MESSAGE)
    return value


def _check_dns_name(value: str) -> str:
    if not is_dns_name(value):
        raise problem("must be a DNS name (dot-separated DNS labels, at most 253)")
    return value


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        error = label_key_problem(key) or label_value_problem(item)
        if error:
            raise problem(error, at=(key,))
    return value


def _check_annotation_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        error = label_key_problem(key)
        if error:
            raise problem(error.replace("label key", "annotation key", 1), at=(key,))
    return value


def _check_env(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        error = env_name_problem(key)
        if error:
            raise problem(error, at=(key,))
    return value


def _scalar_to_str(value: Any) -> Any:
    """YAML reads ``version: 16`` as a number; a version is text, so take integers as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def iso_timestamp(value: datetime) -> str:
    """How Kled writes an instant: ISO 8601, UTC as ``Z``, naive times taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def _timestamp_to_str(value: Any) -> Any:
    """System timestamps pass through unchanged, but YAML turns them into datetimes."""
    return iso_timestamp(value) if isinstance(value, datetime) else value


def _mapping_not_list(value: Any) -> Any:
    if isinstance(value, list):
        raise problem("must be a mapping of NAME: value, not a list")
    return value


# Numbers and booleans are taken only as themselves: YAML's ``replicas: yes`` or a JSON
# ``"port": "80"`` is a mistake worth reporting, not something to guess at.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]
DnsName = Annotated[str, AfterValidator(_check_dns_name)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(_check_annotation_keys)]
EnvVars = Annotated[dict[str, str], BeforeValidator(_mapping_not_list), AfterValidator(_check_env)]
#: what a replica's variable can be given from, as Kubernetes' downward API names it: the
#: replica's name, its pod IP, its node's name (each known only where it runs)
FieldPath = Literal["metadata.name", "status.podIP", "spec.nodeName"]
FieldEnv = Annotated[
    dict[str, FieldPath], BeforeValidator(_mapping_not_list), AfterValidator(_check_env)
]
VersionText = Annotated[str, BeforeValidator(_scalar_to_str)]
Timestamp = Annotated[str, BeforeValidator(_timestamp_to_str)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def in_range(low: int, high: int) -> AfterValidator:
    """A check whose error reads ``must be LOW-HIGH`` whichever end is passed."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise problem(f"must be {low}-{high}")
        return value

    return AfterValidator(check)


def range_schema(low: int, high: int) -> Any:
    """The bounds of :func:`in_range`, for the JSON schema."""
    return Field(json_schema_extra={"minimum": low, "maximum": high})


Port = Annotated[int, Strict(), in_range(1, 65535), range_schema(1, 65535)]


class KledModel(BaseModel):
    """Base of every schema: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # As in Kubernetes, a field written as null (``env:`` with nothing after it in
        # YAML) means "not set": it takes its default, or is reported as required.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class ObjectMeta(KledModel):
    """``metadata``: the user's naming and labels plus fields the system maintains."""

    name: DnsLabel
    """The resource's name, unique per kind in its scope (RFC 1123 label)."""
    team: DnsLabel | None = None
    """The team owning the resource (every kind but Team and Node)."""
    environment: DnsLabel | None = None
    """The environment of App, ManagedService, Config, Secret and Intercept."""
    labels: Labels = {}
    annotations: Annotations = {}
    finalizers: list[NonEmptyStr] = []
    uid: str | None = None
    resource_version: Annotated[str | None, BeforeValidator(_scalar_to_str)] = None
    generation: Int | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None

    @field_validator("finalizers")
    @classmethod
    def _unique_finalizers(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for index, item in enumerate(value):
            if item in seen:
                raise problem(f"duplicate finalizer {item!r}", at=(index,))
            seen.add(item)
        return value


# --- error messages ----------------------------------------------------------------------


def field_path(loc: Sequence[str | int]) -> str:
    """``("spec", "ports", 0, "port")`` → ``spec.ports[0].port``; odd keys in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif is_identifier(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _yaml_scalar(value: Any) -> str:
    """``value`` as the user wrote it in YAML, to quote it back in a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return repr(value)


def friendly_message(error: ErrorDetails) -> str:
    """One short message for a pydantic error, in the words Kled uses everywhere."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    given = error.get("input")
    if kind == KLED_ERROR:
        return error["msg"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_type":
        if isinstance(given, bool | int | float | date):
            return f"must be a string (got {_yaml_scalar(given)}; quote it in YAML)"
        return "must be a string"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping"
    if kind in ("list_type", "tuple_type", "set_type"):
        return "must be a list"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {_yaml_scalar(given)})"
    if kind.startswith("datetime") or kind.startswith("timezone"):
        return "must be a date-time like 2025-01-31T12:00:00Z"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    message = error["msg"]
    return message[:1].lower() + message[1:]


def error_location(error: ErrorDetails) -> tuple[str | int, ...]:
    """The location of an error, extended by the ``at`` a Kled check gave."""
    ctx = error.get("ctx") or {}
    extra = tuple(ctx.get("at", ())) if error["type"] == KLED_ERROR else ()
    return tuple(error["loc"]) + extra


class SchemaError(InvalidInput):
    """A resource failed its schema; ``problems`` lists every (field, message) found.

    ``field`` and ``message`` describe the first problem, so a caller that reports one
    line reports the most relevant one; the API can return all of them.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        field, message = problems[0]
        if len(problems) > 1:
            more = len(problems) - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        super().__init__(message, field=field or None)
        self.problems = problems


def schema_error(exc: ValidationError, prefix: Sequence[str | int] = ()) -> SchemaError:
    """Kled's error for a pydantic ValidationError, paths rooted at ``prefix``."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc = error_location(error)
        message = friendly_message(error)
        if len(loc) >= 2 and loc[-1] == "[key]":
            # pydantic names a bad mapping key as (..., key, "[key]"); name the mapping.
            message = f"key {_yaml_scalar(loc[-2])} must be a string (quote it in YAML)"
            loc = loc[:-2]
        entry = (field_path((*prefix, *loc)), message)
        if entry not in problems:
            problems.append(entry)
    return SchemaError(problems)

"""Whole resource documents: one model per kind, and ``validate`` for all of them.

Admission, the loader and the store all go through :func:`validate`: it checks a
document against its kind's schema, fills in the defaults, folds a Secret's
``stringData`` into ``data``, and returns a plain JSON-ready dict that validating again
leaves unchanged. Its errors are :class:`kled.errors.InvalidInput` naming the field path
(``spec.ports[0].port``) with a short message. The spec models are in
``kled.resources.specs``; the list of kinds is ``kled.resources.registry``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ValidationError, model_validator

from kled.errors import InvalidInput
from kled.resources.jobspec import JobSpec
from kled.resources.meta import (
    KledModel,
    ObjectMeta,
    SchemaError,
    iso_timestamp,
    problem,
    schema_error,
)
from kled.resources.registry import API_VERSION, Scope, kind_info
from kled.resources.specs import (
    AppSpec,
    ClusterSpec,
    DeviceSpec,
    EnvironmentSpec,
    GitSourceSpec,
    InterceptSpec,
    KubeObjectSpec,
    ManagedServiceSpec,
    NodeSpec,
    PolicySpec,
    TeamSpec,
    TokenSpec,
    UserSpec,
    WorkspaceSpec,
)
from kled.resources.templates import ServiceTemplateSpec

_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")


class Resource(KledModel):
    """Fields every document has; a kind's model adds ``spec`` or ``data``."""

    api_version: Literal["kled.io/v1"] = "kled.io/v1"
    kind: str
    metadata: ObjectMeta
    status: dict[str, Any] = {}


class Team(Resource):
    kind: Literal["Team"] = "Team"
    spec: TeamSpec


class User(Resource):
    kind: Literal["User"] = "User"
    spec: UserSpec


class Token(Resource):
    kind: Literal["Token"] = "Token"
    spec: TokenSpec


class Node(Resource):
    kind: Literal["Node"] = "Node"
    spec: NodeSpec


class Device(Resource):
    kind: Literal["Device"] = "Device"
    spec: DeviceSpec


class Environment(Resource):
    kind: Literal["Environment"] = "Environment"
    spec: EnvironmentSpec


class App(Resource):
    kind: Literal["App"] = "App"
    spec: AppSpec


class ManagedService(Resource):
    kind: Literal["ManagedService"] = "ManagedService"
    spec: ManagedServiceSpec


class ServiceTemplate(Resource):
    kind: Literal["ServiceTemplate"] = "ServiceTemplate"
    spec: ServiceTemplateSpec


class Workspace(Resource):
    kind: Literal["Workspace"] = "Workspace"
    spec: WorkspaceSpec


class Intercept(Resource):
    kind: Literal["Intercept"] = "Intercept"
    spec: InterceptSpec


class Policy(Resource):
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec


class Cluster(Resource):
    kind: Literal["Cluster"] = "Cluster"
    spec: ClusterSpec


class GitSource(Resource):
    kind: Literal["GitSource"] = "GitSource"
    spec: GitSourceSpec


class Job(Resource):
    kind: Literal["Job"] = "Job"
    spec: JobSpec


class KubeObject(Resource):
    kind: Literal["KubeObject"] = "KubeObject"
    spec: KubeObjectSpec


def _check_data_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if len(key) > 253 or not _DATA_KEY.match(key):
            raise problem(
                f"key {key!r} must be letters, digits, '-', '_' or '.', at most 253",
                at=(key,),
            )
    return value


def _check_base64(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        try:
            base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise problem("must be base64 (use stringData for plain text)", at=(key,)) from None
    return value


DataMap = Annotated[dict[str, str], AfterValidator(_check_data_keys)]


class ConfigData(KledModel):
    """The desired state of a Config: plain text entries."""

    data: DataMap = {}


class SecretData(KledModel):
    """The desired state of a Secret: base64 entries, or plain ones in ``stringData``."""

    data: Annotated[DataMap, AfterValidator(_check_base64)] = {}
    string_data: DataMap = {}
    """Plain-text entries, written here for convenience; folded into ``data``."""
    type: str = "Opaque"

    @model_validator(mode="after")
    def _fold_string_data(self) -> SecretData:
        # stringData wins over data for the same key, as in Kubernetes.
        for key, text in self.string_data.items():
            self.data[key] = base64.b64encode(text.encode()).decode()
        self.string_data = {}
        return self


class Config(Resource, ConfigData):
    kind: Literal["Config"] = "Config"


class Secret(Resource, SecretData):
    kind: Literal["Secret"] = "Secret"


_MODELS: dict[str, type[Resource]] = {
    model.__name__: model
    for model in (
        Team, User, Token, Node, Device, Environment, App, ManagedService, Config, Secret,
        Workspace, Intercept, Policy, Cluster, GitSource, KubeObject, ServiceTemplate,
    )
}  # fmt: skip

_MODELS["Job"] = Job

_SPEC_MODELS: dict[str, type[KledModel]] = {
    "Team": TeamSpec,
    "User": UserSpec,
    "Token": TokenSpec,
    "Node": NodeSpec,
    "Device": DeviceSpec,
    "Environment": EnvironmentSpec,
    "App": AppSpec,
    "ManagedService": ManagedServiceSpec,
    "Config": ConfigData,
    "Secret": SecretData,
    "Workspace": WorkspaceSpec,
    "Intercept": InterceptSpec,
    "Policy": PolicySpec,
    "Cluster": ClusterSpec,
    "GitSource": GitSourceSpec,
    "Job": JobSpec,
    "KubeObject": KubeObjectSpec,
    "ServiceTemplate": ServiceTemplateSpec,
}


def model_for(kind: str) -> type[Resource]:
    """The model of a whole document of ``kind`` (``App`` → :class:`App`)."""
    kind_info(kind)
    return _MODELS[kind]


def spec_model_for(kind: str) -> type[KledModel]:
    """The model of what a user writes: the spec, or for Config/Secret the data part."""
    kind_info(kind)
    return _SPEC_MODELS[kind]


def spec_json_schema(kind: str) -> dict[str, Any]:
    """JSON schema of a kind's spec (of ``data``/``stringData``/``type`` for Config/Secret)."""
    return spec_model_for(kind).model_json_schema(by_alias=True)


def _jsonable(value: Any) -> Any:
    """``value`` with dates as ISO strings, so that free-form parts (status) serialize."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return copy.deepcopy(value)


def validate(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``doc`` against its kind's schema and return it normalized.

    Raises InvalidInput (``field`` is the path at fault, ``message`` says what is wrong;
    a :class:`SchemaError` lists every problem in ``problems``).
    """
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"a resource must be a mapping, not {type(doc).__name__}")
    kind = doc.get("kind")
    if kind is None:
        raise SchemaError([("kind", "field required")])
    if not isinstance(kind, str):
        raise SchemaError([("kind", "must be a string")])
    info = kind_info(kind)
    api_version = doc.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise InvalidInput(
            f"unknown apiVersion {api_version!r} for {kind} (expected {API_VERSION})",
            field="apiVersion",
        )
    body = {key: value for key, value in doc.items() if key != "status"}
    if not info.data_kind and body.get("spec") is None:
        body["spec"] = {}
    status = doc.get("status")
    if status is not None and not isinstance(status, Mapping):
        raise SchemaError([("status", "must be a mapping")])
    try:
        model = _MODELS[kind].model_validate(body)
    except ValidationError as exc:
        raise schema_error(exc) from None
    if model.metadata.environment is not None and info.scope is not Scope.ENVIRONMENT:
        raise SchemaError(
            [("metadata.environment", f"not allowed: a {kind} does not belong to an environment")]
        )
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": dumped["metadata"],
    }
    if info.data_kind:
        out["data"] = dumped["data"]
        if "type" in dumped:
            out["type"] = dumped["type"]
    else:
        out["spec"] = dumped["spec"]
    out["status"] = _jsonable(status or {})
    return out


def parse(doc: Mapping[str, Any]) -> Resource:
    """The typed model of ``doc`` (validated), for code that reads fields by name."""
    normalized = validate(doc)
    return _MODELS[normalized["kind"]].model_validate(normalized)


__all__ = [
    "App",
    "Cluster",
    "Config",
    "Device",
    "Environment",
    "GitSource",
    "Intercept",
    "Job",
    "KubeObject",
    "ManagedService",
    "Node",
    "Policy",
    "Resource",
    "SchemaError",
    "Secret",
    "ServiceTemplate",
    "Team",
    "Token",
    "User",
    "Workspace",
    "model_for",
    "parse",
    "spec_json_schema",
    "spec_model_for",
    "validate",
]

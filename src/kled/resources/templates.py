"""``ServiceTemplate``: how a managed service of one kind is run, and the built-in set.

A template is data an administrator manages (server-wide, like a Node): which *engine*
drives the server (``postgres``, ``redis``, ``mariadb``, ``nats``: the steps to initialise a data
directory, set credentials, check health, dump and load, which ``agent/servicerun.py``
implements once per engine), where the Debian package's binaries are, the port, the
versions a node can provide, the parameters a ManagedService may set (a small schema:
type, default, bounds, choices) and the entries of the credentials Secret. The built-in
templates (``postgres``, ``redis``, ``mariadb``, ``nats``) apply when no stored template of
that name exists; an admin may store one of the same name to change it, or add others on an
engine.

The checks of a ManagedService against its template (:func:`check_service`) are pure and
raise :class:`InvalidInput` naming the field path, so the API refuses bad input at the door.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kled.errors import InvalidInput
from kled.resources.meta import (
    DnsLabel,
    KledModel,
    NonEmptyStr,
    Port,
    VersionText,
    problem,
)

#: the names a template's ``env`` may map to: the credentials Secret's own entries
OUTPUTS = ("host", "port", "user", "password", "database", "uri")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")


class TemplateParameter(KledModel):
    """One setting a ManagedService may give in ``spec.parameters``."""

    type: Literal["string", "integer", "boolean"] = "string"
    default: str | int | bool | None = None
    minimum: int | None = None
    maximum: int | None = None
    enum: list[str] | None = None
    description: str | None = None


class ServiceTemplateSpec(KledModel):
    """How to run one kind of managed service on a node."""

    engine: Literal["postgres", "redis", "mariadb", "nats"]
    """The driver of init, credentials, health, backup and restore (``agent/servicerun``)."""
    description: str | None = None
    runtime: Literal["process"] = "process"
    """Servers run as processes from the node's Debian package (no image registry needed)."""
    package: NonEmptyStr
    """The Debian package that provides the server on a node (``apt-get install``)."""
    bin_dir: NonEmptyStr = "/usr/bin"
    """Where the package's server and client binaries are on a node."""
    versions: Annotated[list[VersionText], Field(min_length=1)]
    """Versions a node can provide; the first is the default."""
    port: Port
    user: DnsLabel = "app"
    """The account generated for apps (Redis has none: only a password)."""
    database: str | None = None
    """The database created for apps (a Redis database number for redis)."""
    uri: NonEmptyStr
    """The ``uri`` output, with ``{user}``, ``{password}``, ``{host}``, ``{port}``,
    ``{database}`` filled in."""
    env: dict[str, str] = {}
    """Variables an app gets through ``envFrom: [{managedService: …}]``: name → output."""
    parameters: dict[str, TemplateParameter] = {}

    @field_validator("bin_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise problem("must be an absolute path like /usr/lib/postgresql/15/bin")
        return value

    @model_validator(mode="after")
    def _check(self) -> ServiceTemplateSpec:
        for name, output in self.env.items():
            if not _ENV_NAME.match(name):
                raise problem("must be an upper-case variable name like DATABASE_URL",
                              at=("env", name))  # fmt: skip
            if output not in OUTPUTS:
                raise problem(f"must be one of {', '.join(OUTPUTS)}", at=("env", name))
        for name in self.parameters:
            if not _PARAM_NAME.match(name):
                raise problem("must be lower-case letters, digits, _ or -", at=("parameters", name))
        try:
            self.uri.format(user="u", password="p", host="h", port=1, database="d")
        except (KeyError, IndexError, ValueError):
            raise problem(
                "may use only {user}, {password}, {host}, {port}, {database}", at=("uri",)
            ) from None
        return self


def _builtin(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "ServiceTemplate",
        "metadata": {"name": name, "labels": {"kled.io/builtin": "true"}},
        "spec": ServiceTemplateSpec.model_validate(spec).model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
        "status": {},
    }


#: the templates every server has (a stored template of the same name replaces one)
BUILTIN: dict[str, dict[str, Any]] = {
    "postgres": _builtin(
        "postgres",
        {
            "engine": "postgres",
            "description": "PostgreSQL from Debian's postgresql package",
            "package": "postgresql",
            "binDir": "/usr/lib/postgresql/15/bin",
            "versions": ["15"],
            "port": 5432,
            "user": "app",
            "database": "app",
            "uri": "postgresql://{user}:{password}@{host}:{port}/{database}",
            "env": {
                "DATABASE_URL": "uri",
                "PGHOST": "host",
                "PGPORT": "port",
                "PGUSER": "user",
                "PGPASSWORD": "password",
                "PGDATABASE": "database",
            },
            "parameters": {
                "max_connections": {
                    "type": "integer",
                    "default": 100,
                    "minimum": 5,
                    "maximum": 10000,
                },
                "shared_buffers": {"type": "string", "default": "128MB"},
                "work_mem": {"type": "string"},
            },
        },
    ),
    "redis": _builtin(
        "redis",
        {
            "engine": "redis",
            "description": "Redis from Debian's redis-server package (AOF persistence)",
            "package": "redis-server",
            "binDir": "/usr/bin",
            "versions": ["7"],
            "port": 6379,
            "user": "default",
            "database": "0",
            "uri": "redis://{user}:{password}@{host}:{port}/{database}",
            "env": {
                "REDIS_URL": "uri",
                "REDIS_HOST": "host",
                "REDIS_PORT": "port",
                "REDIS_PASSWORD": "password",
            },
            "parameters": {
                "maxmemory": {"type": "string", "default": "0"},
                "maxmemory-policy": {
                    "type": "string",
                    "default": "noeviction",
                    "enum": [
                        "noeviction",
                        "allkeys-lru",
                        "volatile-lru",
                        "allkeys-lfu",
                        "volatile-lfu",
                        "allkeys-random",
                        "volatile-random",
                        "volatile-ttl",
                    ],
                },
            },
        },
    ),
    "mariadb": _builtin(
        "mariadb",
        {
            "engine": "mariadb",
            "description": "MariaDB from Debian's mariadb-server package",
            "package": "mariadb-server",
            "binDir": "/usr/bin",
            "versions": ["10.11"],
            "port": 3306,
            "user": "app",
            "database": "app",
            "uri": "mysql://{user}:{password}@{host}:{port}/{database}",
            "env": {
                "DATABASE_URL": "uri",
                "MYSQL_HOST": "host",
                "MYSQL_TCP_PORT": "port",
                "MYSQL_USER": "user",
                "MYSQL_PWD": "password",
                "MYSQL_DATABASE": "database",
            },
            "parameters": {
                "max_connections": {
                    "type": "integer",
                    "default": 151,
                    "minimum": 10,
                    "maximum": 100000,
                },
                "innodb_buffer_pool_size": {"type": "string", "default": "128M"},
            },
        },
    ),
    "nats": _builtin(
        "nats",
        {
            "engine": "nats",
            "description": "NATS with JetStream from Debian's nats-server package",
            "package": "nats-server",
            "binDir": "/usr/sbin",
            "versions": ["2.9"],
            "port": 4222,
            "user": "app",
            "uri": "nats://{user}:{password}@{host}:{port}",
            "env": {
                "NATS_URL": "uri",
                "NATS_HOST": "host",
                "NATS_PORT": "port",
                "NATS_USER": "user",
                "NATS_PASSWORD": "password",
            },
            "parameters": {
                "max_payload": {
                    "type": "integer",
                    "default": 1048576,
                    "minimum": 1024,
                    "maximum": 67108864,
                },
                "max_connections": {"type": "integer", "default": 65536, "minimum": 1},
            },
        },
    ),
}


def template_spec(doc: Mapping[str, Any]) -> ServiceTemplateSpec:
    """The typed spec of a stored or built-in template document."""
    try:
        return ServiceTemplateSpec.model_validate(doc.get("spec") or {})
    except ValidationError as e:
        name = (doc.get("metadata") or {}).get("name")
        raise InvalidInput(f"service template {name!r} is not valid: {e.errors()[0]['msg']}") from e


def _check_value(name: str, schema: TemplateParameter, value: Any) -> None:
    at = f"spec.parameters.{name}"
    if schema.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{at}: must be a whole number", field=at)
        if schema.minimum is not None and value < schema.minimum:
            raise InvalidInput(f"{at}: must be at least {schema.minimum}", field=at)
        if schema.maximum is not None and value > schema.maximum:
            raise InvalidInput(f"{at}: must be at most {schema.maximum}", field=at)
    elif schema.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(f"{at}: must be true or false", field=at)
    else:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise InvalidInput(f"{at}: must be a string", field=at)
        text = str(value)
        if not text or any(c.isspace() or ord(c) < 32 for c in text):
            raise InvalidInput(f"{at}: must be one word, without spaces", field=at)
        if schema.enum is not None and text not in schema.enum:
            raise InvalidInput(f"{at}: must be one of {', '.join(schema.enum)}", field=at)


def check_service(spec: Mapping[str, Any], template: ServiceTemplateSpec | None) -> None:
    """Refuse a ManagedService ``spec`` its template cannot run (``InvalidInput`` with the
    field path); ``template`` is None when no template of that name exists."""
    name = spec.get("template")
    if template is None:
        known = ", ".join(sorted(BUILTIN))
        raise InvalidInput(
            f"spec.template: no service template {name!r} (built in: {known}; "
            "`kled get servicetemplates` lists the others)",
            field="spec.template",
        )
    version = spec.get("version")
    if version is not None and str(version) not in template.versions:
        raise InvalidInput(
            f"spec.version: template {name!r} provides version "
            f"{', '.join(template.versions)}, not {version}",
            field="spec.version",
        )
    for key, value in (spec.get("parameters") or {}).items():
        schema = template.parameters.get(str(key))
        if schema is None:
            offered = ", ".join(sorted(template.parameters)) or "none"
            at = f"spec.parameters.{key}"
            raise InvalidInput(
                f"{at}: template {name!r} has no parameter {key!r} (it has: {offered})",
                field=at,
            )
        _check_value(str(key), schema, value)


def effective_parameters(spec: Mapping[str, Any], template: ServiceTemplateSpec) -> dict[str, str]:
    """The server settings to run with: the template's defaults, then the service's."""
    out: dict[str, str] = {}
    given = spec.get("parameters") or {}
    for name, schema in sorted(template.parameters.items()):
        value = given.get(name, schema.default)
        if value is None:
            continue
        out[name] = ("on" if value else "off") if isinstance(value, bool) else str(value)
    return out

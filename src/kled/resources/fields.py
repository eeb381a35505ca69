"""Field types the specs share: quantities, durations, addresses, keys, selectors.

Each is an annotated type or a small model that checks one kind of value and says what
is wrong in Kled's words, so every spec that takes a CPU quantity or a host:port checks
it the same way. Naming rules (DNS labels, label keys) are in ``kled.resources.meta``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from kled.errors import InvalidInput
from kled.resources.meta import (
    KledModel,
    Labels,
    NonEmptyStr,
    is_dns_name,
    label_key_problem,
    label_value_problem,
    problem,
)
from kled.resources.quantities import parse_cpu, parse_memory

_DURATION = re.compile(r"^(?:[0-9]+[smhdw])+\Z")
_DURATION_PART = re.compile(r"([0-9]+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: the longest duration taken: past it, a ttl is a typo (and past ~2.7e15 s an overflow)
MAX_DURATION_SECONDS = 100 * 365 * 86400


def _quantity_text(value: Any) -> Any:
    """``cpu: 2`` and ``cpu: 0.5`` arrive as numbers from YAML; keep them as written."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _check_cpu(value: str) -> str:
    try:
        parse_cpu(value)
    except InvalidInput as exc:
        raise problem(exc.message) from exc
    return value


def _check_memory(value: str) -> str:
    try:
        parse_memory(value)
    except InvalidInput as exc:
        raise problem(exc.message) from exc
    return value


Cpu = Annotated[str, BeforeValidator(_quantity_text), AfterValidator(_check_cpu)]
Memory = Annotated[str, BeforeValidator(_quantity_text), AfterValidator(_check_memory)]


def duration_seconds(text: str) -> int:
    """Seconds in a duration like ``24h``, ``30m``, ``7d`` or ``1h30m``."""
    if not _DURATION.match(text):
        raise InvalidInput(f"must be a duration like '30m', '24h' or '7d' (got {text!r})")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def _check_duration(value: str) -> str:
    try:
        seconds = duration_seconds(value)
        if seconds <= 0:
            raise problem("must be longer than zero")
        if seconds > MAX_DURATION_SECONDS:
            raise problem("must be at most 100 years")
    except InvalidInput as exc:
        raise problem(exc.message) from exc
    return value


def _utc(value: datetime) -> datetime:
    """Naive times are taken as UTC, so a date written without a zone means one instant."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Duration = Annotated[str, AfterValidator(_check_duration)]


def _no_epoch_numbers(value: Any) -> Any:
    # pydantic would read a number as seconds since 1970; a user never means that here.
    if isinstance(value, int | float):
        raise problem("must be a date-time like 2025-01-31T12:00:00Z")
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_no_epoch_numbers), AfterValidator(_utc)]


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not is_dns_name(value):
            raise problem("must be an IP address or a host name") from None
    return value


def _check_endpoint(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise problem("must be host:port with a port 1-65535 (IPv6 as [addr]:port)")
    _check_address(host)
    return value


Address = Annotated[str, AfterValidator(_check_address)]


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(value) != 44 or len(raw) != 32:
        raise problem("must be a WireGuard public key (44 characters of base64)")
    return value


PublicKey = Annotated[str, AfterValidator(_check_public_key)]


class LabelSelectorRequirement(KledModel):
    key: NonEmptyStr
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        error = label_key_problem(self.key)
        if error:
            raise problem(error, at=("key",))
        if self.operator in ("In", "NotIn") and not self.values:
            raise problem(f"must not be empty for operator {self.operator}", at=("values",))
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise problem(f"must be empty for operator {self.operator}", at=("values",))
        for index, value in enumerate(self.values):
            error = label_value_problem(value)
            if error:
                raise problem(error, at=("values", index))
        return self


class LabelSelector(KledModel):
    """``{matchLabels, matchExpressions}`` as in Kubernetes; every term must hold."""

    match_labels: Labels = {}
    match_expressions: list[LabelSelectorRequirement] = []

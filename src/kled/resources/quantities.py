"""CPU and memory quantities, written as in Kubernetes, read as integers.

Users write ``cpu: 500m`` or ``cpu: 2`` and ``memory: 256Mi`` or ``memory: 1G``; the
scheduler, quotas and runtimes need millicores and bytes. Parsing lives in one place so
that the schema check, the scheduler and the agent agree on what a quantity means.
Decimal arithmetic keeps ``0.1`` CPU exactly 100 millicores.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from kled.errors import InvalidInput

_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[A-Za-z]*)\Z")

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"": 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

CPU_HINT = 'a CPU quantity like "500m", "2" or "0.5"'
MEMORY_HINT = 'a memory quantity like "256Mi", "1Gi", "512M" or "1000"'


def _split(value: str | int | float, hint: str, field: str | None) -> tuple[Decimal, str]:
    if isinstance(value, bool):
        raise InvalidInput(f"must be {hint}", field=field)
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None:
        raise InvalidInput(f"must be {hint} (got {text!r})", field=field)
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # the pattern should exclude this; kept as a guard
        raise InvalidInput(f"must be {hint} (got {text!r})", field=field) from exc
    return number, match["suffix"]


def parse_cpu(value: str | int | float, *, field: str | None = None) -> int:
    """Millicores in ``value``: ``"500m"`` → 500, ``"2"`` → 2000, ``"0.5"`` → 500.

    A fraction of a millicore cannot be scheduled, so it is refused rather than rounded.
    """
    number, suffix = _split(value, CPU_HINT, field)
    if suffix == "m":
        millis = number
    elif suffix == "":
        millis = number * 1000
    else:
        raise InvalidInput(f"must be {CPU_HINT} (unknown unit {suffix!r})", field=field)
    if millis != millis.to_integral_value():
        raise InvalidInput(f"must be a whole number of millicores (got {value!r})", field=field)
    return int(millis)


def parse_memory(value: str | int | float, *, field: str | None = None) -> int:
    """Bytes in ``value``: ``"256Mi"`` → 268435456, ``"512M"`` → 512000000.

    Binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei) are powers of 1024, decimal ones (k, M, G,
    T, P, E) powers of 1000. A fraction of a byte is rounded up, as Kubernetes does.
    """
    number, suffix = _split(value, MEMORY_HINT, field)
    if suffix in _BINARY:
        total = number * (1024 ** _BINARY[suffix])
    elif suffix in _DECIMAL:
        total = number * (1000 ** _DECIMAL[suffix])
    else:
        raise InvalidInput(f"must be {MEMORY_HINT} (unknown unit {suffix!r})", field=field)
    return int(total.to_integral_value(rounding=ROUND_CEILING))


def format_cpu(millis: int) -> str:
    """The shortest way to write ``millis``: 2000 → ``"2"``, 500 → ``"500m"``."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_memory(size: int) -> str:
    """The largest binary unit that writes ``size`` exactly: 268435456 → ``"256Mi"``."""
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        unit = 1024**power
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)

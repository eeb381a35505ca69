"""CPU and memory quantities: what users write, and the integers the scheduler uses."""

from __future__ import annotations

import pytest

from kled.errors import InvalidInput
from kled.resources.quantities import format_cpu, format_memory, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("text", "millis"),
    [("500m", 500), ("2", 2000), ("0.5", 500), ("1.25", 1250), (".1", 100), ("1m", 1),
     (2, 2000), (0.5, 500), ("0", 0), (" 250m ", 250)],
)  # fmt: skip
def test_cpu_in_millicores(text: str | float, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "must be a CPU quantity like \"500m\", \"2\" or \"0.5\" (got 'lots')"),
        ("-1", "must be a CPU quantity like \"500m\", \"2\" or \"0.5\" (got '-1')"),
        ("2Gi", "must be a CPU quantity like \"500m\", \"2\" or \"0.5\" (unknown unit 'Gi')"),
        ("0.0005", "must be a whole number of millicores (got '0.0005')"),
        ("1.5m", "must be a whole number of millicores (got '1.5m')"),
        ("", "must be a CPU quantity like \"500m\", \"2\" or \"0.5\" (got '')"),
    ],
)  # fmt: skip
def test_bad_cpu(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_cpu(text, field="spec.resources.cpu")
    assert caught.value.message == message
    assert caught.value.field == "spec.resources.cpu"


@pytest.mark.parametrize(
    ("text", "size"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("512M", 512_000_000), ("1000", 1000),
     ("1k", 1000), ("2Ki", 2048), ("1.5Gi", 3 * 2**29), ("1Ti", 2**40), ("1E", 10**18),
     (1000, 1000), ("0.5", 1)],
)  # fmt: skip
def test_memory_in_bytes(text: str | int, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["1GB", "1gi", "lots", "-5Mi", "500m", "1e3"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(InvalidInput, match="must be a memory quantity like"):
        parse_memory(text)


def test_bool_is_not_a_quantity() -> None:
    with pytest.raises(InvalidInput):
        parse_cpu(True)


@pytest.mark.parametrize(("millis", "text"), [(2000, "2"), (500, "500m"), (1500, "1500m")])
def test_format_cpu_round_trips(millis: int, text: str) -> None:
    assert format_cpu(millis) == text
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("size", "text"), [(256 * 2**20, "256Mi"), (2**30, "1Gi"), (1000, "1000"), (1536, "1536")]
)
def test_format_memory_round_trips(size: int, text: str) -> None:
    assert format_memory(size) == text
    assert parse_memory(text) == size

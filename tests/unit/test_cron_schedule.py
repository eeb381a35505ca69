"""Cron schedules: what each field accepts, and the next time a schedule fires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kled.errors import InvalidInput
from kled.resources.cron import next_after, parse

T0 = datetime(2026, 12, 7, 3, 5, 30, tzinfo=UTC)  # a Monday


def nxt(text: str, after: datetime = T0) -> datetime | None:
    return next_after(parse(text), after)


def test_five_fields_fire_on_the_minute() -> None:
    assert nxt("* * * * *") == datetime(2026, 12, 7, 3, 6, 0, tzinfo=UTC)
    assert nxt("*/15 * * * *") == datetime(2026, 12, 7, 3, 15, tzinfo=UTC)
    assert nxt("0 2 * * *") == datetime(2026, 12, 8, 2, 0, tzinfo=UTC)


def test_a_leading_seconds_field() -> None:
    assert nxt("*/10 * * * * *") == datetime(2026, 12, 7, 3, 5, 40, tzinfo=UTC)
    assert nxt("0 * * * * *") == datetime(2026, 12, 7, 3, 6, 0, tzinfo=UTC)


def test_names_ranges_lists_and_macros() -> None:
    assert nxt("0 9 * * MON-FRI") == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert nxt("0 0 1 jan *") == datetime(2027, 1, 1, tzinfo=UTC)
    assert nxt("@hourly") == datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    assert nxt("@weekly") == datetime(2026, 12, 13, tzinfo=UTC)  # Sunday
    assert nxt("0 0 * * 7") == nxt("0 0 * * 0")
    assert nxt("5,35 3 * * *") == datetime(2026, 12, 7, 3, 35, tzinfo=UTC)


def test_day_of_month_or_day_of_week_when_both_are_set() -> None:
    # the 10th, or any Tuesday: Tuesday 8 December comes first
    assert nxt("0 0 10 * TUE") == datetime(2026, 12, 8, tzinfo=UTC)


def test_a_day_that_never_comes() -> None:
    assert nxt("0 0 30 2 *") is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("* * * *", "has 4"),
        ("61 * * * *", "out of range for the minute field"),
        ("* * * 13 *", "month field"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "goes backwards"),
        ("x * * * *", "'x' is not a number in the minute field"),
        ("* * * * * * *", "has 7"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(text)
    assert says in str(caught.value)


field = st.one_of(
    st.just("*"),
    st.integers(0, 59).map(str),
    st.integers(1, 30).map(lambda n: f"*/{n}"),
    st.tuples(st.integers(0, 29), st.integers(30, 59)).map(lambda t: f"{t[0]}-{t[1]}"),
)


@settings(deadline=None, max_examples=200)
@given(
    seconds=field,
    minutes=field,
    start=st.datetimes(datetime(2020, 1, 1), datetime(2040, 1, 1)),
)
def test_next_is_a_match_and_nothing_before_it_is(
    seconds: str, minutes: str, start: datetime
) -> None:
    schedule = parse(f"{seconds} {minutes} * * * *")
    found = next_after(schedule, start)
    assert found is not None and found > start
    assert schedule.matches(found)
    probe = start.replace(microsecond=0) + timedelta(seconds=1)
    while probe < found:
        assert not schedule.matches(probe)
        probe += timedelta(seconds=1)

"""Cron schedules of recurring Jobs: parsing and the next time a schedule fires.

Pure (no clock, no I/O), here so that admission refuses a bad schedule with its field; the
jobs controller (``control/jobs.py``) asks :func:`next_after` with its own clock,
so a test moves time by hand. The syntax is Vixie cron's, in UTC:

- five fields ``minute hour day-of-month month day-of-week``, or six with a leading
  ``second`` field (as robfig/cron and Quartz take it), so a test can see runs seconds apart;
- each field ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n``, or a
  comma list of those; months and weekdays also by name (``JAN``, ``mon``), Sunday as 0 or 7;
- ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``;
- when both day-of-month and day-of-week are restricted (neither starts with ``*``), a day
  matches if either does, as in every cron since Vixie's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kled.errors import InvalidInput

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
#: (name, low, high, names) of each field, seconds first
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
#: no schedule that can fire at all fires less often than this (29 February on a Monday)
_HORIZON_YEARS = 30


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the allowed values of each field."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is ``*``
    any_weekday: bool  # day of week is ``*``

    def day_matches(self, when: datetime) -> bool:
        weekday = (when.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        in_month, in_week = when.day in self.days, weekday in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def matches(self, when: datetime) -> bool:
        return (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self.day_matches(when)
        )


def _number(word: str, names: tuple[str, ...], what: str, text: str) -> int:
    if word.upper() in names:
        return names.index(word.upper()) + (1 if names is _MONTHS else 0)
    if not word.isdigit():
        raise InvalidInput(f"{text!r}: {word!r} is not a number in the {what} field")
    return int(word)


def _field(part: str, index: int, text: str) -> frozenset[int]:
    what, low, high, names = _FIELDS[index]
    values: set[int] = set()
    for item in part.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidInput(f"{text!r}: the step {step_text!r} of the {what} field "
                                   "must be a positive number")  # fmt: skip
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _number(a, names, what, text), _number(b, names, what, text)
        else:
            first = _number(body, names, what, text)
            last = high if step_text else first
        for value in (first, last):
            if not low <= value <= high:
                raise InvalidInput(f"{text!r}: {value} is out of range for the {what} field "
                                   f"({low}-{high})")  # fmt: skip
        if first > last:
            raise InvalidInput(f"{text!r}: the range {body!r} of the {what} field goes backwards")
        values.update(range(first, last + 1, step))
    if index == 5 and 7 in values:  # Sunday is 0 and 7
        values = (values - {7}) | {0}
    return frozenset(values)


def parse(text: str) -> Schedule:
    """The schedule ``text`` means; InvalidInput saying which field is wrong otherwise."""
    spec = _MACROS.get(text.strip().lower(), text)
    parts = spec.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise InvalidInput(
            f"{text!r}: a schedule has 5 fields (minute hour day-of-month month day-of-week), "
            f"6 with a leading seconds field, or is a macro like @hourly; it has {len(parts)}"
        )
    sets = [_field(part, i, text) for i, part in enumerate(parts)]
    return Schedule(
        text=text,
        seconds=sets[0],
        minutes=sets[1],
        hours=sets[2],
        days=sets[3],
        months=sets[4],
        weekdays=sets[5],
        any_day=parts[3].startswith("*"),
        any_weekday=parts[5].startswith("*"),
    )


def next_after(schedule: Schedule, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that ``schedule`` fires (same tzinfo), or
    None when it never does (``0 0 30 2 *``)."""
    when = after.replace(microsecond=0) + timedelta(seconds=1)
    limit = after + timedelta(days=366 * _HORIZON_YEARS)
    while when <= limit:
        if when.month not in schedule.months:
            year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
            when = when.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
            continue
        if not schedule.day_matches(when):
            when = (when + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            continue
        if when.hour not in schedule.hours:
            when = (when + timedelta(hours=1)).replace(minute=0, second=0)
            continue
        if when.minute not in schedule.minutes:
            when = (when + timedelta(minutes=1)).replace(second=0)
            continue
        if when.second not in schedule.seconds:
            when += timedelta(seconds=1)
            continue
        return when
    return None

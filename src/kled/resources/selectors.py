"""Label selectors, written and meaning what they do in Kubernetes.

``kled get apps -l tier=backend``, the API's ``labelSelector`` parameter, an App's
``nodeSelector`` and a Policy's ``objectSelector`` all choose resources by labels.
Two forms are read here into one :class:`Selector`:

- the string form: ``tier=backend,env!=prod,app in (a,b),track notin (x),gpu,!legacy``
  (``==`` is the same as ``=``);
- the object form: ``{matchLabels: {...}, matchExpressions: [{key, operator, values}]}``.

Every requirement must hold. As in Kubernetes, ``!=`` and ``notin`` also match objects
that lack the label, and an empty selector matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kled.errors import InvalidInput
from kled.resources.meta import label_key_problem, label_value_problem

_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|!|\(|\)|,)|(?P<word>[^\s=!(),]+))")


class Operator(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


_OBJECT_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: a key, an operator and the values it compares with."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator is Operator.EXISTS:
            return present
        if self.operator is Operator.DOES_NOT_EXIST:
            return not present
        found = present and labels[self.key] in self.values
        if self.operator in (Operator.EQUALS, Operator.IN):
            return found
        return not found

    def __str__(self) -> str:
        if self.operator is Operator.EXISTS:
            return self.key
        if self.operator is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator in (Operator.EQUALS, Operator.NOT_EQUALS):
            return f"{self.key}{self.operator.value}{self.values[0]}"
        return f"{self.key} {self.operator.value} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """Requirements that must all hold; no requirement at all matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        found = labels or {}
        return all(requirement.matches(found) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


EVERYTHING = Selector()


def _check_key(key: str, field: str) -> None:
    error = label_key_problem(key)
    if error:
        raise InvalidInput(error, field=field)


def _check_value(value: str, field: str) -> None:
    error = label_value_problem(value)
    if error:
        raise InvalidInput(error, field=field)


class _Parser:
    """A recursive-descent reader of the string form, with errors that quote the input."""

    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.field = field
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:  # only trailing whitespace is left
                break
            kind = "op" if match["op"] else "word"
            start = match.start(kind)
            self.tokens.append((kind, match[kind], start))
            position = match.end()
        self.index = 0

    def fail(self, what: str) -> InvalidInput:
        if self.index < len(self.tokens):
            where = f"at position {self.tokens[self.index][2] + 1}"
        else:
            where = "at the end"
        return InvalidInput(f"{what} {where} of {self.text!r}", field=self.field)

    def peek(self) -> tuple[str, str] | None:
        if self.index < len(self.tokens):
            kind, text, _ = self.tokens[self.index]
            return kind, text
        return None

    def word(self, what: str) -> str:
        token = self.peek()
        if token is None or token[0] != "word":
            raise self.fail(f"expected {what}")
        self.index += 1
        return token[1]

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        if not self.tokens:
            return EVERYTHING
        while True:
            requirements.append(self.requirement())
            token = self.peek()
            if token is None:
                return Selector(tuple(requirements))
            if token != ("op", ","):
                raise self.fail("expected ','")
            self.index += 1

    def requirement(self) -> Requirement:
        if self.peek() == ("op", "!"):
            self.index += 1
            key = self.word("a label key after '!'")
            _check_key(key, self.field)
            return Requirement(key, Operator.DOES_NOT_EXIST)
        key = self.word("a label key")
        _check_key(key, self.field)
        token = self.peek()
        if token is None or token == ("op", ","):
            return Requirement(key, Operator.EXISTS)
        if token in (("op", "="), ("op", "=="), ("op", "!=")):
            self.index += 1
            operator = Operator.NOT_EQUALS if token[1] == "!=" else Operator.EQUALS
            after = self.peek()
            value = self.word("a value") if after is not None and after[0] == "word" else ""
            _check_value(value, self.field)
            return Requirement(key, operator, (value,))
        if token in (("word", "in"), ("word", "notin")):
            self.index += 1
            operator = Operator.IN if token[1] == "in" else Operator.NOT_IN
            return Requirement(key, operator, self.value_set(token[1]))
        raise self.fail("expected '=', '!=', 'in', 'notin' or ','")

    def value_set(self, operator: str) -> tuple[str, ...]:
        if self.peek() != ("op", "("):
            raise self.fail(f"expected '(' after {operator!r}")
        self.index += 1
        values: list[str] = []
        while True:
            token = self.peek()
            if token is not None and token[0] == "word":
                self.index += 1
                _check_value(token[1], self.field)
                values.append(token[1])
                token = self.peek()
            if token == ("op", ")"):
                self.index += 1
                break
            if token != ("op", ","):
                raise self.fail("expected ',' or ')'")
            self.index += 1
        if not values:
            raise InvalidInput(
                f"{operator!r} needs at least one value in {self.text!r}", field=self.field
            )
        return tuple(dict.fromkeys(values))


def parse_selector(text: str | None, *, field: str = "labelSelector") -> Selector:
    """The selector written as ``text``; InvalidInput (``field``) when it does not parse."""
    if text is None:
        return EVERYTHING
    return _Parser(text, field).parse()


def from_label_selector(obj: Mapping[str, Any] | None, *, field: str = "labelSelector") -> Selector:
    """The selector of a ``{matchLabels, matchExpressions}`` object (None: everything)."""
    if obj is None:
        return EVERYTHING
    if not isinstance(obj, Mapping):
        raise InvalidInput("must be a mapping with matchLabels and matchExpressions", field=field)
    for key in obj:
        if key not in ("matchLabels", "matchExpressions"):
            raise InvalidInput("unknown field", field=f"{field}.{key}")
    requirements: list[Requirement] = []
    match_labels = _or_default(obj.get("matchLabels"), {})
    if not isinstance(match_labels, Mapping):
        raise InvalidInput("must be a mapping", field=f"{field}.matchLabels")
    for key, value in match_labels.items():
        at = f"{field}.matchLabels"
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInput("keys and values must be strings", field=at)
        _check_key(key, at)
        _check_value(value, at)
        requirements.append(Requirement(key, Operator.EQUALS, (value,)))
    expressions = _or_default(obj.get("matchExpressions"), [])
    if not isinstance(expressions, list):
        raise InvalidInput("must be a list", field=f"{field}.matchExpressions")
    for index, expression in enumerate(expressions):
        requirements.append(_expression(expression, f"{field}.matchExpressions[{index}]"))
    return Selector(tuple(requirements))


def _or_default(value: Any, default: Any) -> Any:
    """Null means absent, as in Kubernetes; any other value is checked as it is."""
    return default if value is None else value


def _expression(expression: Any, at: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise InvalidInput("must be a mapping with key, operator and values", field=at)
    for name in expression:
        if name not in ("key", "operator", "values"):
            raise InvalidInput("unknown field", field=f"{at}.{name}")
    key = expression.get("key")
    if not isinstance(key, str):
        raise InvalidInput(
            "field required" if key is None else "must be a string", field=f"{at}.key"
        )
    _check_key(key, f"{at}.key")
    operator = _OBJECT_OPERATORS.get(str(expression.get("operator")))
    if operator is None:
        raise InvalidInput(
            "must be one of In, NotIn, Exists or DoesNotExist", field=f"{at}.operator"
        )
    values = _or_default(expression.get("values"), [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInput("must be a list of strings", field=f"{at}.values")
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise InvalidInput(
            f"must not be empty for operator {expression['operator']}", field=f"{at}.values"
        )
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise InvalidInput(
            f"must be empty for operator {expression['operator']}", field=f"{at}.values"
        )
    for index, value in enumerate(values):
        _check_value(value, f"{at}.values[{index}]")
    return Requirement(key, operator, tuple(dict.fromkeys(values)))

"""JSON with comments, as devcontainer.json is written, with the line of every property.

devcontainer.json is JSONC: JSON plus ``//`` and ``/* */`` comments and trailing commas.
Python's ``json`` refuses it, and the ``json5`` package accepts far more (single quotes,
hex numbers, bare keys) and forgets where each value stood. This small parser accepts
exactly JSONC and records the position of every value, so that an error found later,
by the schema or by variable substitution, still names the file, the line and the
property: ``.devcontainer/devcontainer.json:7: build.args.VERSION: must be a string``.

The reference CLI parses with VS Code's error-tolerant ``jsonc-parser`` and silently
makes what it can of a broken file; Kled refuses it instead, in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kled.errors import InvalidInput
from kled.resources.meta import field_path

Loc = tuple[str | int, ...]


class ConfigError(InvalidInput):
    """A devcontainer.json (or feature metadata) that cannot be used, said in one line.

    ``file`` and ``line`` say where; ``field`` names the property (``build.args``).
    """

    def __init__(
        self, message: str, *, file: str, line: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, field=field or None)
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Document:
    """A parsed JSONC text: its value, and the line each value of it started on."""

    value: Any
    source: str
    lines: Mapping[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the value at ``loc``, or of its nearest ancestor that was written."""
        parts = tuple(loc)
        while True:
            if parts in self.lines:
                return self.lines[parts]
            if not parts:
                return None
            parts = parts[:-1]

    def error(self, message: str, loc: Sequence[str | int] = ()) -> ConfigError:
        """A ConfigError about the property at ``loc`` of this document."""
        return ConfigError(
            message, file=self.source, line=self.line_of(loc), field=field_path(tuple(loc))
        )


def load(path: Path, *, source: str | None = None) -> Document:
    """Read and parse the JSONC file at ``path``; ``source`` is how errors name it."""
    name = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=name) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", file=name) from None
    return parse(text, source=name)


def parse(text: str, *, source: str = "<string>") -> Document:
    """Parse JSONC ``text``; a ConfigError names ``source``, the line and the property."""
    parser = _Parser(text.removeprefix("\ufeff"), source)
    return Document(parser.document(), source, parser.lines)


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_NUMBER_CHARS = frozenset("0123456789+-.eE")


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.lines: dict[Loc, int] = {}

    # --- positions and errors ---------------------------------------------------------

    def _line(self, pos: int | None = None) -> int:
        return self.text.count("\n", 0, self.pos if pos is None else pos) + 1

    def _fail(self, message: str, loc: Loc, pos: int | None = None) -> ConfigError:
        return ConfigError(
            message, file=self.source, line=self._line(pos), field=field_path(loc) or None
        )

    def _found(self) -> str:
        if self.pos >= len(self.text):
            return "end of file"
        token = re.match(r'"[^"\n]{0,30}"?|[A-Za-z0-9_$]+', self.text[self.pos : self.pos + 40])
        return repr(token.group() if token else self.text[self.pos])

    # --- whitespace and comments ------------------------------------------------------

    def _skip(self, loc: Loc) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self._fail("comment opened here is never closed", loc)
                self.pos = end + 2
            else:
                return

    # --- values -----------------------------------------------------------------------

    def document(self) -> Any:
        self._skip(())
        if self.pos >= len(self.text):
            raise self._fail("empty document: expected a JSON object", ())
        value = self._value(())
        self._skip(())
        if self.pos < len(self.text):
            raise self._fail(f"unexpected {self._found()} after the end of the document", ())
        return value

    def _value(self, loc: Loc) -> Any:
        self.lines[loc] = self._line()
        char = self.text[self.pos] if self.pos < len(self.text) else ""
        if char == "{":
            return self._object(loc)
        if char == "[":
            return self._array(loc)
        if char == '"':
            return self._string(loc)
        if char in _NUMBER_CHARS:
            return self._number(loc)
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        raise self._fail(f"expected a value, found {self._found()}", loc)

    def _object(self, loc: Loc) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        while True:
            self._skip(loc)
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return result
            if not self.text.startswith('"', self.pos):
                what = "a property name in double quotes or '}'"
                raise self._fail(f"expected {what}, found {self._found()}", loc)
            key = self._string(loc)
            self._skip((*loc, key))
            if not self.text.startswith(":", self.pos):
                raise self._fail(f"expected ':' after the name, found {self._found()}", (*loc, key))
            self.pos += 1
            self._skip((*loc, key))
            if self.pos >= len(self.text):
                raise self._fail("expected a value, found end of file", (*loc, key))
            # A repeated key: the last one wins, as in JavaScript and the reference CLI.
            result[key] = self._value((*loc, key))
            self._skip(loc)
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                hint = " (a missing comma?)" if self.text.startswith('"', self.pos) else ""
                raise self._fail(
                    f"expected ',' or '}}' after the value, found {self._found()}{hint}",
                    (*loc, key),
                )

    def _array(self, loc: Loc) -> list[Any]:
        self.pos += 1
        result: list[Any] = []
        while True:
            self._skip(loc)
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return result
            if self.pos >= len(self.text):
                raise self._fail("expected a value or ']', found end of file", loc)
            result.append(self._value((*loc, len(result))))
            self._skip(loc)
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self._fail(f"expected ',' or ']', found {self._found()}", loc)

    def _string(self, loc: Loc) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self._fail("string is never closed", loc, start)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\n":
                raise self._fail("string is never closed on its line", loc, start)
            if char == "\\":
                out.append(self._escape(loc))
                continue
            if char < " ":
                raise self._fail("control character in a string (escape it)", loc)
            out.append(char)
            self.pos += 1

    def _escape(self, loc: Loc) -> str:
        kind = self.text[self.pos + 1 : self.pos + 2]
        if kind in _ESCAPES:
            self.pos += 2
            return _ESCAPES[kind]
        if kind == "u":
            digits = self.text[self.pos + 2 : self.pos + 6]
            if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                self.pos += 6
                code = int(digits, 16)
                # A surrogate pair written as two escapes is one character.
                if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", self.pos):
                    low = self.text[self.pos + 2 : self.pos + 6]
                    if len(low) == 4 and all(c in "0123456789abcdefABCDEF" for c in low):
                        low_code = int(low, 16)
                        if 0xDC00 <= low_code < 0xE000:
                            self.pos += 6
                            return chr(0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00))
                return chr(code)
        raise self._fail(f"invalid escape '\\{kind}' in a string", loc)

    def _number(self, loc: Loc) -> int | float:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NUMBER_CHARS:
            self.pos += 1
        literal = self.text[start : self.pos]
        if not _is_json_number(literal):
            raise self._fail(f"invalid number {literal!r}", loc, start)
        if any(c in literal for c in ".eE"):
            return float(literal)
        return int(literal)


def _is_json_number(literal: str) -> bool:
    """JSON's number grammar: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?"""
    body = literal.removeprefix("-")
    mantissa, _, exponent = body.replace("E", "e").partition("e")
    whole, dot, fraction = mantissa.partition(".")
    if not whole.isdigit() or (len(whole) > 1 and whole[0] == "0"):
        return False
    if dot and not fraction.isdigit():
        return False
    if "e" in body.replace("E", "e"):
        exponent = exponent.removeprefix("+").removeprefix("-")
        if not exponent.isdigit():
            return False
    return True

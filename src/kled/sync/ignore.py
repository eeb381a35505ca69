"""Excludes in ``.gitignore`` syntax: which paths a sync session never looks at.

Rules are read in order and the last one that matches a path decides, as in git:
``!`` negates, a leading or inner ``/`` anchors a pattern to the root, a trailing ``/``
matches directories only, ``**`` spans directories, ``*``/``?``/``[...]`` stay inside one.
A path inside an excluded directory is excluded (git cannot re-include it either); the
index walk prunes such directories. Only the root ``.gitignore`` is read, not nested ones.
Standard library only: the remote side builds the same rules from the patterns it is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: names the engine itself writes (temporary files of an atomic write) — never synced
INTERNAL_PREFIX = ".kled-sync-"


@dataclass(frozen=True)
class Rule:
    pattern: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _translate(glob: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                at_start = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2 : i + 3]
                if at_start and after == "/":
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if at_start and after == "":
                    out.append(".*")
                    i += 2
                    continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_rule(line: str) -> Rule | None:
    """One line of a ``.gitignore``; None for blanks and comments."""
    text = line.rstrip("\n").rstrip("\r")
    if not text.endswith("\\ "):
        text = text.rstrip(" ")
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate or text.startswith(("\\!", "\\#")):
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    if not text:
        return None
    anchored = "/" in text
    body = _translate(text.lstrip("/"))
    regex = ("^" if anchored else "^(?:.*/)?") + body + "$"
    return Rule(line.strip(), re.compile(regex, re.DOTALL), negate, dir_only)


class Ignore:
    """A compiled rule list; ``excluded(path, is_dir)`` for a ``/``-separated relative path."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: list[str] = []
        self.rules: list[Rule] = []
        for line in patterns:
            rule = parse_rule(line)
            if rule is not None:
                self.patterns.append(line.strip())
                self.rules.append(rule)

    @classmethod
    def for_root(
        cls, root: str | Path, exclude: Iterable[str] = (), *, gitignore: bool = True
    ) -> Ignore:
        """The root's ``.gitignore`` (when asked and present), then the session's excludes."""
        lines: list[str] = []
        path = Path(root) / ".gitignore"
        if gitignore and path.is_file():
            lines += path.read_text(errors="replace").splitlines()
        lines += list(exclude)
        return cls(lines)

    def matches(self, rel: str, is_dir: bool) -> bool:
        """This path by itself (not its parents) is excluded."""
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(INTERNAL_PREFIX):
            return True
        verdict = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel):
                verdict = not rule.negate
        return verdict

    def excluded(self, rel: str, is_dir: bool = False) -> bool:
        """This path, or a directory it is in, is excluded."""
        parts = rel.split("/")
        for k in range(1, len(parts)):
            if self.matches("/".join(parts[:k]), True):
                return True
        return self.matches(rel, is_dir)

"""Excludes in ``.gitignore`` syntax: which paths a sync session never looks at.

Rules are read in order and the last one that matches a path decides, as in git:
``!`` negates, a leading or inner ``/`` anchors a pattern to the root, a trailing ``/``
matches directories only, ``**`` spans directories, ``*``/``?``/``[...]`` stay inside one.
A path inside an excluded directory is excluded (git cannot re-include it either); the
index walk prunes such directories. ``for_root`` reads the root's ``.gitignore`` and every
nested one (outside excluded directories and ``.git``), each rule rewritten to hold only
under its own folder (``nested``), deeper files after shallower ones so that, as in git,
the nearer file has the last word. Standard library only: the remote side builds the same
rules from the flat list of patterns it is sent.
"""

from __future__ import annotations

import os
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
        """The ``.gitignore`` files under the root (when asked), then the session's
        excludes."""
        extra = list(exclude)
        if not gitignore:
            return cls(extra)
        lines = _read(Path(root) / ".gitignore")
        current = cls([*lines, *extra])
        for folder, dirs, files in os.walk(root):
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            if rel != "." and ".gitignore" in files:
                found = nested(rel, _read(Path(folder) / ".gitignore"))
                if found:
                    lines += found
                    current = cls([*lines, *extra])
            base = "" if rel == "." else rel + "/"
            # git reads no .gitignore inside an excluded folder, nor inside .git
            dirs[:] = sorted(d for d in dirs if d != ".git" and not current.matches(base + d, True))
        return current

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


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _escape(folder: str) -> str:
    return re.sub(r"([*?\[\\!#])", r"\\\1", folder)


def nested(folder: str, lines: Iterable[str]) -> list[str]:
    """The rules of ``folder/.gitignore`` as rules of the root: each holds only under
    ``folder`` (``*.log`` → ``/folder/**/*.log``, ``/build`` → ``/folder/build``)."""
    prefix = "/" + _escape(folder.strip("/")) + "/"
    out: list[str] = []
    for line in lines:
        rule = parse_rule(line)
        if rule is None:
            continue
        text = line.strip()
        negate = text.startswith("!")
        if negate or text.startswith(("\\!", "\\#")):
            text = text[1:]
        dir_only = text.endswith("/")
        text = text.rstrip("/")
        anchored = "/" in text
        body = prefix + (text.lstrip("/") if anchored else "**/" + text)
        out.append(("!" if negate else "") + body + ("/" if dir_only else ""))
    return out

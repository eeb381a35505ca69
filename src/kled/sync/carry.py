"""Carry the sync remote into a replica that has only ``python3``: over its own stdin.

A dev replica runs the team's image or command, not Kled. ``remote_argv(root)`` is a
``python3 -c`` one-liner that reads one line (the size of a bundle and the session's
token) and then the bundle — this package's sources, zlib-compressed JSON — from stdin,
imports them from memory (no file is written in the replica) and runs
``kled.sync.remote ROOT`` on the rest of the same stdin and stdout. ``preamble(token)`` is
what the session writes first. The token travels on stdin, never in an argv that any
process of the replica could read.
"""

from __future__ import annotations

import json
import zlib
from functools import cache
from pathlib import Path

_BOOT = r"""
import os, sys, json, zlib, runpy, importlib.abc, importlib.util
def take(n):
    got = b""
    while len(got) < n:
        chunk = os.read(0, n - len(got))
        if not chunk:
            sys.exit(3)
        got += chunk
    return got
line = b""
while not line.endswith(b"\n"):
    line += take(1)
size, token = line.split()
sources = json.loads(zlib.decompress(take(int(size))))
class Carried(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def find_spec(self, name, path=None, target=None):
        if name in sources:
            return importlib.util.spec_from_loader(
                name, self, is_package=sources[name][0])
    def is_package(self, name):
        return sources[name][0]
    def get_source(self, name):
        return sources[name][1]
    def get_code(self, name):
        return compile(sources[name][1], "<kled>/" + name.replace(".", "/") + ".py", "exec")
    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)
sys.meta_path.insert(0, Carried())
os.environ["KLED_SYNC_TOKEN"] = token.decode()
sys.argv = ["kled.sync.remote", sys.argv[1]]
runpy.run_module("kled.sync.remote", run_name="__main__", alter_sys=True)
"""


@cache
def bundle() -> bytes:
    """This package's modules (and an empty ``kled``), as the one-liner reads them."""
    here = Path(__file__).parent
    sources: dict[str, tuple[bool, str]] = {
        "kled": (True, ""),
        "kled.sync": (True, (here / "__init__.py").read_text()),
    }
    for path in sorted(here.glob("*.py")):
        if path.stem not in ("__init__", "carry"):
            sources[f"kled.sync.{path.stem}"] = (False, path.read_text())
    return zlib.compress(json.dumps(sources).encode(), 9)


def remote_argv(root: str, python: str = "python3") -> list[str]:
    """The command that runs the sync remote on ``root`` inside a replica."""
    return [python, "-c", _BOOT, root]


def preamble(token: str) -> bytes:
    """What goes down the command's stdin before the channel's first frame."""
    data = bundle()
    return f"{len(data)} {token}\n".encode() + data

"""The QuickJS sandbox a policy script runs in, and the syntax check done at apply time.

A ``Sandbox`` owns the QuickJS contexts of one worker: one context per compiled policy
version (cached, least recently used dropped), so a script is parsed once and then only
called. Each run gets a CPU-time limit and a memory limit; a context that hit a limit is
thrown away, as its globals may be half-updated. The script's API (``allow``, ``deny``,
``mutate``...) is defined in JavaScript here.

The ``quickjs`` package refuses to call into Python while a time limit is set, so a
script never calls the host directly: ``get``/``list``/``sleep`` stop a run with a
*need*, the engine answers it, and the script runs again from the start with the answer
(policies are functions of the request and of what they read, so a replay takes the same
path). QuickJS's time limit counts the CPU time of the whole *process* (``clock()``),
which is one reason runs happen in worker processes of their own (``pool.py``).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import quickjs

from kled.errors import InvalidInput

# The script becomes the body of a function taking ``request``; the prefix stays on the
# script's first line so that QuickJS's line numbers are the script's own.
_PREFIX = "(function (request) {"
_SUFFIX = "\n})"
_LINE = re.compile(r"at <input>:(\d+)(?::(\d+))?")
_IDENT = re.compile(r"[A-Za-z0-9_$]")

#: CPU seconds and bytes a bare syntax check may use (top-level code could run in it).
_CHECK_SECONDS = 0.5
_CHECK_MEMORY = 16 * 1024 * 1024

_PRELUDE = r"""
(function () {
  "use strict";
  var g = globalThis;
  var ENV = JSON.parse(g.__kled_env);
  var HALT = {halt: true};
  var NEED = {need: true};
  var B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  var state = null;
  var answers = {};
  function fix(name, fn) {
    Object.defineProperty(g, name, {value: fn, writable: false, configurable: false});
  }
  function text(value) {
    if (value === undefined || value === null) return "";
    if (typeof value === "object") { try { return JSON.stringify(value); } catch (e) {} }
    return String(value);
  }
  // get/list/sleep are answered by the host between runs: an unanswered call stops the
  // run, the host finds the answer, and the script runs again from the start with it.
  function call(name, args) {
    var key = name + JSON.stringify(args);
    if (Object.prototype.hasOwnProperty.call(answers, key)) {
      var answer = answers[key];
      if (answer.error !== undefined) throw new Error(answer.error);
      return answer.value === null ? undefined : answer.value;
    }
    if (state.need === null) state.need = {key: key, fn: name, args: args};
    throw NEED;
  }
  function decide(action) {
    // A deny stays a deny even if the script catches the halt and carries on.
    if (state.action !== "deny") state.action = action;
  }
  fix("allow", function () { decide("allow"); throw HALT; });
  fix("exit", function () { if (state.action === null) state.action = "exit"; throw HALT; });
  fix("deny", function (message, reason, code) {
    state.action = "deny";
    state.message = text(message);
    state.reason = reason === undefined ? "" : text(reason);
    state.code = typeof code === "number" ? code : 0;
    throw HALT;
  });
  fix("warn", function (message) { state.warnings.push(text(message)); });
  fix("mutate", function (object) {
    decide("mutate");
    state.object = JSON.stringify(object);
    throw HALT;
  });
  fix("requeue", function (message) {
    decide("requeue");
    state.message = text(message);
    throw HALT;
  });
  fix("print", function () {
    state.prints.push(Array.prototype.map.call(arguments, text).join(" "));
  });
  fix("sleep", function (ms) { call("sleep", [Number(ms) || 0]); });
  fix("env", function (name) {
    var key = String(name);
    return Object.prototype.hasOwnProperty.call(ENV, key) ? ENV[key] : undefined;
  });
  fix("get", function (kind, apiVersion, name, options) {
    return call("get", [text(kind), text(apiVersion), text(name)]);
  });
  fix("list", function (kind, apiVersion, options) {
    var o = options || {};
    var found = call("list", [text(kind), text(apiVersion),
      o.namespace === undefined ? null : text(o.namespace),
      o.labelSelector === undefined ? null : text(o.labelSelector)]);
    return found === undefined ? [] : found;
  });
  fix("btoa", function (data) {
    var s = text(data), out = "";
    for (var i = 0; i < s.length; i += 3) {
      var a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
      if (a > 255 || b > 255 || c > 255) {
        throw new Error("btoa: the string has characters outside of Latin1");
      }
      var n = (a << 16) | ((b || 0) << 8) | (c || 0);
      out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63] +
        (i + 1 < s.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < s.length ? B64[n & 63] : "=");
    }
    return out;
  });
  fix("atob", function (data) {
    var s = text(data).replace(/[\t\n\f\r ]/g, "");
    if (s.length % 4 === 0) s = s.replace(/==?$/, "");
    if (s.length % 4 === 1 || /[^A-Za-z0-9+\/]/.test(s)) {
      throw new Error("atob: the string is not valid base64");
    }
    var out = "", bits = 0, value = 0;
    for (var i = 0; i < s.length; i++) {
      value = (value << 6) | B64.indexOf(s[i]);
      bits += 6;
      if (bits >= 8) { bits -= 8; out += String.fromCharCode((value >> bits) & 255); }
    }
    return out;
  });
  ["create", "update", "remove"].forEach(function (name) {
    fix(name, function () {
      throw new Error(name + "() is not available: Kled policies read resources, never write them");
    });
  });
  ["fetchSync", "readFileSync"].forEach(function (name) {
    fix(name, function () {
      throw new Error(name + "() is not available: policies have no network or file access");
    });
  });
  function where(e) {
    var m = e && e.stack ? /<input>:(\d+)/.exec(String(e.stack)) : null;
    return m ? " (line " + m[1] + ")" : "";
  }
  fix("__kled_run", function (policy, requestJson, answersJson) {
    state = {action: null, message: "", reason: "", code: 0, object: null, warnings: [],
             prints: [], error: null, limit: null, need: null};
    answers = JSON.parse(answersJson);
    try {
      policy(JSON.parse(requestJson));
    } catch (e) {
      if (e !== HALT && e !== NEED) {
        var message = e && e.message !== undefined ? String(e.message) : String(e);
        // QuickJS throws null when it cannot even allocate the error.
        if (e === null || message === "out of memory") state.limit = "memory";
        else if (message === "stack overflow") state.limit = "stack";
        else state.error = (e && e.name ? e.name + ": " : "") + message + where(e);
      }
    }
    var out = state;
    state = null;
    answers = {};
    return JSON.stringify(out);
  });
  delete g.__kled_env;
})();
"""


def wrap(source: str) -> str:
    """The script as a JavaScript function expression of ``request``."""
    return _PREFIX + source + _SUFFIX


def compile_check(javascript: str) -> None:
    """Refuse a script that does not parse, naming the line and column of the fault.

    Raises ``InvalidInput(field="spec.javascript")`` with a message such as
    ``line 3, column 5: SyntaxError: expecting ')'``.
    """
    problem = _syntax_problem(javascript)
    if problem is not None:
        raise InvalidInput(problem, field="spec.javascript")


def _parse_error(source: str) -> tuple[str, int | None, int | None] | None:
    """(message, line, column) of the first problem parsing ``source``, or None."""
    context = quickjs.Context()
    context.set_time_limit(_CHECK_SECONDS)
    context.set_memory_limit(context.memory()["malloc_size"] + _CHECK_MEMORY)
    wrapped = wrap(source)
    try:
        function = context.eval(wrapped)
        whole = (
            isinstance(function, quickjs.Object)
            and context.eval(
                "(function (f) { return typeof f === 'function' ? f.toString() : ''; })"
            )(function)
            == wrapped[1:-1]
        )
    except quickjs.JSException as exc:
        text = str(exc)
        first = text.splitlines()[0] if text else "SyntaxError"
        found = _LINE.search(text)
        if not first.startswith("SyntaxError") or found is None:
            return _UNBALANCED, None, None
        column = int(found.group(2)) if found.group(2) else None
        return first, int(found.group(1)), column
    if not whole:
        return _UNBALANCED, None, None
    return None


_UNBALANCED = (
    "SyntaxError: the script closes its own function early (an unmatched '}' or ')'); "
    "a policy must be a list of statements"
)


def _syntax_problem(source: str) -> str | None:
    error = _parse_error(source)
    if error is None:
        return None
    message, line, column = error
    if line is None:
        return message
    lines = source.split("\n")
    if line > len(lines):
        # The fault is the end of the script (an unclosed bracket or string).
        line, column = len(lines), len(lines[-1]) + 1
    elif column is None:
        column = _locate_column(source, message, line)
    elif line == 1:
        column -= len(_PREFIX)
    return f"line {line}, column {column}: {message}"


def _locate_column(source: str, message: str, line: int) -> int:
    """Find the column QuickJS does not report: the shortest prefix of the faulty line
    that already fails the same way ends at the offending token."""
    lines = source.split("\n")
    text = lines[line - 1]
    before = "\n".join(lines[: line - 1])
    for end in range(1, len(text) + 1):
        prefix = (before + "\n" if line > 1 else "") + text[:end]
        error = _parse_error(prefix)
        if error is not None and error[0] == message and error[1] == line:
            start = end
            if _IDENT.match(text[end - 1]):
                while start > 1 and _IDENT.match(text[start - 2]):
                    start -= 1
            return start
    return len(text) - len(text.lstrip()) + 1


@dataclass
class Limits:
    """What one run of a policy may use."""

    seconds: float = 10.0
    memory_bytes: int = 32 * 1024 * 1024
    stack_bytes: int = 512 * 1024


@dataclass
class Outcome:
    """What a script decided, or how it failed.

    ``limit`` is ``time``, ``memory`` or ``stack`` when the run was cut off; ``error`` a
    runtime error's text; ``need`` a host call (``{key, fn, args}``) to answer before the
    script can run again.
    """

    action: str | None = None  # allow | deny | mutate | exit | requeue | None (ran to the end)
    message: str = ""
    reason: str = ""
    code: int = 0
    object: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    prints: list[str] = field(default_factory=list)
    error: str | None = None
    limit: str | None = None
    need: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
            "object": self.object,
            "warnings": list(self.warnings),
            "prints": list(self.prints),
            "error": self.error,
            "limit": self.limit,
            "need": self.need,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        obj = data.get("object")
        return cls(
            action=data.get("action"),
            message=str(data.get("message") or ""),
            reason=str(data.get("reason") or ""),
            code=int(data.get("code") or 0),
            object=json.loads(obj) if isinstance(obj, str) else obj,
            warnings=[str(w) for w in data.get("warnings") or []],
            prints=[str(p) for p in data.get("prints") or []],
            error=data.get("error"),
            limit=data.get("limit"),
            need=data.get("need"),
        )


class _Compiled:
    def __init__(self, context: Any, function: Any, runner: Any) -> None:
        self.context = context
        self.function = function
        self.runner = runner


class Sandbox:
    """Compiled policies of one thread or process, and the runs of them.

    ``env`` is what ``env(name)`` can see: only what the operator allowed. Not
    thread-safe: a QuickJS context must only ever be used by the thread that made it.
    """

    def __init__(self, env: dict[str, str] | None = None, *, cache_size: int = 128) -> None:
        self._env = json.dumps(dict(env or {}))
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._cache)

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def run(
        self,
        key: str,
        source: str,
        request: dict[str, Any],
        limits: Limits,
        answers: dict[str, Any] | None = None,
    ) -> Outcome:
        """Run the policy ``source`` (compiled once per ``key``) on ``request``.

        ``answers`` maps the keys of host calls answered so far to ``{value}`` or
        ``{error}``; an Outcome with ``need`` asks for one more.
        """
        try:
            compiled = self._compiled(key, source, limits)
        except quickjs.JSException as exc:
            self.forget(key)
            return _failure(str(exc))
        context = compiled.context
        context.set_time_limit(limits.seconds)
        context.set_memory_limit(context.memory()["malloc_size"] + limits.memory_bytes)
        try:
            raw = compiled.runner(compiled.function, json.dumps(request), json.dumps(answers or {}))
        except quickjs.StackOverflow:
            self.forget(key)
            return Outcome(limit="stack")
        except quickjs.JSException as exc:
            self.forget(key)
            return _failure(str(exc))
        finally:
            context.set_time_limit(-1)
            context.set_memory_limit(-1)
        outcome = Outcome.from_dict(json.loads(raw))
        if outcome.limit is not None:
            self.forget(key)
        else:
            context.gc()
        return outcome

    def _compiled(self, key: str, source: str, limits: Limits) -> _Compiled:
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
            return compiled
        context = quickjs.Context()
        context.set_max_stack_size(limits.stack_bytes)
        context.set("__kled_env", self._env)
        context.eval(_PRELUDE)
        # Compiling may run top-level code smuggled past the wrapper: give it the limits.
        context.set_time_limit(limits.seconds)
        context.set_memory_limit(context.memory()["malloc_size"] + limits.memory_bytes)
        try:
            function = context.eval(wrap(source))
        finally:
            context.set_time_limit(-1)
            context.set_memory_limit(-1)
        compiled = _Compiled(context, function, context.get("__kled_run"))
        self._cache[key] = compiled
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled


def _failure(text: str) -> Outcome:
    first = text.splitlines()[0].strip() if text else ""
    if "interrupted" in first:
        return Outcome(limit="time")
    # Out of memory, QuickJS may fail to build the error itself: it throws null.
    if first in ("null", "") or "out of memory" in first or "Failed obtaining QuickJS" in first:
        return Outcome(limit="memory")
    if "stack overflow" in first:
        return Outcome(limit="stack")
    return Outcome(error=first)

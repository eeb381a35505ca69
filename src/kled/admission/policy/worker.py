"""The policy worker process: runs policy scripts for the server, one at a time.

Started by ``pool.WorkerPool`` (``main()`` in a fresh interpreter). It reads
framed JSON requests on stdin and answers on stdout (a 4-byte big-endian length, then
UTF-8 JSON). The first frame is ``{"env": {...}}``, what ``env()`` may show; every later
one is a run: ``{"key", "source", "request", "limits", "answers"}`` → an ``Outcome``, or
a batch of runs on one request (``run_batch``) → ``{"batch": [Outcome...]}``.
Running in a process of its own keeps QuickJS's CPU clock to this one script, and a
crash or a leak of the C library away from the server. It exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from typing import IO, Any

from kled.admission.policy.runtime import Limits, Outcome, Sandbox

_HEADER = struct.Struct(">I")


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's JSON, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return json.loads(body)


def encode_frame(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    init = read_frame(inp)
    if init is None:
        return
    sandbox = Sandbox(init.get("env") or {})
    while True:
        message = read_frame(inp)
        if message is None:
            return
        if "batch" in message:
            out.write(encode_frame({"batch": run_batch(sandbox, message)}))
            out.flush()
            continue
        limits = Limits(**message.get("limits", {}))
        try:
            outcome = sandbox.run(
                message["key"],
                message["source"],
                message["request"],
                limits,
                message.get("answers") or {},
            )
        except Exception as exc:  # the server must get an answer, whatever went wrong
            outcome = Outcome(error=f"policy runtime failed: {exc}")
        out.write(encode_frame(outcome.as_dict()))
        out.flush()


def run_batch(sandbox: Sandbox, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy of a ``{"batch": [{"key", "source", "limits"}...], "request"}`` frame
    on the one request, in order: one round trip for all the policies a request matches.
    A policy that needs a host call answers ``need``; the server runs it again alone."""
    out = []
    for item in message["batch"]:
        try:
            outcome = sandbox.run(
                item["key"], item["source"], message["request"], Limits(**item["limits"]), {}
            )
        except Exception as exc:  # the server must get an answer, whatever went wrong
            outcome = Outcome(error=f"policy runtime failed: {exc}")
        out.append(outcome.as_dict())
    return out


def main() -> None:
    # Ctrl-C goes to the whole process group; the server decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the protocol stream to ourselves: anything printed goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()

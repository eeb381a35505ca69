"""A command run by the control plane itself inside one replica, through its agent.

The same exec stream as ``kled exec`` (``bus/exec_link``: the Message Office to the agent
of the replica's node), with no client on the other end: stdin closed at once, stdout and
stderr collected, the exit code returned. Used for what the control plane must do inside a
server, such as a managed service's backup (``api/managed.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from kled.bus.exec_link import ExecLink, LinkLost
from kled.bus.office import MessageOffice
from kled.errors import KledError, Unavailable

#: how long the agent has to start the command
START_TIMEOUT = 15.0


async def run_in_replica(
    office: MessageOffice, node: str, replica: str, command: list[str]
) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``command`` in ``replica`` on ``node``;
    :class:`Unavailable` when the agent cannot run it or the stream is lost."""
    session = uuid.uuid4().hex
    subjects = office.subjects
    link = ExecLink(office, subjects.exec_in(node, session), subjects.exec_out(node, session))
    await link.open()
    try:
        await link.send("open", replica=replica, command=command)
        try:
            first = await asyncio.wait_for(link.recv(), START_TIMEOUT)
        except (TimeoutError, LinkLost) as err:
            raise Unavailable(
                f"the agent of node {node} did not answer: {err or 'timeout'}"
            ) from err
        if first.kind != "started":
            raise Unavailable(str(first.meta.get("message") or first.kind))
        await link.send("eof")
        out, err_out = bytearray(), bytearray()
        while True:
            try:
                frame = await link.recv()
            except LinkLost as err:
                raise Unavailable(f"the command in {replica} was lost: {err}") from err
            if frame.kind in ("out", "err"):
                (out if frame.kind == "out" else err_out).extend(frame.data)
                await link.consumed(len(frame.data))
            elif frame.kind == "exit":
                code = frame.meta.get("code")
                return (code if isinstance(code, int) else 1), bytes(out), bytes(err_out)
            elif frame.kind == "error":
                raise Unavailable(str(frame.meta.get("message")))
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()

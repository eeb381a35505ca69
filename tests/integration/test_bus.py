"""The Message Office against real nats-servers: an embedded one and the shared one."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from kled.bus.embedded import EmbeddedNats
from kled.bus.office import ConnectOptions, MessageOffice, StatusMessage
from kled.bus.subjects import Subjects
from kled.errors import Forbidden, Unauthorized
from kled.resources.hoststate import (
    AgentEvent,
    HostDesiredState,
    LogLine,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    ReplicaStatusReport,
    utcnow,
)
from servers import control_office

SYSTEM_NATS = "nats://127.0.0.1:4222"


def _system_nats_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1):
            return True
    except OSError:
        return False


needs_system_nats = pytest.mark.skipif(
    not _system_nats_up(), reason="no NATS server at 127.0.0.1:4222"
)


@pytest.fixture
async def shared() -> AsyncIterator[MessageOffice]:
    """A control-plane office on the shared NATS, under a prefix of its own, cleaned after."""
    subjects = Subjects(f"t{uuid.uuid4().hex[:10]}-")
    office = MessageOffice(ConnectOptions(url=SYSTEM_NATS), subjects)
    await office.connect()
    await office.ensure_streams()
    try:
        yield office
    finally:
        await office.delete_streams()
        await office.close()


def desired(node: str, *apps: str) -> HostDesiredState:
    return HostDesiredState(
        node=node,
        replicas=[
            ReplicaSpec(team="acme", environment="dev", app=a, index=0, command=["sleep", "60"])
            for a in apps
        ],
    )


def report(node: str, rid: str, restarts: int = 0) -> ReplicaStatusReport:
    return ReplicaStatusReport(
        node=node,
        replica=ReplicaStatus(id=rid, state=ReplicaState.RUNNING, restarts=restarts),
    )


async def test_watch_gives_latest_then_changes_across_a_nats_restart(
    embedded: EmbeddedNats,
) -> None:
    control = control_office(embedded)
    await control.connect()
    await control.ensure_streams()
    await control.put_desired("n1", desired("n1", "old"))
    rev = await control.put_desired("n1", desired("n1", "api"))

    agent = control_office(embedded)
    await agent.connect()
    seen: asyncio.Queue[HostDesiredState] = asyncio.Queue()

    async def watch() -> None:
        async for state in agent.watch_desired("n1", heartbeat=0.5):
            await seen.put(state)

    task = asyncio.create_task(watch())
    try:
        first = await asyncio.wait_for(seen.get(), 20)
        assert [r.app for r in first.replicas] == ["api"]
        assert first.revision == rev

        await embedded.stop()
        await embedded.start()  # same port, same storage dir

        rev2 = await control.put_desired("n1", desired("n1", "api", "web"))
        second = await asyncio.wait_for(seen.get(), 60)
        assert [r.app for r in second.replicas] == ["api", "web"]
        assert second.revision == rev2 > rev
        assert seen.empty()  # the value seen before the restart is not delivered again
        assert (await control.get_desired("n1")) == second
    finally:
        task.cancel()
        await agent.close()
        await control.close()


async def test_deleting_the_key_yields_an_empty_state(embedded: EmbeddedNats) -> None:
    async with control_office(embedded) as control:
        await control.ensure_streams()
        await control.put_desired("n1", desired("n1", "api"))
        watch = control.watch_desired("n1", heartbeat=0.5)
        assert [r.app for r in (await anext(watch)).replicas] == ["api"]
        await control.delete_desired("n1")
        assert (await asyncio.wait_for(anext(watch), 20)).replicas == []
        assert await control.get_desired("n1") is None
        await watch.aclose()


@needs_system_nats
async def test_a_retried_status_publish_is_stored_once(shared: MessageOffice) -> None:
    msg = report("n1", "acme.dev.api.0")
    assert await shared.publish_status(msg, msg_id="n1-1") is True
    assert await shared.publish_status(msg, msg_id="n1-1") is False  # the retry
    assert await shared.publish_status(report("n1", "acme.dev.api.0", 1), msg_id="n1-2")

    got: list[StatusMessage] = []
    stop = asyncio.Event()

    async def handle(m: StatusMessage) -> None:
        got.append(m)
        if len(got) == 2:
            stop.set()

    await asyncio.wait_for(shared.consume_status("cp", handle, stop=stop), 30)
    assert [m.replica.restarts for m in got if isinstance(m, ReplicaStatusReport)] == [0, 1]
    info = await shared.js.stream_info(shared.subjects.status_stream)
    assert info.state.messages == 2


@needs_system_nats
async def test_durable_consumer_resumes_without_loss_or_duplicate(shared: MessageOffice) -> None:
    for i in range(20):
        await shared.publish_status(report("n1", f"acme.dev.api.{i}"))
    await shared.publish_event(AgentEvent(node="n1", reason="Started", message="hello"))

    handled: list[str] = []
    stop = asyncio.Event()

    async def first_life(m: StatusMessage) -> None:
        assert isinstance(m, ReplicaStatusReport)
        handled.append(m.replica.id)
        if len(handled) == 7:
            stop.set()  # the control plane goes down mid-batch

    await asyncio.wait_for(shared.consume_status("cp", first_life, stop=stop), 30)
    assert len(handled) == 7

    # a new control-plane process: a new connection, the same durable name
    opts = ConnectOptions(url=SYSTEM_NATS)
    async with MessageOffice(opts, shared.subjects) as restarted:
        stop2 = asyncio.Event()
        events: list[AgentEvent] = []

        async def second_life(m: StatusMessage) -> None:
            if isinstance(m, AgentEvent):
                events.append(m)
                stop2.set()
            else:
                assert isinstance(m, ReplicaStatusReport)
                handled.append(m.replica.id)

        await asyncio.wait_for(restarted.consume_status("cp", second_life, stop=stop2), 30)
    assert handled == [f"acme.dev.api.{i}" for i in range(20)]
    assert [e.reason for e in events] == ["Started"]


@needs_system_nats
async def test_a_failing_handler_gets_the_message_again(shared: MessageOffice) -> None:
    await shared.publish_status(report("n1", "acme.dev.api.0"))
    calls = 0
    stop = asyncio.Event()

    async def flaky(m: StatusMessage) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database down")
        stop.set()

    await asyncio.wait_for(shared.consume_status("cp", flaky, stop=stop), 30)
    assert calls == 2


@needs_system_nats
async def test_read_logs_by_replica_and_by_app_and_follow(shared: MessageOffice) -> None:
    for i in range(3):
        await shared.publish_log("n1", LogLine(replica_id="acme.dev.api.0", line=f"a{i}", seq=i))
        await shared.publish_log("n2", LogLine(replica_id="acme.dev.api.1", line=f"b{i}", seq=i))
    await shared.publish_log("n2", LogLine(replica_id="acme.dev.web.0", line="other"))

    one = [x.line async for x in shared.read_logs("acme.dev.api.0")]
    assert one == ["a0", "a1", "a2"]
    app = [x.line async for x in shared.read_logs("acme.dev.api")]
    assert sorted(app) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [x.line async for x in shared.read_logs("acme.dev.nothing")] == []

    later = utcnow()
    await asyncio.sleep(0.01)
    await shared.publish_log("n1", LogLine(replica_id="acme.dev.api.0", line="a-late", seq=9))
    recent = [x.line async for x in shared.read_logs("acme.dev.api", since=later)]
    assert recent == ["a-late"]

    follow = shared.read_logs("acme.dev.web", follow=True)
    assert (await asyncio.wait_for(anext(follow), 10)).line == "other"
    await shared.publish_log("n2", LogLine(replica_id="acme.dev.web.0", line="new"))
    assert (await asyncio.wait_for(anext(follow), 10)).line == "new"
    await follow.aclose()


async def test_node_credentials_fence_each_node_in(embedded: EmbeddedNats) -> None:
    async with control_office(embedded) as control:
        await control.ensure_streams()
        await control.put_desired("node-a", desired("node-a", "api"))
        await control.put_desired("node-b", desired("node-b", "secret-app"))
        creds_a = await embedded.add_node("node-a")
        await embedded.add_node("node-b")

        as_a = MessageOffice(
            ConnectOptions(
                url=embedded.url,
                user=creds_a.user,
                password=creds_a.password,
                node="node-a",
                request_timeout=1,
                publish_retry_for=0.5,
            )
        )
        async with as_a:
            # its own key: readable and watchable
            own = await as_a.get_desired("node-a")
            assert own is not None and [r.app for r in own.replicas] == ["api"]
            watch = as_a.watch_desired("node-a", heartbeat=0.5)
            assert [r.app for r in (await asyncio.wait_for(anext(watch), 10)).replicas] == ["api"]
            await watch.aclose()
            assert await as_a.publish_status(report("node-a", "acme.dev.api.0"))

            # node B's key: neither readable nor watchable
            with pytest.raises(Forbidden):
                await as_a.get_desired("node-b")
            with pytest.raises(Forbidden):
                await anext(as_a.watch_desired("node-b", heartbeat=0.5))
            # nor may A speak as B
            with pytest.raises(Forbidden):
                await as_a.publish_status(report("node-b", "acme.dev.x.0"))
            with pytest.raises(Forbidden):
                await as_a.publish_log("node-b", LogLine(replica_id="acme.dev.x.0", line="x"))
            # nor create streams or read others' statuses
            with pytest.raises(Forbidden):
                await as_a.ensure_streams()

        info = await control.js.stream_info(control.subjects.status_stream)
        assert info.state.messages == 1
        assert info.state.subjects is None or "kled.status.node-b" not in info.state.subjects


async def test_node_credentials_survive_a_restart_and_can_be_revoked(
    embedded: EmbeddedNats,
) -> None:
    creds = await embedded.add_node("node-a")
    assert await embedded.add_node("node-a") == creds  # asking again changes nothing
    await embedded.stop()
    restarted = EmbeddedNats(embedded.data_dir, port=embedded.port)
    await restarted.start()
    try:
        as_a = MessageOffice(
            ConnectOptions(
                url=restarted.url,
                user=creds.user,
                password=creds.password,
                node="node-a",
                connect_retry_for=0,
            )
        )
        await as_a.connect()
        await as_a.close()

        await restarted.remove_node("node-a")
        revoked = MessageOffice(
            ConnectOptions(
                url=restarted.url,
                user=creds.user,
                password=creds.password,
                node="node-a",
                connect_retry_for=3,
            )
        )
        with pytest.raises(Unauthorized):
            await revoked.connect()
    finally:
        await restarted.stop()


@needs_system_nats
async def test_messages_fetched_together_go_to_the_batch_handler_in_order(
    shared: MessageOffice,
) -> None:
    def ident(m: StatusMessage) -> str:
        return m.replica.id if isinstance(m, ReplicaStatusReport) else "other"

    async def consume(count: int, fail: bool) -> tuple[list[list[str]], list[str]]:
        """Publish ``count`` reports and consume them with a batch handler (that fails)."""
        for i in range(count):
            await shared.publish_status(report("n1", f"acme.dev.api.{i}"))
        batches: list[list[str]] = []
        alone: list[str] = []
        stop = asyncio.Event()

        async def handle(m: StatusMessage) -> None:
            alone.append(ident(m))
            if len(alone) == count:
                stop.set()

        async def many(ms: list[StatusMessage]) -> None:
            if fail:
                raise RuntimeError("database down")
            batches.append([ident(m) for m in ms])
            if sum(map(len, batches)) + len(alone) == count:
                stop.set()

        await asyncio.wait_for(shared.consume_status("cp", handle, stop=stop, many=many), 30)
        return batches, alone

    batches, alone = await consume(10, fail=False)
    assert [i for b in batches for i in b] + alone == [f"acme.dev.api.{i}" for i in range(10)]
    assert any(len(b) > 1 for b in batches)
    # a batch that fails goes to the one-by-one handler, in order
    batches, alone = await consume(5, fail=True)
    assert batches == [] and alone == [f"acme.dev.api.{i}" for i in range(5)]
    # every message was acknowledged: nothing waits to be delivered again
    info = await shared.js.consumer_info(shared.subjects.status_stream, "cp")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_heartbeats_are_heard_as_published_before_any_consumer_reads_them(
    embedded: EmbeddedNats,
) -> None:
    """Liveness does not wait for the durable consumer: the control plane hears each
    node's heartbeat as it is published, while the stream still holds it for handling."""
    from datetime import UTC, datetime

    from kled.resources.hoststate import Capacity, NodeHeartbeat

    async with control_office(embedded) as control:
        await control.ensure_streams()
        heard: asyncio.Queue[str] = asyncio.Queue()
        end = await control.hear_heartbeats(heard.put_nowait)
        try:
            for node in ("n1", "n2"):
                hb = NodeHeartbeat(
                    node=node,
                    time=datetime.now(UTC),
                    capacity=Capacity(cpu_millicores=1000, memory_bytes=1 << 30),
                )
                await control.publish_heartbeat(hb)
            got = [await asyncio.wait_for(heard.get(), 20) for _ in range(2)]
            assert sorted(got) == ["n1", "n2"]
            info = await control.js.stream_info(control.subjects.status_stream)
            assert info.state.messages == 2  # still there for the consumer
        finally:
            await end()

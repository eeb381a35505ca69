"""The Message Office: the one seam between Kled and NATS JetStream.

Nothing outside ``kled.bus`` sees nats-py. The control plane writes each node's desired
state to a key of a KV bucket and reads status, heartbeats and events from a stream with
durable pull consumers (acknowledged only after its handler succeeded). An agent watches
its own key and publishes to its own subjects; every publish carries a ``Nats-Msg-Id`` so
that a retried publish is stored once. Errors of nats-py are translated here into Kled's:
a dead or unreachable server is ``Unavailable``, a permissions violation ``Forbidden``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ValidationError

from kled.bus.subjects import Subjects
from kled.errors import Forbidden, PermanentError, TemporaryError, Unauthorized, Unavailable
from kled.resources.hoststate import (
    AgentEvent,
    HostDesiredState,
    LogLine,
    NodeHeartbeat,
    ReplicaStatusReport,
)
from kled.resources.netstate import Peer as WgPeer

log = logging.getLogger(__name__)
# nats-py logs every failed connection attempt with a traceback at ERROR; the callbacks
# below report connection trouble once, in Kled's words.
logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)

StatusMessage = ReplicaStatusReport | NodeHeartbeat | AgentEvent
StatusHandler = Callable[[StatusMessage], Awaitable[None]]
ManyHandler = Callable[[list[StatusMessage]], Awaitable[None]]
_M = TypeVar("_M", bound=BaseModel)

_KINDS: dict[str, type[BaseModel]] = {
    "status": ReplicaStatusReport,
    "heartbeat": NodeHeartbeat,
    "events": AgentEvent,
}
_KV_OP = "KV-Operation"


@dataclass
class ConnectOptions:
    """How to reach NATS; ``node`` set means "connect as that node's agent"."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    node: str | None = None
    name: str = "kled"
    #: how long ``connect`` keeps trying the first time; None = forever
    connect_retry_for: float | None = 30.0
    #: seconds between reconnect attempts once connected (nats-py adds jitter)
    reconnect_wait: float = 0.5
    #: how long one publish keeps retrying (same Nats-Msg-Id) before Unavailable
    publish_retry_for: float = 30.0
    request_timeout: float = 5.0
    servers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PeerChange:
    """One key of a node's peer set: ``name`` (``node-b``, ``device-laptop``) of ``team``
    is now ``peer``, or gone (None)."""

    team: str
    name: str
    peer: WgPeer | None


def _raise_if_cancelled(err: Exception) -> None:
    """nats-py turns the cancellation of a ``next_msg`` into ``ConnectionClosedError``
    when the connection is closed; a watch must still end when its task is cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from err


def _is_auth_error(err: Exception | None) -> bool:
    return err is not None and "authorization violation" in str(err).lower()


#: unacknowledged status messages the control plane's consumer may hold at once
MAX_ACK_PENDING = 256


class MessageOffice:
    """A connection to NATS speaking Kled's subjects, streams and bucket."""

    def __init__(self, options: ConnectOptions, subjects: Subjects | None = None) -> None:
        self.options = options
        self.subjects = subjects or Subjects()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._violations: collections.deque[str] = collections.deque(maxlen=32)
        #: bumped on every reconnect, so watches know to re-create their consumer
        self._epoch = 0
        self._last_error: Exception | None = None

    # -- connection ----------------------------------------------------------------------------
    async def connect(self) -> None:
        o = self.options
        kwargs: dict[str, Any] = {
            "servers": o.servers or [o.url],
            "name": o.name,
            # nats-py retries a first connect as often as a reconnect, so "forever" would
            # hang on bad credentials; it is raised to forever once connected (below)
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": o.reconnect_wait,
            "allow_reconnect": True,
            "inbox_prefix": self.subjects.inbox(o.node),
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "connect_timeout": 2,
        }
        if o.user:
            kwargs["user"] = o.user
            kwargs["password"] = o.password
        if o.creds_file:
            kwargs["user_credentials"] = o.creds_file
        if o.tls_ca or o.tls_cert:
            ctx = ssl.create_default_context(cafile=o.tls_ca)
            if o.tls_cert:
                ctx.load_cert_chain(o.tls_cert, o.tls_key)
            kwargs["tls"] = ctx
        loop = asyncio.get_running_loop()
        deadline = None if o.connect_retry_for is None else loop.time() + o.connect_retry_for
        delay = 0.2
        while True:
            self._last_error = None
            try:
                self._nc = await nats.connect(**kwargs)
                self._nc.options["max_reconnect_attempts"] = -1
                break
            except (TimeoutError, NatsError, OSError) as err:
                if _is_auth_error(self._last_error):
                    raise Unauthorized(
                        f"NATS at {o.url} refused the credentials of {o.user or 'this client'}"
                    ) from err
                if deadline is not None and loop.time() + delay > deadline:
                    raise Unavailable(f"cannot reach NATS at {o.url}: {err}") from err
                log.warning("nats connect failed url=%s err=%s; retrying", o.url, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._js = self._nc.jetstream(timeout=o.request_timeout)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await nc.drain()

    async def __aenter__(self) -> MessageOffice:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("the Message Office is not connected")
        return self._js

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise Unavailable("the Message Office is not connected")
        return self._nc

    async def _on_error(self, err: Exception) -> None:
        self._last_error = err
        text = str(err)
        if "permissions violation" in text.lower():
            self._violations.append(text)
            log.warning("nats permissions violation: %s", text)
        else:
            log.debug("nats error: %s", text)

    async def _on_disconnected(self) -> None:
        log.warning("nats disconnected url=%s", self.options.url)

    async def _on_reconnected(self) -> None:
        self._epoch += 1
        log.info("nats reconnected url=%s", self.options.url)

    def _translate(self, err: Exception, subject: str) -> Exception:
        wanted = subject.lower()  # nats-py lowercases the subject in its message
        for text in self._violations:
            if wanted in text.lower():
                return Forbidden(f"not allowed on the Message Office: {subject}")
        return Unavailable(f"the Message Office did not answer for {subject}: {err}")

    # -- streams and bucket (control plane) --------------------------------------------------------
    async def ensure_streams(self) -> None:
        """Create (or update) the desired-state bucket and the status and log streams."""
        s = self.subjects
        try:
            await self.js.create_key_value(
                api.KeyValueConfig(bucket=s.desired_bucket, history=5, direct=True)
            )
            # One value per key: a peer's latest (or its delete marker, so that a watch
            # resumed from a sequence still hears of the removal).
            await self.js.create_key_value(api.KeyValueConfig(bucket=s.peers_bucket, history=1))
            await self._ensure_stream(
                api.StreamConfig(
                    name=s.status_stream,
                    subjects=s.status_subjects,
                    retention=api.RetentionPolicy.LIMITS,
                    max_age=24 * 3600,
                    max_bytes=1 << 30,
                    duplicate_window=120,
                    storage=api.StorageType.FILE,
                )
            )
            await self._ensure_stream(
                api.StreamConfig(
                    name=s.logs_stream,
                    subjects=s.logs_subjects,
                    retention=api.RetentionPolicy.LIMITS,
                    max_age=7 * 24 * 3600,
                    max_bytes=1 << 30,
                    discard=api.DiscardPolicy.OLD,
                    duplicate_window=120,
                    storage=api.StorageType.FILE,
                )
            )
        except (TimeoutError, NatsError) as err:
            raise self._translate(err, "$JS.API.STREAM.CREATE") from err

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)

    async def delete_streams(self) -> None:
        """Remove the bucket and streams (tests on a shared server clean up with this)."""
        s = self.subjects
        for name in (s.desired_stream, s.peers_stream, s.status_stream, s.logs_stream):
            with contextlib.suppress(NotFoundError):
                await self.js.delete_stream(name)

    # -- desired state -------------------------------------------------------------------------
    async def put_desired(self, node: str, state: HostDesiredState) -> int:
        """Write ``node``'s whole desired state; returns the new revision."""
        body = state.model_copy(update={"revision": 0}).model_dump_json().encode()
        ack = await self._publish(self.subjects.desired_subject(node), body, None)
        return ack.seq

    async def delete_desired(self, node: str) -> int:
        ack = await self._publish(self.subjects.desired_subject(node), b"", None, {_KV_OP: "DEL"})
        return ack.seq

    async def get_desired(self, node: str) -> HostDesiredState | None:
        """The latest desired state of ``node`` (a direct get of its key), None if unset."""
        subj = f"$JS.API.DIRECT.GET.{self.subjects.desired_stream}."
        subj += self.subjects.desired_subject(node)
        try:
            msg = await self.nc.request(subj, b"", timeout=self.options.request_timeout)
        except (TimeoutError, NatsError) as err:
            raise self._translate(err, subj) from err
        headers = msg.headers or {}
        if headers.get("Status") == "404" or headers.get(_KV_OP) in ("DEL", "PURGE"):
            return None
        if headers.get("Status"):
            raise Unavailable(f"direct get {subj}: {headers}")
        return self._desired(node, msg.data, int(headers.get("Nats-Sequence", "0")))

    @staticmethod
    def _desired(node: str, data: bytes, revision: int) -> HostDesiredState:
        if not data:
            return HostDesiredState(node=node, revision=revision)
        state = HostDesiredState.model_validate_json(data)
        return state.model_copy(update={"revision": revision})

    async def watch_desired(
        self, node: str, *, heartbeat: float = 2.0
    ) -> AsyncIterator[HostDesiredState]:
        """The latest desired state of ``node``, then every change; survives NATS restarts.

        A deleted key yields an empty desired state (run nothing). A value is never
        yielded twice, nor an older one after a newer one.
        """
        subject = self.subjects.desired_subject(node)
        async for msg in self._follow(self.subjects.desired_stream, subject, heartbeat):
            if msg is None:
                continue
            rev = msg.metadata.sequence.stream
            if (msg.headers or {}).get(_KV_OP) in ("DEL", "PURGE"):
                yield HostDesiredState(node=node, revision=rev)
                continue
            try:
                yield self._desired(node, msg.data, rev)
            except ValidationError as err:
                log.error("node/%s: unreadable desired state rev=%s: %s", node, rev, err)

    async def _follow(
        self, stream: str, subject: str, heartbeat: float, *, what: str = "watch"
    ) -> AsyncIterator[Msg | None]:
        """Every message of ``stream`` under ``subject``: the last of each subject first,
        then each new one, resumed after a reconnect from where it stopped (never one
        twice, never an older after a newer). None is yielded each time it has caught up
        with the stream as it was when its consumer was (re)created."""
        last = 0
        delay = 0.2
        while True:
            try:
                async for msg in self._follow_once(stream, subject, last, heartbeat):
                    delay = 0.2
                    if msg is None:
                        yield None
                        continue
                    seq = msg.metadata.sequence.stream
                    if seq > last:
                        last = seq
                        yield msg
            except Forbidden:
                raise
            except (TimeoutError, NatsError, Unavailable) as err:
                _raise_if_cancelled(err)
                log.info("%s of %s restarts: %s", what, subject, err or type(err))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow_once(
        self, stream: str, subject: str, after: int, heartbeat: float
    ) -> AsyncIterator[Msg | None]:
        # A consumer of our own (not nats-py's KV watcher) so that its create request names
        # the filter subject, which per-node permissions can then fence.
        nc = self.nc
        inbox = nc.new_inbox()
        # Our own queue rather than nats-py's next_msg, which can lose the cancellation
        # of the task waiting in it.
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def deliver(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await nc.subscribe(inbox, cb=deliver)
        epoch = self._epoch
        try:
            config = api.ConsumerConfig(
                name=f"w{uuid.uuid4().hex[:16]}",
                deliver_subject=inbox,
                filter_subject=subject,
                ack_policy=api.AckPolicy.NONE,
                idle_heartbeat=heartbeat,
                inactive_threshold=max(30.0, heartbeat * 10),
                mem_storage=True,
                num_replicas=1,
            )
            if after:
                config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = after + 1
            else:
                config.deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
            create = f"$JS.API.CONSUMER.CREATE.{stream}.{config.name}.{subject}"
            try:
                info = await self.js.add_consumer(stream, config=config)
            except NotFoundError as err:
                raise Unavailable(f"no stream {stream} yet: {err}") from err
            except (TimeoutError, NatsError) as err:
                raise self._translate(err, create) from err
            if not info.num_pending:
                yield None
            while True:
                if self._epoch != epoch:
                    raise Unavailable("reconnected; re-creating the watch")
                try:
                    async with asyncio.timeout(heartbeat * 3):
                        msg = await queue.get()
                except TimeoutError as err:
                    raise Unavailable("watch heartbeat missed") from err
                if (msg.headers or {}).get("Status"):
                    continue  # idle heartbeat
                yield msg
                if msg.metadata.num_pending == 0:
                    yield None
        finally:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await sub.unsubscribe()

    # -- peer sets -----------------------------------------------------------------------------
    async def put_peer(self, key: str, peer: WgPeer) -> int:
        """Set one peer of one recipient node (``<node>.<team>.<kind>-<name>``)."""
        body = peer.model_dump_json().encode()
        ack = await self._publish(self.subjects.peer_subject(key), body, None)
        return ack.seq

    async def delete_peer(self, key: str) -> int:
        subject = self.subjects.peer_subject(key)
        ack = await self._publish(subject, b"", None, {_KV_OP: "DEL"})
        return ack.seq

    async def peer_entries(self) -> dict[str, bytes]:
        """Every key of the peers bucket that is set now, with its value (control plane)."""
        s = self.subjects
        prefix = s.peer_subject("")
        out: dict[str, bytes] = {}
        async for msg in self._follow_once(s.peers_stream, prefix + ">", 0, 2.0):
            if msg is None:
                return out
            key = msg.subject[len(prefix) :]
            if (msg.headers or {}).get(_KV_OP) in ("DEL", "PURGE"):
                out.pop(key, None)
            else:
                out[key] = msg.data
        return out

    async def watch_peers(
        self, node: str, *, heartbeat: float = 2.0
    ) -> AsyncIterator[PeerChange | None]:
        """``node``'s peers: every key set now, then each change, as ``PeerChange``s;
        None each time the watch has caught up (the first None: the whole set is known)."""
        s = self.subjects
        prefix = s.peer_subject(f"{node}.")
        async for msg in self._follow(s.peers_stream, s.peers_filter(node), heartbeat):
            if msg is None:
                yield None
                continue
            team, _, name = msg.subject[len(prefix) :].partition(".")
            if (msg.headers or {}).get(_KV_OP) in ("DEL", "PURGE") or not msg.data:
                yield PeerChange(team, name, None)
                continue
            try:
                yield PeerChange(team, name, WgPeer.model_validate_json(msg.data))
            except ValidationError as err:
                log.error("node/%s: unreadable peer %s: %s", node, msg.subject, err)

    # -- publishing (agents) ----------------------------------------
    async def _publish(
        self,
        subject: str,
        body: bytes,
        msg_id: str | None,
        headers: dict[str, str] | None = None,
    ) -> api.PubAck:
        hdrs = dict(headers or {})
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.publish_retry_for
        delay = 0.1
        while True:
            try:
                return await self.js.publish(subject, body, headers=hdrs or None)
            except (TimeoutError, NatsError) as err:
                translated = self._translate(err, subject)
                if isinstance(translated, Forbidden) or loop.time() + delay > deadline:
                    raise translated from err
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def publish_status(
        self, report: ReplicaStatusReport, *, msg_id: str | None = None
    ) -> bool:
        """Publish a replica's status; False if the server had it already (same msg id)."""
        ack = await self._publish(
            self.subjects.status(report.node),
            report.model_dump_json().encode(),
            msg_id or uuid.uuid4().hex,
        )
        return not ack.duplicate

    async def publish_heartbeat(self, hb: NodeHeartbeat, *, msg_id: str | None = None) -> bool:
        ack = await self._publish(
            self.subjects.heartbeat(hb.node),
            hb.model_dump_json().encode(),
            msg_id or f"hb.{hb.node}.{hb.time.timestamp()}",
        )
        return not ack.duplicate

    async def publish_event(self, event: AgentEvent, *, msg_id: str | None = None) -> bool:
        ack = await self._publish(
            self.subjects.events(event.node),
            event.model_dump_json().encode(),
            msg_id or uuid.uuid4().hex,
        )
        return not ack.duplicate

    async def publish_log(self, node: str, line: LogLine, *, msg_id: str | None = None) -> None:
        await self._publish(
            self.subjects.logs(node, line.replica_id),
            line.model_dump_json().encode(),
            msg_id or f"log.{line.replica_id}.{line.time.timestamp()}.{line.seq}",
        )

    # -- consuming (control plane) ----------------------------------------------------------------
    async def hear_heartbeats(self, heard: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``heard(node)`` as each node's heartbeat is published: a plain subscription
        beside the durable consumer, which handles what the heartbeats say later. Liveness
        is then judged from their arrival, not from when a backlog reaches them (which
        turned busy nodes NotReady). Returns what ends the subscription."""
        prefix = self.subjects.heartbeat("")

        async def deliver(msg: Msg) -> None:
            heard(msg.subject[len(prefix) :])

        try:
            sub = await self.nc.subscribe(self.subjects.heartbeat("*"), cb=deliver)
        except NatsError as err:
            raise self._translate(err, self.subjects.heartbeat("*")) from err
        return sub.unsubscribe

    async def consume_status(
        self,
        durable: str,
        handler: StatusHandler,
        *,
        stop: asyncio.Event,
        batch: int = 64,
        ack_wait: float = 30.0,
        many: ManyHandler | None = None,
    ) -> None:
        """Feed every status, heartbeat and event to ``handler`` until ``stop`` is set.

        A message is acknowledged only once ``handler`` returned; one it raised on is
        redelivered (after ``TemporaryError.delay``), one it refused with
        ``PermanentError`` or that cannot be parsed is terminated and logged.

        With ``many``, each batch fetched goes to it whole, in order (so that it can write
        what they change together), and is acknowledged when it returns; if it raises, the
        batch goes to ``handler`` one message at a time as above.
        """
        stream = self.subjects.status_stream
        try:
            await self.js.add_consumer(
                stream,
                config=api.ConsumerConfig(
                    durable_name=durable,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=ack_wait,
                    max_deliver=-1,
                    # fixed, not from ``batch``: a durable consumer keeps its first config,
                    # and one asked for again with another is refused
                    max_ack_pending=MAX_ACK_PENDING,
                ),
            )
            psub = await self.js.pull_subscribe_bind(durable, stream)
        except (TimeoutError, NatsError) as err:
            raise self._translate(err, f"$JS.API.CONSUMER.CREATE.{stream}") from err
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(batch, timeout=1.0)
                except (NatsTimeout, TimeoutError):
                    continue
                except NatsError as err:
                    log.warning("status consumer %s: %s; retrying", durable, err)
                    await asyncio.sleep(0.5)
                    continue
                if many is not None and len(msgs) > 1 and not stop.is_set():
                    await self._deliver_many(msgs, handler, many)
                    continue
                for i, msg in enumerate(msgs):
                    if stop.is_set():
                        for rest in msgs[i:]:
                            with contextlib.suppress(NatsError):
                                await rest.nak()
                        break
                    await self._deliver(msg, handler)
        finally:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await psub.unsubscribe()

    async def _deliver_many(
        self, msgs: list[Msg], handler: StatusHandler, many: ManyHandler
    ) -> None:
        parsed: list[tuple[Msg, Any]] = []
        for msg in msgs:
            model = _KINDS.get(self.subjects.kind_of(msg.subject))
            try:
                if model is None:
                    raise PermanentError(f"unknown status subject {msg.subject}")
                parsed.append((msg, model.model_validate_json(msg.data)))
            except (PermanentError, ValidationError) as err:
                log.error("status message on %s refused: %s", msg.subject, err)
                await msg.term()
        try:
            await many([obj for _, obj in parsed])
        except Exception:
            log.warning("a batch of %d status messages failed; one by one", len(parsed))
            for msg, _ in parsed:
                await self._deliver(msg, handler)
            return
        await asyncio.gather(*(msg.ack_sync() for msg, _ in parsed))

    async def _deliver(self, msg: Msg, handler: StatusHandler) -> None:
        kind = self.subjects.kind_of(msg.subject)
        model = _KINDS.get(kind)
        try:
            if model is None:
                raise PermanentError(f"unknown status subject {msg.subject}")
            obj: Any = model.model_validate_json(msg.data)
            await handler(obj)
        except (PermanentError, ValidationError) as err:
            log.error("status message on %s refused: %s", msg.subject, err)
            await msg.term()
            return
        except TemporaryError as err:
            await msg.nak(delay=err.delay)
            return
        except Exception:
            log.exception("status handler failed on %s; redelivering", msg.subject)
            await msg.nak(delay=1.0)
            return
        await msg.ack_sync()

    # -- logs ----------------------------------------
    async def read_logs(
        self,
        replica_id_prefix: str,
        *,
        since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[LogLine]:
        """Log lines of a replica or of every replica under a prefix (``team.env.app``)."""
        filt = self.subjects.logs_filter(replica_id_prefix)
        policy = api.DeliverPolicy.BY_START_TIME if since else api.DeliverPolicy.ALL
        config = api.ConsumerConfig(opt_start_time=since)
        try:
            sub = await self.js.subscribe(
                filt,
                stream=self.subjects.logs_stream,
                ordered_consumer=True,
                deliver_policy=policy,
                config=config,
            )
        except (TimeoutError, NatsError) as err:
            raise self._translate(err, filt) from err
        try:
            if not follow:
                info = await sub.consumer_info()
                delivered = info.delivered.consumer_seq if info.delivered else 0
                if info.num_pending == 0 and not delivered:
                    return
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0 if follow else 10.0)
                except (NatsTimeout, TimeoutError):
                    if follow:
                        continue
                    return
                with contextlib.suppress(ValidationError):
                    yield LogLine.model_validate_json(msg.data)
                if not follow and msg.metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await sub.unsubscribe()

"""The control plane's side of the hosts: the Message Office, node joins, logs.

``HostServices`` owns what connects the control plane to its agents: the embedded
``nats-server`` (or a connection to an existing NATS cluster), the workload controller
that writes each node's desired state to the KV bucket, and the durable consumer that
feeds status, heartbeats and events back to it. Its routes let an agent join with a node
token and let ``kled logs`` read an app's log lines from the Message Office.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import UserInfo
from kled.api import authz, openapi
from kled.api.mesh import MeshServices
from kled.api.observability import AGENT_MESSAGES
from kled.api.rest import User, _body, service
from kled.api.service import ADMIN, Service, parse_duration
from kled.bus.embedded import EmbeddedNats
from kled.bus.office import ConnectOptions, MessageOffice, StatusMessage
from kled.control.usage import UsageBook
from kled.control.workloads import DesiredStateSink, WorkloadController
from kled.control.workspaces import WorkspaceController, WorkspaceSink
from kled.errors import Forbidden, InvalidInput, Unauthorized, Unavailable
from kled.resources import clusterservices
from kled.resources.hoststate import (
    AgentEvent,
    HostDesiredState,
    NodeHeartbeat,
    ReplicaStatusReport,
)
from kled.resources.meta import is_dns_label
from kled.resources.registry import kind_info
from kled.resources.workspacestate import parse_workspace_id
from kled.settings import ServerSettings
from kled.store.credentials import Credentials
from kled.store.follow import follow_events
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)
CONSUMER = "kled-control-plane"


def _read_port(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class _OfficeSink:
    def __init__(self, office: MessageOffice) -> None:
        self.office = office

    async def put(self, node: str, state: HostDesiredState) -> None:
        await self.office.put_desired(node, state)


class HostServices:
    def __init__(
        self, settings: ServerSettings, svc: Service, mesh: MeshServices | None = None
    ) -> None:
        self.settings = settings
        self.mesh = mesh
        self.service = svc
        self.store: Store = svc.store
        self.credentials: Credentials = svc.credentials
        self.embedded: EmbeddedNats | None = None
        self.office: MessageOffice | None = None
        self.workloads: WorkloadController | None = None
        self.workspaces: WorkspaceController | None = None
        #: the latest usage of every replica and node, from heartbeats (never stored)
        self.usage = UsageBook()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.settings.embedded_nats or bool(self.settings.nats_url)

    async def start(self) -> None:
        s = self.settings
        if not self.enabled:
            return
        if s.embedded_nats:
            host, _ = s.listen_address()
            port_file = s.data_dir / "nats" / "port"
            # Keep the port across restarts: registered agents remember the URL.
            port = s.nats_port or _read_port(port_file)
            self.embedded = await _start_nats(s.data_dir / "nats", host, port, bool(s.nats_port))
            port_file.write_text(f"{self.embedded.port}\n")
            options = ConnectOptions(
                url=self.embedded.url.replace("0.0.0.0", "127.0.0.1"),
                user=self.embedded.control_user,
                password=self.embedded.control_password,
                name="kled-control-plane",
            )
        else:
            options = ConnectOptions(
                url=str(s.nats_url),
                user=s.nats_user,
                password=s.nats_password,
                creds_file=s.nats_creds,
                tls_ca=s.nats_tls_ca,
                tls_cert=s.nats_tls_cert,
                tls_key=s.nats_tls_key,
                name="kled-control-plane",
            )
        self.office = MessageOffice(options)
        await self.office.connect()
        await self.office.ensure_streams()
        sink: DesiredStateSink = _OfficeSink(self.office)
        if self.mesh is not None:
            sink = self.mesh.compose(sink)  # each host's state also carries its network
            await self.mesh.attach_peers(self.office)  # and its peers, one key each
        workspace_sink = WorkspaceSink(sink)  # and its workspaces
        self.workspaces = WorkspaceController(self.store, workspace_sink)
        await self.workspaces.start()
        self.workloads = WorkloadController(
            self.store,
            workspace_sink,
            not_ready_after=s.node_not_ready_seconds,
            reschedule_after=s.node_reschedule_seconds,
        )
        await self.workloads.start()
        self._tasks.append(asyncio.create_task(self._consume(), name="status-consumer"))
        self._tasks.append(asyncio.create_task(self._hear(), name="heartbeat-listener"))
        self._tasks.append(self.follow_nodes(await self.store.revision()))
        if self.embedded is not None:
            self._tasks.append(asyncio.create_task(self._supervise_nats(), name="nats-watch"))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.workloads is not None:
            await self.workloads.stop()
        if self.workspaces is not None:
            await self.workspaces.stop()
        if self.office is not None:
            await self.office.close()
        if self.embedded is not None:
            await self.embedded.stop()

    async def _supervise_nats(self) -> None:
        """Start the embedded nats-server again, on its port and storage, if it dies."""
        assert self.embedded is not None
        delay = 0.5
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            if self.embedded.running or self._stop.is_set():
                delay = 0.5
                continue
            log.warning("nats-server %s exited; starting it again", self.embedded.url)
            try:
                await self.embedded.start()
            except Exception as e:  # keep trying: agents and controllers wait for it
                log.error("nats-server did not start again: %s; retrying in %.0fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _hear(self) -> None:
        """Liveness from each heartbeat's arrival (``WorkloadController.heard``), kept
        subscribed across the Message Office's reconnects."""
        assert self.office is not None and self.workloads is not None
        while not self._stop.is_set():
            try:
                end = await self.office.hear_heartbeats(self.workloads.heard)
            except (Unavailable, Forbidden) as e:
                log.warning("heartbeat listener: %s; retrying", e)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await end()

    async def _consume(self) -> None:
        assert self.office is not None and self.workloads is not None
        workloads = self.workloads

        async def handle(message: StatusMessage) -> None:
            if isinstance(message, NodeHeartbeat):
                self.usage.record(message)
                await workloads.on_heartbeat(message)
                kind = "heartbeat"
            elif isinstance(message, AgentEvent):
                await workloads.on_event(message)
                kind = "event"
            elif self.workspaces is not None and parse_workspace_id(message.replica.id):
                await self.workspaces.on_status(message.node, message.replica)
                kind = "status"
            else:
                await workloads.on_replica_status(message)
                kind = "status"
            AGENT_MESSAGES.labels(kind).inc()

        async def handle_many(messages: list[StatusMessage]) -> None:
            """Messages fetched together: apps' replica reports and events, each app's
            status written once for them all (a burst of starts is a few transactions);
            a run of heartbeats, one round of scheduling for them all."""
            reports: list[ReplicaStatusReport] = []
            events: list[AgentEvent] = []
            beats: list[NodeHeartbeat] = []
            for message in [*messages, None]:
                if isinstance(message, NodeHeartbeat) and not (reports or events):
                    beats.append(message)
                    continue
                if beats:  # in order: what came before goes first
                    for hb in beats:
                        self.usage.record(hb)
                    await workloads.on_heartbeats(beats)
                    AGENT_MESSAGES.labels("heartbeat").inc(len(beats))
                    beats = []
                if isinstance(message, AgentEvent):
                    events.append(message)
                elif isinstance(message, ReplicaStatusReport) and not (
                    self.workspaces is not None and parse_workspace_id(message.replica.id)
                ):
                    reports.append(message)
                else:
                    if reports or events:
                        await workloads.on_replica_batch(reports, events)
                        AGENT_MESSAGES.labels("status").inc(len(reports))
                        AGENT_MESSAGES.labels("event").inc(len(events))
                        reports, events = [], []
                    if isinstance(message, NodeHeartbeat):
                        beats.append(message)
                    elif message is not None:
                        await handle(message)

        while not self._stop.is_set():
            try:
                # big batches: each is one round of scheduling however many heartbeats
                await self.office.consume_status(
                    CONSUMER, handle, stop=self._stop, many=handle_many, batch=256
                )
            except Unavailable as e:
                log.warning("status consumer: %s; retrying", e)
                await asyncio.sleep(1)

    def follow_nodes(self, after: int) -> asyncio.Task[None]:
        """The node feed, from ``after``: a deleted node's credentials and state go."""
        return asyncio.create_task(
            follow_events(
                self.store, after, self._node_event, what="node feed", resync=self.resync_nodes
            ),
            name="node-feed",
        )

    async def resync_nodes(self) -> int:
        """After the feed's events were compacted: forget every node this replica knows
        (credentials, usage) that is no longer stored; the revision to go on from."""
        now = await self.store.revision()
        stored = {str(d["metadata"]["name"]) for d in (await self.store.list("Node")).items}
        known = set(self.usage.node_names())
        if self.embedded is not None:
            known |= set(self.embedded.node_names())
        for node in sorted(known - stored):
            log.info("node/%s was deleted while the node feed was behind; forgetting it", node)
            await self._forget_node(node)
        return now

    async def _node_event(self, event: Event) -> None:
        """A deleted node loses its NATS credentials and its desired state."""
        if event.kind == "Node" and event.type == "DELETED":
            await self._forget_node(event.name)

    async def _forget_node(self, node: str) -> None:
        self.usage.forget(node)
        if self.embedded is not None:
            await self.embedded.remove_node(node)
        if self.office is not None:
            with contextlib.suppress(Exception):
                await self.office.delete_desired(node)

    # ---- joining ---------------------------------------------------------------------

    async def register(self, body: dict[str, Any], client_host: str | None, via_host: str) -> Any:
        secret = body.get("token")
        if not isinstance(secret, str) or not secret:
            raise InvalidInput("a node token is required", field="token")
        cred = await self.credentials.lookup(secret)
        if cred is None or cred.purpose != "join" or not cred.usable():
            raise Unauthorized("unknown, expired or revoked node token")
        if self.office is None:
            raise Unavailable(
                "this server has no Message Office: start it with --embedded-nats or --nats URL"
            )
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidInput("a node name is required", field="name")
        if not is_dns_label(name):
            raise InvalidInput(
                f"{name!r} must be a DNS label (lowercase letters, digits and '-')", field="name"
            )
        labels = body.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidInput("must be an object of strings", field="labels")
        # a node reserved for a Kled Cluster is one that joined with its token (kube/nodes.py)
        labels = {k: v for k, v in labels.items() if k != clusterservices.CLUSTER_LABEL}
        if cred.team and cred.name.startswith("cluster:"):
            cluster = cred.name.split(":")[1]
            if await self.store.find(Key("Cluster", cred.team, "", cluster)) is None:
                raise Unauthorized(f"the token's cluster {cred.team}/{cluster} no longer exists")
            labels[clusterservices.CLUSTER_LABEL] = clusterservices.reserved_for(cred.team, cluster)
        spec: dict[str, Any] = {}
        existing = await self.store.find(Key("Node", "", "", name))
        if existing is not None:
            spec.update(existing.get("spec") or {})
        spec["address"] = body.get("address") or client_host or "127.0.0.1"
        node = {
            "apiVersion": "kled.io/v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {str(k): str(v) for k, v in labels.items()}},
            "spec": spec,
        }
        await self.service.apply(ADMIN, node)
        if self.embedded is not None:
            creds = await self.embedded.add_node(name)
            url = self.settings.nats_advertise or f"nats://{via_host}:{self.embedded.port}"
            user, password = creds.user, creds.password
        else:
            url = self.settings.nats_advertise or str(self.settings.nats_url)
            user, password = self.settings.nats_user or "", self.settings.nats_password or ""
        log.info("node/%s joined from %s", name, client_host or "-")
        return {"node": name, "nats_url": url, "nats_user": user, "nats_password": password}


router = APIRouter(prefix="/api/v1")


def _hosts(request: Request) -> HostServices:
    hosts: HostServices = request.app.state.hosts
    return hosts


@router.post(
    "/nodes/register",
    summary="An agent joins with a join token and learns where the Message Office is",
    openapi_extra=openapi.json_body(
        {
            "type": "object",
            "required": ["token", "name"],
            "properties": {
                "token": {"type": "string"},
                "name": {"type": "string"},
                "address": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    ),
)
async def register_node(request: Request) -> Response:
    body = await _body(request)
    client = request.client.host if request.client else None
    via = request.url.hostname or "127.0.0.1"
    if via in ("localhost", "kled"):  # the Unix socket's placeholder host
        via = "127.0.0.1"
    return JSONResponse(await _hosts(request).register(body, client, via))


@router.post(
    "/node-tokens",
    status_code=201,
    summary="A join token for a new node (server administrator only)",
    openapi_extra=openapi.json_body({"type": "object", "properties": {"ttl": {"type": "string"}}}),
)
async def create_node_token(request: Request, user: UserInfo = User) -> Response:
    if not user.server_admin:
        raise Forbidden("only the server administrator may create node tokens")
    body = await _body(request)
    ttl = body.get("ttl") or "1h"
    expires = datetime.now(UTC) + parse_duration(str(ttl), "ttl")
    # unique even for tokens made in the same millisecond (the credential's name is)
    name = f"join-{int(datetime.now(UTC).timestamp() * 1000)}-{secrets.token_hex(4)}"
    secret = await _hosts(request).credentials.issue(
        purpose="join", team="", name=name, username="node", expires_at=expires, prefix="kledjoin"
    )
    return JSONResponse(
        {"token": secret, "expiresAt": expires.isoformat().replace("+00:00", "Z")},
        status_code=201,
    )


@router.get(
    "/teams/{team}/environments/{env}/apps/{name}/logs",
    tags=["App"],
    responses=openapi.stream("application/x-ndjson", "log lines, one JSON object a line"),
)
async def app_logs(
    request: Request,
    team: str,
    env: str,
    name: str,
    user: UserInfo = User,
    follow: bool = False,
    since: str | None = None,
    replica: int | None = None,
) -> Response:
    """An app's log lines as JSON lines: {"replica", "stream", "line", "time"}."""
    svc = service(request)
    authz.authorize(user, "get", kind_info("App"), team, f"app/{team}/{env}/{name}")
    await svc.get(user, Key("App", team, env, name))
    office = _hosts(request).office
    if office is None:
        raise Unavailable("this server has no Message Office: no logs to read")
    start = None
    if since:
        start = datetime.now(UTC) - parse_duration(since, "since")
    prefix = f"{team}.{env}.{name}" + (f".{replica}" if replica is not None else "")

    async def lines() -> AsyncIterator[bytes]:
        async for line in office.read_logs(prefix, since=start, follow=follow):
            index = line.replica_id.rsplit(".", 1)[-1]
            yield (
                json.dumps(
                    {
                        "replica": int(index) if index.isdigit() else index,
                        "stream": line.stream,
                        "line": line.line,
                        "time": line.time.isoformat().replace("+00:00", "Z"),
                    }
                )
                + "\n"
            ).encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _start_nats(data_dir: Path, host: str, port: int | None, fixed: bool) -> EmbeddedNats:
    """The embedded nats-server on ``port``, or, unless the port was asked for, on a free
    one: a port picked free can be taken by another process before nats-server binds it,
    and a port kept from an earlier start can be taken since."""
    tries = 3
    while True:
        embedded = EmbeddedNats(data_dir, host=host, port=port)
        try:
            await embedded.start()
            return embedded
        except Unavailable:
            tries -= 1
            if fixed or not tries:
                raise
            await embedded.stop()
            log.warning("nats-server: port %s is taken now; using a free one", embedded.port)
            port = None

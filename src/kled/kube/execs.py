"""``kubectl exec``: the pods/exec WebSocket of Kled Clusters, relayed to the replica's agent.

kubectl 1.30 and later speak Kubernetes' WebSocket exec protocol (subprotocols
``v5.channel.k8s.io``, ``v4.channel.k8s.io``): binary messages whose first byte is the
channel — 0 stdin, 1 stdout, 2 stderr, 3 the end as a ``Status`` (``NonZeroExitCode`` with
the code in ``details.causes``), 4 terminal resizes, 255 the end of a stream (v5). Kled's own
exec door (``kled.api.exec_stream``) uses the same channels, so the agent side is shared:
the stream travels the Message Office (``ExecLink``) to the agent that runs the Pod's App
replica. kubectl before 1.30 (SPDY only) is served by ``kled.kube.execspdy``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from kled.api.exec_stream import _relay, pick_replica
from kled.api.service import Service
from kled.bus.exec_link import ExecLink
from kled.errors import KledError
from kled.kube import access, containers, workloads
from kled.kube.barepods import APP_ANNOTATION
from kled.kube.served import by_kind
from kled.kube.status import KubeError, not_found
from kled.resources.hoststate import replica_id
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter()
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
POD = by_kind("v1", "Pod")
ERROR = 3


def end_status(result: dict[str, Any]) -> dict[str, Any]:
    """The ``Status`` that ends an exec: ``{"exitCode": N}`` or ``{"error": "…"}``."""
    code = result.get("exitCode")
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if isinstance(code, int):
        return {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    return {"metadata": {}, "status": "Failure", "message": str(result.get("error"))}


async def _end(ws: WebSocket, result: dict[str, Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_bytes(bytes([ERROR]) + json.dumps(end_status(result)).encode())
        await ws.close(1000)


async def _refuse(ws: WebSocket, err: KubeError) -> None:
    from fastapi.responses import JSONResponse

    with contextlib.suppress(RuntimeError):
        await ws.send_denial_response(JSONResponse(err.body(), err.code))


@router.websocket("/k8s/{team}/{cluster}/api/v1/namespaces/{namespace}/pods/{name}/exec")
async def pod_exec(ws: WebSocket, team: str, cluster: str, namespace: str, name: str) -> None:
    svc: Service = ws.app.state.service
    try:
        target = await _target(ws, svc, team, cluster, namespace, name)
    except KubeError as err:
        await _refuse(ws, err)
        return
    except KledError as err:
        await _refuse(ws, KubeError(err.status, err.reason, err.message))
        return
    node, rid, command, link, container = target
    offered = [p.strip() for p in (ws.headers.get("sec-websocket-protocol") or "").split(",")]
    chosen = next((p for p in PROTOCOLS if p in offered), None)
    await ws.accept(subprotocol=chosen)
    log.info("kube exec replica=%s node=%s argv0=%s", rid, node, command[0])
    try:
        await _relay(ws, link, rid, command, end=_end, container=container)
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()


async def _target(
    ws: WebSocket, svc: Service, team: str, cluster: str, namespace: str, name: str
) -> tuple[str, str, list[str], ExecLink, str | None]:
    place = await locate(svc, ws.headers.get("authorization"), team, cluster, namespace, name)
    command = ws.query_params.getlist("command")
    if not command:
        raise KubeError(400, "BadRequest", "you must specify at least one command")
    container = containers.sidecar_of(place.pod, ws.query_params.get("container"))
    link = await open_link(ws.app.state, place.node)
    return place.node, place.replica, command, link, container


@dataclass(frozen=True)
class Place:
    """Where a Pod of a Kled Cluster runs: its App replica and the node of its agent."""

    pod: dict[str, Any]
    node: str
    replica: str


async def locate(
    svc: Service,
    authorization: str | None,
    team: str,
    cluster: str,
    namespace: str,
    name: str,
    subresource: str = "exec",
) -> Place:
    """The replica behind pod ``name``, for a caller who may write pods (``pods/exec``
    and ``pods/portforward`` need the role that writes pods, as in Kubernetes)."""
    header = authorization or ""
    secret = header[7:].strip() if header.lower().startswith("bearer ") else None
    doc = await svc.store.find(Key("Cluster", team, "", cluster))
    caller = await access.identify(svc, team, cluster, (doc or {}).get("spec") or {}, secret)
    if doc is None:
        raise not_found("clusters", cluster, "kled.io")
    assert POD is not None
    if not access.allowed(caller.role, "create", POD):
        raise KubeError(
            403,
            "Forbidden",
            f'pods "{name}" is forbidden: User "{caller.name}" cannot create resource '
            f'"pods/{subresource}" in API group "" in the namespace "{namespace}"',
            details={"name": name, "kind": "pods"},
        )
    from kled.kube.objects import ClusterObjects

    pod = await ClusterObjects(svc.store, team, cluster).find(POD, namespace, name)
    owners = (pod or {}).get("metadata", {}).get("ownerReferences") or []
    owner = next((o for o in owners if o.get("kind") == "Deployment"), None)
    # a bare Pod (or a Job's) names its App, whose replica 0 it is
    named = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(APP_ANNOTATION)
    if pod is None or (owner is None and named is None):
        raise not_found("pods", name)
    env = workloads.environment_name(cluster, namespace)
    app = str(named) if named else workloads.app_name(str((owner or {}).get("name")))
    app_doc = await svc.store.get(Key("App", team, env, app))
    index = 0 if named else int(name.rsplit("-", 1)[-1])
    index, node = pick_replica(app_doc, index, f"pod/{name}")
    return Place(pod, node, replica_id(team, env, app, index))


async def open_link(state: Any, node: str) -> ExecLink:
    """A new exec stream to the agent of ``node``."""
    office = getattr(getattr(state, "hosts", None), "office", None)
    if office is None:
        raise KubeError(503, "ServiceUnavailable", "this server has no agent to exec through")
    session = uuid.uuid4().hex
    link = ExecLink(
        office, office.subjects.exec_in(node, session), office.subjects.exec_out(node, session)
    )
    await link.open()
    return link

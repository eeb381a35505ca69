"""``kubectl exec``: the pods/exec WebSocket of Kled Clusters, relayed to the replica's agent.

kubectl 1.30 and later speak Kubernetes' WebSocket exec protocol (subprotocols
``v5.channel.k8s.io``, ``v4.channel.k8s.io``): binary messages whose first byte is the
channel — 0 stdin, 1 stdout, 2 stderr, 3 the end as a ``Status`` (``NonZeroExitCode`` with
the code in ``details.causes``), 4 terminal resizes, 255 the end of a stream (v5). Kled's own
exec door (``kled.api.exec_stream``) uses the same channels, so the agent side is shared:
the stream travels the Message Office (``ExecLink``) to the agent that runs the Pod's App
replica. Older kubectl (SPDY only) is not served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from kled.api.exec_stream import _relay, pick_replica
from kled.api.service import Service
from kled.bus.exec_link import ExecLink
from kled.errors import KledError
from kled.kube import access, workloads
from kled.kube.served import by_kind
from kled.kube.status import KubeError, not_found
from kled.resources.hoststate import replica_id
from kled.store.objects import Key

log = logging.getLogger(__name__)
router = APIRouter()
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
POD = by_kind("v1", "Pod")
ERROR = 3


def _end_status(result: dict[str, Any]) -> dict[str, Any]:
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
        await ws.send_bytes(bytes([ERROR]) + json.dumps(_end_status(result)).encode())
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
    node, rid, command, link = target
    offered = [p.strip() for p in (ws.headers.get("sec-websocket-protocol") or "").split(",")]
    chosen = next((p for p in PROTOCOLS if p in offered), None)
    await ws.accept(subprotocol=chosen)
    log.info("kube exec replica=%s node=%s argv0=%s", rid, node, command[0])
    try:
        await _relay(ws, link, rid, command, end=_end)
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()


async def _target(
    ws: WebSocket, svc: Service, team: str, cluster: str, namespace: str, name: str
) -> tuple[str, str, list[str], ExecLink]:
    header = ws.headers.get("authorization") or ""
    secret = header[7:].strip() if header.lower().startswith("bearer ") else None
    doc = await svc.store.find(Key("Cluster", team, "", cluster))
    caller = await access.identify(svc, team, cluster, (doc or {}).get("spec") or {}, secret)
    if doc is None:
        raise not_found("clusters", cluster, "kled.io")
    assert POD is not None
    access.authorize(caller, "create", POD, namespace)  # pods/exec: who may write pods
    from kled.kube.objects import ClusterObjects

    pod = await ClusterObjects(svc.store, team, cluster).find(POD, namespace, name)
    owners = (pod or {}).get("metadata", {}).get("ownerReferences") or []
    owner = next((o for o in owners if o.get("kind") == "Deployment"), None)
    if pod is None or owner is None:
        raise not_found("pods", name)
    command = ws.query_params.getlist("command")
    if not command:
        raise KubeError(400, "BadRequest", "you must specify at least one command")
    env = workloads.environment_name(cluster, namespace)
    app = workloads.app_name(str(owner["name"]))
    app_doc = await svc.store.get(Key("App", team, env, app))
    index = int(name.rsplit("-", 1)[-1])
    index, node = pick_replica(app_doc, index, f"pod/{name}")
    office = getattr(getattr(ws.app.state, "hosts", None), "office", None)
    if office is None:
        raise KubeError(503, "ServiceUnavailable", "this server has no agent to exec through")
    session = uuid.uuid4().hex
    link = ExecLink(
        office, office.subjects.exec_in(node, session), office.subjects.exec_out(node, session)
    )
    await link.open()
    return node, replica_id(team, env, app, index), command, link

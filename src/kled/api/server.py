"""The control plane process: open the store, bootstrap, serve TCP and a Unix socket.

``ControlPlane`` wires the parts together and owns their lifetimes; ``kled server`` and
``kled up`` (and the integration tests) start it. The API is served by one uvicorn server
on two sockets — TCP for everyone, the Unix socket for local CLIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from kled.admission.chain import AdmissionChain
from kled.admission.policy import PolicyEngine, compile_check
from kled.api import device_feed, exec_stream, hosts, intercepts, mesh, policies, usage
from kled.api import workspaces as workspace_sources
from kled.api.app import create_app
from kled.api.dev_sessions import DevSessions
from kled.api.dev_sessions import router as dev_router
from kled.api.gitops import router as gitops_router
from kled.api.gitsync import GitOps
from kled.api.hosts import HostServices
from kled.api.intercepts import InterceptServices
from kled.api.managed import ManagedServices
from kled.api.managed import router as managed_router
from kled.api.mesh import MeshServices
from kled.api.policies import DatabaseViolationSink, PolicyFeed, StorePolicySource, StoreReader
from kled.api.service import Service
from kled.control.leadership import Leadership
from kled.resources.kinds import validate
from kled.settings import ServerSettings
from kled.store.cipher import SecretCipher
from kled.store.compaction import Compactor
from kled.store.credentials import ADMIN_USER, Credentials
from kled.store.database import Database
from kled.store.lease import lease_for
from kled.store.notices import RevisionNotices
from kled.store.objects import Store
from kled.store.violations import ViolationLog

log = logging.getLogger(__name__)


def validate_resource(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema validation, and for a Policy, that its script parses (line and column)."""
    valid = validate(doc)
    if valid.get("kind") == "Policy":
        compile_check(str((valid.get("spec") or {}).get("javascript") or ""))
    return valid


class ControlPlane:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.kube: Any = None  # the HTTPS listener of Kled Clusters (kled.kube.listener)
        self.db: Database | None = None
        self.service: Service | None = None
        self.admin_token: str | None = None  # set only on the first start
        self.server: uvicorn.Server | None = None
        self._sockets: list[socket.socket] = []
        self.policy_engine: PolicyEngine | None = None
        self.policy_feed: PolicyFeed | None = None
        self.violations: DatabaseViolationSink | None = None
        self.hosts: HostServices | None = None
        self.mesh: MeshServices | None = None
        self.dev: DevSessions | None = None
        self.gitops: GitOps | None = None
        self.leadership: Leadership | None = None
        self.kube_mirror: Any = None  # kled.kube.mirror (a controller: on the leader only)
        self.notices: RevisionNotices | None = None
        #: why this replica stopped by itself (it lost the controllers' lease)
        self.lost_lease: str | None = None
        #: open() returns once the controllers started (False: they start meanwhile)
        self.wait_for_controllers = True

    async def open(self) -> Service:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.data_dir, 0o700)
        self.db = await Database.open(s.database_url())
        cipher = SecretCipher.from_data_dir(s.data_dir, s.secret_key)
        store = Store(self.db, cipher)
        if not self.db.is_sqlite:  # other replicas' writes wake this one's followers
            self.notices = RevisionNotices(s.database_url(), store._notify)
            await self.notices.start()
        if s.watch_cache:
            await store.open_cache()
        self.compactor = Compactor(store, s.keep_events, s.compact_seconds)
        credentials = Credentials(self.db)
        chain = AdmissionChain(validate_resource)
        self.service = Service(store, credentials, chain)
        await self._start_policies(store, chain)
        await self._bootstrap(credentials)
        self.mesh = MeshServices(s, self.service)
        self.hosts = HostServices(s, self.service, mesh=self.mesh)
        self.intercepts = InterceptServices(self.service)
        hosts = self.hosts
        self.dev = DevSessions(self.service, s.dev_grace_seconds, lambda: hosts.office)
        self.gitops = GitOps(self.service, s.data_dir / "gitops")
        self.managed = ManagedServices(self.service, lambda: hosts.office)
        # Their admission checks hold on every replica; their controllers run on one.
        for hook in (self.mesh.check_team, self.intercepts.admit, self.managed.admit):
            self.service.chain.add_validating(hook)
        self.leadership = Leadership(
            lease_for(s.database_url()), self._start_controllers, self._lost_lease
        )
        await self.leadership.begin(wait=self.wait_for_controllers)
        return self.service

    async def settled(self) -> None:
        """Until the controllers run here, or this replica found them on another one."""
        if self.leadership is not None:
            await self.leadership.settled.wait()

    async def _start_controllers(self) -> None:
        """On the replica that holds the controllers' lease (control/leadership.py)."""
        assert self.service and self.mesh and self.hosts and self.dev and self.gitops
        self.compactor.start()  # (each of these also stops cleanly if never started)
        await self.mesh.start()
        await self.hosts.start()
        await self.intercepts.start()
        await self.dev.start()
        await self.gitops.start()
        await self.managed.start()
        from kled.control.jobs import JobController

        self.jobs = JobController(self.service.store)  # each attempt of a Job is an App
        await self.jobs.start()
        from kled.kube.mirror import WorkloadMirror

        self.kube_mirror = WorkloadMirror(self.service)  # Deployments' Pods from their Apps
        await self.kube_mirror.start()

    def _lost_lease(self, why: str) -> None:
        log.error("this replica stops: %s", why)
        self.lost_lease = why
        self.stop()

    async def _start_policies(self, store: Store, chain: AdmissionChain) -> None:
        source = StorePolicySource(store)
        self.violations = DatabaseViolationSink(ViolationLog(store.db))
        self.policy_engine = PolicyEngine(source, StoreReader(store), self.violations)
        await self.policy_engine.start()
        chain.add_mutating(self.policy_engine.mutating_hook)
        chain.add_validating(self.policy_engine.validating_hook)
        self.policy_feed = PolicyFeed(store, self.policy_engine, source, self._audits)
        await self.policy_feed.start()

    def _audits(self) -> bool:
        """Controller policies run, and record, on the lease holder only."""
        return self.leadership is not None and self.leadership.leader

    async def _bootstrap(self, credentials: Credentials) -> None:
        """On the first start, issue the administrator's token and write it for scripts."""
        if await credentials.exists("api", ""):
            return
        token = await credentials.issue(
            purpose="api", team="", name="bootstrap", username=ADMIN_USER
        )
        path = self.settings.data_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.admin_token = token

    def bind(self) -> list[socket.socket]:
        host, port = self.settings.listen_address()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio turns on TCP_NODELAY only for sockets that say
        # so, and without it every response waits ~40 ms for a delayed ACK.
        tcp = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, port))
        path = self.settings.socket_path()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.stat().st_mode):
                path.unlink()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(path))
        os.chmod(path, 0o600)
        self._sockets = [tcp, unix]
        return self._sockets

    @property
    def bound(self) -> bool:
        """Whether ``bind()`` succeeded: this process serves the TCP port and the socket."""
        return len(self._sockets) == 2

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host, _ = self.settings.listen_address()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.port}"

    async def serve(self, on_ready: Callable[[], Any] | None = None) -> None:
        assert self.service is not None
        from kled.kube.listener import KubeListener

        host, port = self.settings.listen_address()
        self.kube = KubeListener(self.settings.data_dir, host, port)  # HTTPS for kubectl
        app = create_app(
            self.service,
            max_body=self.settings.max_body_bytes,
            extra_routers=[
                policies.router,
                hosts.router,
                exec_stream.router,
                dev_router,
                mesh.router,
                device_feed.router,
                intercepts.router,
                usage.router,
                managed_router,
                gitops_router,
                workspace_sources.router,
            ],
            state={
                "violations": self.violations,
                "hosts": self.hosts,
                "dev": self.dev,
                "mesh": self.mesh,
                "gitops": self.gitops,
                "kube": self.kube,
            },
        )
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self.server.should_exit = self.lost_lease is not None  # it stopped while opening
        sockets = self._sockets or self.bind()
        task = asyncio.create_task(self.server.serve(sockets=sockets))
        while not self.server.started and not task.done():
            await asyncio.sleep(0.02)
        await self.kube.start(app)
        if on_ready is not None and self.server.started:
            on_ready()
        await task
        self.kube.stop()
        await self.kube.wait()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.kube is not None:
            self.kube.stop()

    async def close(self) -> None:
        if self.leadership is not None:
            await self.leadership.halt()  # no controller starts while they are stopped
        if getattr(self, "jobs", None) is not None:
            await self.jobs.stop()
        if self.kube_mirror is not None:
            await self.kube_mirror.stop()
        if getattr(self, "managed", None) is not None:
            await self.managed.stop()
        if self.gitops is not None:
            await self.gitops.stop()
        if self.dev is not None:
            await self.dev.stop()
        if getattr(self, "intercepts", None) is not None:
            await self.intercepts.stop()
        if self.hosts is not None:
            await self.hosts.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        if self.policy_feed is not None:
            await self.policy_feed.stop()
        if self.policy_engine is not None:
            await self.policy_engine.close()
        if getattr(self, "compactor", None) is not None:
            await self.compactor.stop()
        if self.leadership is not None:
            await self.leadership.close()  # after the controllers: the lease is free now
        if self.service is not None:
            await self.service.store.close_cache()
        if self.notices is not None:
            await self.notices.stop()
        if self.db is not None:
            await self.db.close()
        if self.bound:
            # Only the socket this process bound: another server may own a stale path.
            with contextlib.suppress(FileNotFoundError):
                Path(self.settings.socket_path()).unlink()

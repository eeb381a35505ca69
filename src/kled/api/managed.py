"""Managed services on the API side: the admission check and the controller's lifetime.

A ManagedService is refused at the door when its template does not exist, its version is
not one the template provides or a parameter is unknown or out of bounds (the field path
in the error, ``resources/templates.py``); the controller (``control/managed.py``) then
keeps its server app, credentials Secret and status.
"""

from __future__ import annotations

from kled.admission.request import AdmissionRequest, HookResult, Operation
from kled.api.service import Service
from kled.control.managed import ManagedServiceController, find_template
from kled.resources.templates import check_service, template_spec
from kled.store.objects import Key


class ManagedServices:
    def __init__(self, svc: Service) -> None:
        self.service = svc
        self.controller = ManagedServiceController(svc.store)

    async def start(self) -> None:
        """The controller only: the server adds ``admit`` to the admission chain on every
        replica, and starts controllers on the one holding the lease."""
        await self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()

    async def admit(self, request: AdmissionRequest) -> HookResult:
        if request.kind != "ManagedService" or request.operation == Operation.DELETE:
            return HookResult()
        spec = (request.object or {}).get("spec") or {}
        name = str(spec.get("template") or "")
        stored = await self.service.store.find(Key("ServiceTemplate", "", "", name))
        found = find_template(name, stored)
        check_service(spec, template_spec(found) if found is not None else None)
        return HookResult()

"""The admission pipeline: schema validation → mutating hooks → validating hooks → store.

Hooks are registered once at start-up. kPolicy plugs in as one mutating and one validating
hook; other built-in checks can do the same. A denial stops the chain with ``Forbidden``
naming the policy; warnings from every hook are gathered for the API response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kled.admission.request import AdmissionRequest, HookResult
from kled.errors import Forbidden, KledError

Validator = Callable[[dict[str, Any]], dict[str, Any]]
Hook = Callable[[AdmissionRequest], Awaitable[HookResult]]


@dataclass
class Admitted:
    object: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


class AdmissionChain:
    def __init__(self, validate_schema: Validator) -> None:
        self._validate_schema = validate_schema
        self._mutating: list[Hook] = []
        self._validating: list[Hook] = []

    def add_mutating(self, hook: Hook) -> None:
        self._mutating.append(hook)

    def add_validating(self, hook: Hook) -> None:
        # once: a replica adds a controller's check before it wins the lease and starts it
        if hook not in self._validating:
            self._validating.append(hook)

    async def admit(self, request: AdmissionRequest) -> Admitted:
        """Run the chain; return the object to store, or raise InvalidInput/Forbidden."""
        warnings: list[str] = []
        if request.object is not None:
            request.object = self._validate_schema(request.object)
        for hook in self._mutating:
            result = await hook(request)
            warnings.extend(result.warnings)
            _raise_if_denied(result)
            if result.object is not None and request.object is not None:
                # A mutation must still be a valid resource of the same identity.
                request.object = self._validate_schema(result.object)
        for hook in self._validating:
            result = await hook(request)
            warnings.extend(result.warnings)
            _raise_if_denied(result)
        return Admitted(request.object, warnings)


def _raise_if_denied(result: HookResult) -> None:
    if result.allowed:
        return
    where = f" (policy {result.policy})" if result.policy else ""
    error: KledError = Forbidden(f"denied{where}: {result.message}", policy=result.policy)
    error.status = result.code if 400 <= result.code < 600 else 403
    raise error

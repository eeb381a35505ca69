"""kPolicy: JavaScript policies, run in QuickJS, that validate, mutate and audit resources.

The server builds one ``PolicyEngine`` and registers its ``mutating_hook`` and
``validating_hook`` on the admission chain; ``compile_check`` refuses a script that does
not parse; jsPolicy's ``JsPolicy`` manifests are translated into Kled's ``Policy`` on
load (the translator is registered here, on import).
"""

from __future__ import annotations

from kled.admission.policy.controller import AuditReport
from kled.admission.policy.engine import (
    Decision,
    EngineSettings,
    PolicyEngine,
    PolicySource,
    ResourceReader,
)
from kled.admission.policy.jspolicy import register as _register_jspolicy
from kled.admission.policy.jspolicy import translate_jspolicy
from kled.admission.policy.runtime import compile_check
from kled.admission.policy.violations import InMemoryViolationSink, Violation, ViolationSink

_register_jspolicy()

__all__ = [
    "AuditReport",
    "Decision",
    "EngineSettings",
    "InMemoryViolationSink",
    "PolicyEngine",
    "PolicySource",
    "ResourceReader",
    "Violation",
    "ViolationSink",
    "compile_check",
    "translate_jspolicy",
]

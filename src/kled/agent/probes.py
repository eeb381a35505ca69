"""What a replica's probe results mean: started, ready, or to be restarted.

A pure state machine, one per running replica (a new one for each start of it), fed the
result of each probe as it comes and answering with decisions; the async shell that runs
the checks on time lives in ``kled.agent.probing``. The rules are Kubernetes':

- a startup probe, while it has not passed, holds the other two back: the replica is
  neither ready nor judged alive; ``failureThreshold`` failures in a row restart it, one
  success marks it started for good (for this run);
- a readiness probe makes the replica ready after ``successThreshold`` successes in a row
  and not ready after ``failureThreshold`` failures in a row; before its first verdict the
  replica is not ready. Without one, a started replica is ready;
- a liveness probe restarts the replica after ``failureThreshold`` failures in a row;
- a stopping replica is not ready, whatever its probes say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from kled.resources.hoststate import ProbeSpec, ReplicaSpec


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class Restart:
    """The replica must be restarted; ``message`` says why, as events show it."""

    message: str


@dataclass
class _Streak:
    successes: int = 0
    failures: int = 0

    def add(self, ok: bool) -> None:
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1


@dataclass
class ProbeState:
    """The probes of one run of one replica."""

    readiness: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    startup: ProbeSpec | None = None
    started: bool = False
    #: the readiness probe's verdict (True without one); see ``ready``
    passing: bool = False
    stopping: bool = False
    #: set once a restart was decided; later results change nothing
    restart: Restart | None = None
    _streaks: dict[ProbeKind, _Streak] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: ReplicaSpec) -> ProbeState:
        state = cls(
            readiness=spec.readiness_probe,
            liveness=spec.liveness_probe,
            startup=spec.startup_probe,
        )
        state.started = spec.startup_probe is None
        state.passing = spec.readiness_probe is None
        return state

    @property
    def ready(self) -> bool:
        return self.started and self.passing and not self.stopping and self.restart is None

    def probe(self, kind: ProbeKind) -> ProbeSpec | None:
        return {
            ProbeKind.STARTUP: self.startup,
            ProbeKind.READINESS: self.readiness,
            ProbeKind.LIVENESS: self.liveness,
        }[kind]

    def active(self, kind: ProbeKind) -> bool:
        """Whether a probe of ``kind`` should run now."""
        if self.probe(kind) is None or self.restart is not None or self.stopping:
            return False
        if kind == ProbeKind.STARTUP:
            return not self.started
        return self.started

    def record(self, kind: ProbeKind, ok: bool, message: str = "") -> Restart | None:
        """Take one result; returns the restart decided by it, if any."""
        probe = self.probe(kind)
        if probe is None or not self.active(kind):
            return None  # a late result from a probe no longer in force
        streak = self._streaks.setdefault(kind, _Streak())
        streak.add(ok)
        match kind:
            case ProbeKind.STARTUP:
                if ok:
                    self.started = True
                    self._streaks.pop(kind, None)
                elif streak.failures >= probe.failure_threshold:
                    self.restart = Restart(f"Startup probe failed: {message}")
            case ProbeKind.READINESS:
                if ok and streak.successes >= probe.success_threshold:
                    self.passing = True
                elif not ok and streak.failures >= probe.failure_threshold:
                    self.passing = False
            case ProbeKind.LIVENESS:
                if not ok and streak.failures >= probe.failure_threshold:
                    self.restart = Restart(f"Liveness probe failed: {message}")
        return self.restart if kind != ProbeKind.READINESS else None

    def stop(self) -> None:
        """The replica is being stopped: not ready from now on, and no more probing."""
        self.stopping = True

"""The ``spec`` of a Job: a command run to completion, once or on a cron schedule.

What runs is written as an App's template is (``runtime``, ``command``, ``image``, ``env``,
``envFrom``, ``resources``, ``nodeSelector``); the rest is Kubernetes' Job and CronJob in
one kind, with the same names: ``backoffLimit``, ``activeDeadlineSeconds``,
``completions`` (only 1), ``schedule``, ``concurrencyPolicy``, ``suspend`` and the history
limits. The jobs controller (``control/jobs.py``) runs it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator, model_validator

from kled.errors import InvalidInput
from kled.resources.cron import parse as parse_schedule
from kled.resources.meta import (
    Bool,
    EnvVars,
    FieldEnv,
    KledModel,
    Labels,
    in_range,
    problem,
    range_schema,
)
from kled.resources.specs import EnvFromSource, Resources

_Limit = Annotated[int, Strict(), in_range(0, 100), range_schema(0, 100)]


class JobSpec(KledModel):
    runtime: Literal["process", "container"] = "process"
    command: list[str] = []
    args: list[str] = []
    working_dir: str | None = None
    image: str | None = None
    """Required for the container runtime."""
    env: EnvVars = {}
    field_env: FieldEnv = {}
    """Variables the agent sets where an attempt runs (as ``AppSpec.field_env``)."""
    env_from: list[EnvFromSource] = []
    resources: Resources = Field(default_factory=Resources)
    node_selector: Labels = {}
    backoff_limit: _Limit = 6
    """Retries after a failed attempt before the run is Failed (BackoffLimitExceeded)."""
    active_deadline_seconds: (
        Annotated[int, Strict(), in_range(1, 31_536_000), range_schema(1, 31_536_000)] | None
    ) = None
    """A run still going this long after it started is stopped and Failed (DeadlineExceeded)."""
    completions: Literal[1] = 1
    """Only one successful attempt per run (parallel completions are not supported)."""
    schedule: str | None = None
    """Cron (UTC): 5 fields, or 6 with a leading seconds field; without it the Job runs once."""
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Allow"
    """When a scheduled time comes while a run is going: start another, skip, or replace it."""
    suspend: Bool = False
    """No new scheduled runs while true (a going run goes on; ``run-now`` still runs)."""
    successful_jobs_history_limit: _Limit = 3
    failed_jobs_history_limit: _Limit = 1

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_schedule(value)
            except InvalidInput as e:
                raise problem(e.message) from None
        return value

    @field_validator("working_dir")
    @classmethod
    def _check_working_dir(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise problem("must be an absolute path like /srv/job")
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.runtime == "process" and not self.command:
            raise problem("required for the process runtime", at=("command",))
        if self.runtime == "container" and not self.image:
            raise problem("required for the container runtime", at=("image",))
        return self

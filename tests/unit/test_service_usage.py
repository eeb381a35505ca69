"""Managed services in the usage book: under their own name, not as their server app."""

from __future__ import annotations

from kled.control.usage import UsageBook
from kled.resources.hoststate import (
    Capacity,
    NodeHeartbeat,
    ReplicaState,
    ReplicaStatus,
    ReplicaUsage,
)

SERVICES = {("acme", "dev", "ms-db"): {"service": "db", "template": "postgres", "phase": "Ready"},
            ("acme", "dev", "ms-cache"): {"service": "cache", "template": "redis",
                                          "phase": "Provisioning"}}  # fmt: skip


def _book() -> UsageBook:
    book = UsageBook()
    used = ReplicaUsage(cpu_seconds=4.0, cpu_millicores=120, memory_bytes=64 << 20)
    statuses = [
        ReplicaStatus(id="acme.dev.ms-db.0", state=ReplicaState.RUNNING, restarts=1, ready=True),
        ReplicaStatus(id="acme.dev.api.0", state=ReplicaState.RUNNING, ready=True),
        ReplicaStatus(id="other.dev.ms-db.0", state=ReplicaState.RUNNING, ready=True),
    ]
    usage = {s.id: used for s in statuses}
    capacity = Capacity(cpu_millicores=2000, memory_bytes=4 << 30)
    book.record(NodeHeartbeat(node="n1", capacity=capacity, replicas=statuses, usage=usage))
    return book


def test_top_services_rows_and_apps_without_the_servers() -> None:
    book = _book()
    assert [r["app"] for r in book.apps("acme", services=SERVICES)] == ["api"]
    assert [r["app"] for r in book.apps("acme")] == ["api", "ms-db"]
    cache, db = book.services("acme", SERVICES)
    assert (db["service"], db["template"], db["phase"]) == ("db", "postgres", "Ready")
    assert (db["cpuMillicores"], db["memoryBytes"], db["restarts"]) == (120, 64 << 20, 1)
    assert db["nodes"] == ["n1"] and db["ready"] == 1
    # reports nothing yet: a row all the same, without numbers
    assert (cache["service"], cache["cpuMillicores"], cache["nodes"]) == ("cache", None, [])
    assert book.services("acme", SERVICES, "prod") == []
    assert book.services("other", SERVICES) == []


def test_service_series_carry_the_service_name_and_template() -> None:
    samples = _book().samples("acme", SERVICES)
    [(labels, memory)] = samples["kled_service_memory_bytes"]
    assert labels == {"team": "acme", "environment": "dev", "service": "db",
                      "template": "postgres", "node": "n1"}  # fmt: skip
    assert memory == float(64 << 20)
    assert [v for _, v in samples["kled_service_ready"]] == [1.0]
    assert [v for _, v in samples["kled_service_cpu_seconds_total"]] == [4.0]
    assert all(labels["app"] != "ms-db" for labels, _ in samples["kled_app_memory_bytes"])

"""A replica waiting for its image is reported as kubelet reports it: a Warning
``ImagePullBackOff`` event with the runtime's words, once per change of its status."""

from __future__ import annotations

from kled.agent.agent import _event_for
from kled.resources.hoststate import EventType, ReplicaState, ReplicaStatus


def test_a_replica_waiting_for_its_image_is_a_warning_event() -> None:
    waiting = ReplicaStatus(
        id="acme.dev.web.0",
        state=ReplicaState.STARTING,
        reason="ImagePullBackOff",
        message="image 'localhost/web:2' is not on the node; trying again in 4s",
    )
    event = _event_for("node1", waiting)
    assert event is not None
    assert (event.type, event.reason) == (EventType.WARNING, "ImagePullBackOff")
    assert event.message == waiting.message


def test_a_replica_starting_for_the_first_time_is_no_event() -> None:
    assert (
        _event_for("node1", ReplicaStatus(id="acme.dev.web.0", state=ReplicaState.STARTING)) is None
    )

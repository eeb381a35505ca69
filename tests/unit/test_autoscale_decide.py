"""The autoscaler's arithmetic and its stabilisation window, as state transitions."""

from __future__ import annotations

from kled.control.autoscale import (
    History,
    Target,
    decide,
    recommend,
    target_of,
    utilization,
    wanted_replicas,
)

T = Target(min_replicas=1, max_replicas=5, cpu_percent=50, request_millicores=200,
           window_seconds=60)  # fmt: skip


def test_utilization_is_the_mean_share_of_the_request() -> None:
    assert utilization([100, 300], 200) == 100
    assert utilization([], 200) is None


def test_recommend_as_the_hpa_does() -> None:
    assert recommend(2, [200, 200], T) == 4  # 100 % against 50 %: twice as many
    assert recommend(2, [100, 104], T) == 2  # within 10 % of the target: as is
    assert recommend(4, [10, 10, 10, 10], T) == 1  # 5 %: down to the minimum
    assert recommend(2, [2000, 2000], T) == 5  # up to the maximum
    assert recommend(3, [], T) == 3  # nothing measured: as is


def test_scale_up_at_once_scale_down_after_the_window() -> None:
    history = History()
    now, history = decide(2, 4, history, 0.0, T)
    assert now == 4
    # Load drops: the recommendations fall, but the window still holds the 4.
    now, history = decide(4, 1, history, 15.0, T)
    assert now == 4
    now, history = decide(4, 1, history, 45.0, T)
    assert now == 4
    # 60 s after the last recommendation of 4: down.
    now, history = decide(4, 1, history, 61.0, T)
    assert now == 1


def test_a_dip_in_the_window_does_not_flap() -> None:
    history = History()
    count = 3
    for second, proposal in enumerate([3, 1, 3, 1, 3, 1]):
        count, history = decide(count, proposal, history, second * 10.0, T)
        assert count == 3


def test_target_of_and_wanted_replicas_read_the_spec_and_the_decision() -> None:
    app = {"spec": {"replicas": 9, "autoscale": {"minReplicas": 2, "maxReplicas": 4}}}
    assert target_of(app, 100) == Target(2, 4, 80, 100, 300)
    assert target_of({"spec": {}}, 100) is None
    assert wanted_replicas(app) == 4  # spec.replicas within the bounds until a decision
    assert wanted_replicas({**app, "status": {"autoscale": {"desiredReplicas": 3}}}) == 3
    assert wanted_replicas({"spec": {"replicas": 9}}) == 9

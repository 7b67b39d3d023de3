"""The batching policies' decisions (server/batching.py), fed synthetic queues and batch times: no clock, no emulator.

One emulator test at the end: a burst through a server with the adaptive policy is answered with
the offline evaluation's predictions, in compiled buckets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.batching import BATCH_BUDGET, BEHIND_AGE, AdaptiveBatching, FixedBatching, Plan, make_policy
from tests.conftest import REPO, collect_results, publish_images

BUCKETS = (4, 8, 12, 20, 28, 40, 64, 100, 128, 256)  # configs/stream.py's
SLO_S = 0.050
MAX_WAIT_S = 0.004
# Model-only batch times of the AVX-512 machine (docs/benchmarks.md, 2026-11-26): bucket / img/s.
COSTS = {b: b / r for b, r in zip(BUCKETS, (7244, 8429, 8627, 8996, 9442, 6919, 6743, 10122, 9438, 9960))}


def adaptive(costs=COSTS) -> AdaptiveBatching:
    return AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, costs)


def feed_rate(policy: AdaptiveBatching, per_second: float, until: float, step: float = 0.005) -> None:
    """Arrivals at `per_second`, pulled every `step` seconds, up to time `until`."""
    for t in np.arange(step, until + step / 2, step):
        policy.arrived(round(per_second * step), float(t))


def dispatches_now(plan: Plan) -> bool:
    return plan.fill == 0 and plan.wait_s == 0


# ------------------------------------------------------------------ adaptive
def test_the_limit_starts_at_the_largest_bucket_whose_measured_time_fits_half_the_objective():
    assert adaptive().limit == 128  # 256 takes 256 / 9,960 = 25.7 ms: over half of 50 ms
    assert AdaptiveBatching(BUCKETS, 0.060, MAX_WAIT_S, COSTS).limit == 256
    slow = {b: 10 * c for b, c in COSTS.items()}  # ten times slower: 20 takes 22 ms, 28 takes 30 ms
    assert AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, slow).limit == 20
    assert AdaptiveBatching(BUCKETS, 0.001, MAX_WAIT_S, COSTS).limit == 4  # nothing fits: the smallest


def test_no_queue_means_no_wait():
    policy = adaptive()
    feed_rate(policy, 5000, 1.0)  # a high arrival rate: waiting would fill any bucket at once
    for queued in (1, 3, 13, 50, 255):
        assert dispatches_now(policy.plan(queued, 0.0, backlog=False, now=1.0))


def test_a_queue_waits_to_fill_its_padding_when_arrivals_fill_it_in_time():
    policy = adaptive()
    feed_rate(policy, 4000, 1.0)
    plan = policy.plan(13, 0.001, backlog=True, now=1.0)  # 13 run padded to 20: 7 more come in ~1.75 ms
    assert plan.fill == 20 and 0 < plan.wait_s <= MAX_WAIT_S
    assert plan.limit == policy.limit


def test_a_queue_does_not_wait_when_arrivals_are_too_slow_or_nothing_is_padded():
    policy = adaptive()
    feed_rate(policy, 200, 1.0)
    assert dispatches_now(policy.plan(1, 0.0, backlog=True, now=1.0))  # 3 more at 200/s: 15 ms > 4 ms
    policy = adaptive()
    feed_rate(policy, 4000, 1.0)
    assert dispatches_now(policy.plan(20, 0.0, backlog=True, now=1.0))  # exactly a bucket: no padding
    assert dispatches_now(policy.plan(300, 0.0, backlog=True, now=1.0))  # more than the limit waits already


def test_no_wait_when_the_oldest_request_has_used_its_budget():
    policy = adaptive()
    feed_rate(policy, 4000, 1.0)
    budget = BATCH_BUDGET * SLO_S
    assert dispatches_now(policy.plan(13, budget - policy.estimate(20), backlog=True, now=1.0))
    assert dispatches_now(policy.plan(13, 1.0, backlog=True, now=1.0))
    waits = policy.plan(13, budget - policy.estimate(20) - 0.002, backlog=True, now=1.0)
    assert waits.fill == 20 and waits.wait_s == pytest.approx(0.002)  # only what is left of the budget


def test_the_limit_grows_a_bucket_at_a_time_while_a_queue_builds():
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S)  # nothing measured yet
    policy.limit = 4
    seen = [policy.limit]
    for t in range(1, 20):
        limit = policy.limit
        moved = policy.done(limit, limit, 0.00008 * limit, queued=limit + 50, now=float(t))  # 12,500 img/s
        seen.append(policy.limit)
        assert moved == ("up" if limit < 256 else None)
    assert seen[: len(BUCKETS)] == list(BUCKETS) and seen[-1] == 256


def test_the_limit_does_not_grow_without_a_queue_or_past_the_budget():
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, {b: c for b, c in COSTS.items() if b <= 28})
    policy.limit = 28
    assert policy.done(28, 28, 0.003, queued=28, now=1.0) is None  # it took everything waiting
    assert policy.limit == 28
    policy.cost[40] = 0.030  # the next bucket is measured over half the objective
    assert policy.done(28, 28, 0.003, queued=200, now=2.0) is None
    assert policy.limit == 28


def test_a_batch_over_its_budget_halves_the_limit():
    policy = adaptive()
    assert policy.limit == 128
    assert policy.done(128, 128, 0.040, queued=128, now=1.0) == "down"  # 40 ms > 25 ms
    assert policy.limit == 64
    assert policy.done(10, 12, 0.030, queued=10, now=2.0) == "down"  # any batch that slow: the machine is
    assert policy.limit == 28  # 32 is no bucket: the largest at or below half
    for t in range(3, 10):
        policy.done(4, 4, 0.030, queued=4, now=float(t))
    assert policy.limit == 4  # never below the smallest bucket


def test_backing_off_stops_at_the_smallest_bucket_that_keeps_up_with_arrivals():
    """On a contended machine every batch overran the 25 ms budget; halving down to 4 left the server unable to
    keep up, and the queue, not the batch, took the objective."""
    slow = {4: 0.011, 8: 0.013, 12: 0.015, 20: 0.018, 28: 0.030, 40: 0.036, 64: 0.050, 100: 0.072, 128: 0.090}
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, {**slow, 256: 0.180})
    feed_rate(policy, 750, 2.0, step=0.004)  # 3 every 4 ms
    # 750 img/s at 80% busy needs 938 img/s: 12 runs 800 (12 / 15 ms), 20 runs 1,111
    assert policy.floor(2.0) == 20
    policy.limit = 64
    assert policy.done(64, 64, 0.050, queued=64, now=2.0) == "down" and policy.limit == 28  # halved: 32 -> 28
    assert policy.done(28, 28, 0.030, queued=28, now=2.0) == "down" and policy.limit == 20  # 14 -> the floor
    assert policy.done(20, 20, 0.030, queued=20, now=2.0) is None and policy.limit == 20  # no lower (20: 980 img/s now)
    policy.limit = 4
    assert policy.done(4, 4, 0.011, queued=4, now=2.0) == "up" and policy.limit == 20  # arrivals outgrew it
    # Without arrivals the floor is the smallest bucket, and backing off goes all the way down.
    assert policy.floor(10.0) == 4
    policy.limit = 28
    assert policy.done(28, 28, 0.030, queued=28, now=10.0) == "down" and policy.limit == 12


def test_behind_the_limit_goes_to_the_cheapest_bucket_per_image_whatever_its_batch_time():
    costs = {**COSTS, 256: 0.026, 100: 0.012}  # 256: over the 25 ms budget, but 9,846 img/s, the cheapest per image
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, costs)
    assert policy.limit == 128 and not policy.behind(128)
    assert policy.behind(1000)  # 1,000 waiting at 128's 0.106 ms each: 106 ms > 50 ms
    assert policy.done(128, 128, COSTS[128], queued=1000, now=1.0) == "up"
    assert policy.limit == 256
    # A slow batch of 256: its average becomes 32.8 ms (7,805 img/s); 28 (9,442 img/s) is the cheapest now.
    assert policy.done(256, 256, 0.060, queued=1000, now=2.0) == "down"
    assert policy.limit == 28


def test_a_backlog_in_the_broker_is_behind_though_the_servers_own_queue_is_short():
    """At --rate 0 a pull brings at most 100: the server's queue stays short while the broker holds the rest.
    The batch's oldest request, more than BEHIND_AGE objectives old since it was published, says so."""
    costs = {**COSTS, 256: 0.026, 100: 0.012}
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, costs)
    assert policy.limit == 128
    assert not policy.behind(100)  # 10.6 ms of work
    # An objective or two old is the ordering keys' hold (a key's next requests wait for the earlier ones' acks),
    # not a backlog: the server keeps up.
    assert not policy.behind(100, age_s=2 * SLO_S) and not policy.behind(100, age_s=BEHIND_AGE * SLO_S)
    assert policy.behind(100, age_s=BEHIND_AGE * SLO_S + 0.001)
    assert policy.done(100, 128, COSTS[128], queued=100, now=0.5, age_s=2 * SLO_S) is None  # the limit stays
    # Young requests, a slow batch: the budget's multiplicative decrease, as without the age.
    assert policy.done(100, 128, 0.030, queued=100, now=1.0, age_s=0.010) == "down"
    assert policy.limit == 64
    # Old requests: throughput first, the cheapest bucket per image (256), whatever its batch time.
    assert policy.done(100, 128, 0.030, queued=100, now=2.0, age_s=2.5) == "up"
    assert policy.limit == 256


def test_behind_on_a_machine_where_large_batches_cost_more_per_image_the_limit_comes_down():
    loaded = {**COSTS, 128: 0.090, 256: 0.200}  # contended: 1,400 and 1,300 img/s against 100's 10,000
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, loaded)
    policy.limit = 256
    assert policy.done(256, 256, 0.200, queued=2000, now=1.0) == "down"
    assert policy.limit == 100


def test_unmeasured_buckets_are_estimated_from_measured_neighbours():
    policy = AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S, {8: 0.002, 64: 0.010})
    assert policy.estimate(8) == 0.002
    assert policy.estimate(12) == 0.010  # bounded by the next larger measured bucket
    assert policy.estimate(128) == pytest.approx(0.020)  # the largest measured, scaled by size
    assert AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S).estimate(256) == 0.0
    policy.done(8, 8, 0.004, queued=8, now=1.0)
    assert policy.estimate(8) == pytest.approx(0.002 + 0.2 * 0.002)  # a moving average, not the last batch


def test_the_arrival_rate_follows_arrivals_and_decays_without_them():
    policy = adaptive()
    assert policy.arrival_rate(0.0) == 0.0
    feed_rate(policy, 1000, 2.0)
    assert policy.arrival_rate(2.0) == pytest.approx(1000, rel=0.05)
    assert policy.arrival_rate(3.0) < 10  # a second of silence: five time constants


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(("arrive", "plan", "done")),
        st.integers(0, 2000),  # arrivals, or requests queued
        st.floats(0.0, 0.5),  # the oldest's age, or the batch's time in seconds
        st.booleans(),
        st.floats(0.0, 0.05),  # time step
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, seeded=st.booleans())
def test_whatever_it_is_told_the_policy_stays_within_the_buckets_and_its_bounds(events, seeded):
    policy = adaptive() if seeded else AdaptiveBatching(BUCKETS, SLO_S, MAX_WAIT_S)
    now = 0.0
    for kind, count, seconds, flag, step in events:
        now += step
        if kind == "arrive":
            policy.arrived(count, now)
        elif kind == "plan":
            queued = max(1, count)
            plan = policy.plan(queued, seconds, backlog=flag, now=now)
            assert plan.limit in BUCKETS
            assert plan.fill == 0 or (plan.fill in BUCKETS and queued < plan.fill <= plan.limit)
            assert 0 <= plan.wait_s <= MAX_WAIT_S
            assert plan.wait_s == 0 or flag  # it waits only when a queue built
            assert policy.bucket_for(min(queued, plan.limit)) in BUCKETS
        else:
            taken = max(1, min(count, policy.limit))
            moved = policy.done(taken, policy.bucket_for(taken), seconds, queued=max(taken, count), now=now)
            assert moved in (None, "up", "down")
        assert policy.limit in BUCKETS


# --------------------------------------------------------------------- fixed
def test_the_fixed_policy_is_a_window_from_the_oldest_pull_up_to_the_largest_bucket():
    policy = FixedBatching(BUCKETS, MAX_WAIT_S)
    assert policy.plan(1, 0.0, backlog=False, now=5.0) == Plan(256, 256, MAX_WAIT_S)
    assert policy.plan(30, 0.003, backlog=True, now=5.0) == Plan(256, 256, pytest.approx(0.001))
    assert policy.plan(300, 0.010, backlog=True, now=5.0).wait_s < 0  # past the window: take it now
    assert policy.done(256, 256, 1.0, queued=900, now=6.0) is None and policy.limit == 256


def test_make_policy_names_the_allowed_policies():
    assert isinstance(make_policy("fixed", BUCKETS, 4.0, 50.0), FixedBatching)
    assert isinstance(make_policy("adaptive", BUCKETS, 4.0, 50.0), AdaptiveBatching)
    with pytest.raises(ValueError, match="adaptive, fixed"):
        make_policy("greedy", BUCKETS, 4.0, 50.0)


# --------------------------------------------------------------------- flags
BAD_FLAGS = [
    ("--batching", "greedy"),
    ("--batching", "Adaptive"),
    ("--latency-slo-ms", "0"),
    ("--latency-slo-ms", "-5"),
    ("--latency-slo-ms", "nan"),
    ("--latency-slo-ms", "inf"),
    ("--latency-slo-ms", "10001"),
]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_a_bad_batching_flag_is_one_line_and_exit_2_before_jax_loads(flag, value):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['python -m server', {flag!r}, {value!r}]\n"
        "try:\n    runpy.run_module('server', run_name='__main__')\n"
        "except SystemExit as exit:\n    print(exit.code, 'jax' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PUBSUB_EMULATOR_HOST"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "not allowed" in lines[0], done.stderr


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)))
def test_the_objective_flag_allows_exactly_numbers_above_0_up_to_10_seconds(value):
    from configs.flags import flag_problems
    from server.__main__ import make_parser

    parser = make_parser()
    args = parser.parse_args([])
    setattr(args, "server.latency_slo_ms", value)
    problems = flag_problems(parser, args)
    assert (not problems) == (0 < value <= 10_000), problems


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=20))
def test_the_batching_flag_allows_exactly_the_two_policies(value):
    from configs.flags import flag_problems
    from server.__main__ import make_parser

    parser = make_parser()
    args = parser.parse_args([])
    setattr(args, "server.batching", value)
    problems = flag_problems(parser, args)
    assert (not problems) == (value in ("adaptive", "fixed")), problems
    if problems:
        assert len(problems) == 1 and "\n" not in problems[0] and "--batching" in problems[0]


def test_a_config_files_bad_policy_is_refused_by_the_settings():
    from configs import load_config
    from server.settings import ServerSettings

    config = load_config(None, "stream.py")
    config.server.batching = "greedy"
    with pytest.raises(ValueError, match="server.batching = 'greedy' is not allowed"):
        ServerSettings.from_config(config)


# ----------------------------------------------------------------- emulator
@pytest.mark.emulator
def test_an_adaptive_server_answers_a_burst_as_the_offline_evaluation(shared, model_dir, test_images):
    """The shared server runs the default policy, adaptive (its log says so)."""
    from train.evaluate import evaluate_model

    n = 600
    topology, server = shared.topology, shared.server
    ids = publish_images(topology, test_images.images[:n], run_id="adaptive", streams=4)
    results, _ = collect_results(topology, n, timeout=60)
    by_id = {r["request_id"]: r for r in results}
    assert sorted(by_id) == sorted(ids)
    offline = evaluate_model(model_dir, n).answers.prediction.tolist()
    assert [by_id[f"adaptive-{i}"]["label"] for i in range(n)] == offline
    timings = [r["timing"] for r in results]
    assert all(t["bucket"] in BUCKETS and t["batch_size"] <= t["bucket"] for t in timings)
    assert max(t["batch_size"] for t in timings) > 4, "a burst builds a queue, and the queue larger batches"
    assert "adaptive batching: objective 50 ms" in server.log_text()

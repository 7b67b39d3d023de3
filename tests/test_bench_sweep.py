"""The sweeps' arithmetic: the CPU window, the settings and the verdicts, on made-up figures (no timing)."""

from __future__ import annotations

import pytest

from bench import sweep
from bench.run import cpu_window


def test_cpu_window_counts_only_first_publish_to_last_result():
    # 1 core-s of streamer CPU per wall second, 2 for the server, sampled every 0.5 s from t=0 to t=10
    samples = [(t / 2, t / 2 * 1.0, t / 2 * 2.0) for t in range(21)]
    report = {"published_s": [2.25, None, 3.0], "predictions": [{"received_s": 6.0}, {"received_s": 7.75}]}
    w = cpu_window(report, samples)
    assert w["seconds"] == pytest.approx(5.5)
    assert w["images"] == 2
    assert w["streamer+collector"] == pytest.approx(5.5)
    assert w["server"] == pytest.approx(11.0)


def test_cpu_window_without_publish_times_is_none():
    assert cpu_window({"published_s": None, "predictions": []}, [(0, 0, 0), (1, 1, 1)]) is None


def test_quick_settings_are_smaller_and_keep_the_verdict_points():
    full, quick = sweep.settings(False), sweep.settings(True)
    assert full["images_per_point"] >= 3000 and full["repeats"] >= 3
    assert {0.1, 0.25, 0.5, 0.7, 0.9, 1.1} <= set(full["fractions"])
    assert {1, 16, 64, 256} <= set(full["stream_counts"])
    assert quick["images_per_point"] < full["images_per_point"]
    assert {0.1, 0.7} <= set(quick["fractions"]) and {16, 256} <= set(quick["stream_counts"])


def _summary(p50: float, p99: float, compute: float = 1.0, queue: float = 0.5) -> dict:
    def s(x):
        return {"min": x, "median": x, "max": x, "runs": [x]}

    return {
        "latency_ms": {"p50": s(p50), "p99": s(p99)},
        "compute_ms": {"p50": s(compute), "p99": s(compute)},
        "queue_ms": {"p50": s(queue), "p99": s(queue)},
    }


def _verdicts(r: dict) -> dict[str, bool]:
    rows = {}
    sweep.verdicts(r, lambda metric, value, target, ok, note="": rows.__setitem__(metric, ok))
    return rows


@pytest.mark.parametrize(("p99_70", "passes"), [(30.0, True), (30.1, False)])
def test_p99_at_70_percent_is_judged_against_three_times_10_percent(p99_70, passes):
    r = {"rate_sweep": {"points": [{"fraction": 0.1, **_summary(5, 10)}, {"fraction": 0.7, **_summary(9, p99_70)}]}}
    assert list(_verdicts(r).values()) == [passes]


def test_stream_and_overhead_verdicts():
    echo = {"16": _summary(10, 20), "256": _summary(10, 20)}
    good = {"rate": 100.0, "echo": echo, "server": {"16": _summary(13, 25, 1.5), "256": _summary(16, 30, 1.5)}}
    rows = _verdicts({"streams": good})
    assert rows == {
        "p50 at 10% of capacity (100 img/s) beyond echo and the model": True,  # 13 - 10 - 1.5 = 1.5 <= 2
        "p99 at 10% of capacity (100 img/s) beyond echo and the model": True,  # 25 - 20 - 1.5 = 3.5 <= 10
        "p50 beyond echo at 256 streams / at 16 (10% of capacity)": True,  # 6 <= 2 x 3
    }
    bad = {**good, "server": {"16": _summary(13, 25, 0.5), "256": _summary(16.1, 30, 1.5)}}
    rows = _verdicts({"streams": bad})
    assert rows["p50 at 10% of capacity (100 img/s) beyond echo and the model"] is False  # 2.5 > 2
    assert rows["p50 beyond echo at 256 streams / at 16 (10% of capacity)"] is False  # 6.1 > 6


def test_capacity_and_client_cpu_verdicts():
    def policy(runs, client, server):
        def s(xs):
            return {"min": min(xs), "median": sorted(xs)[len(xs) // 2], "max": max(xs), "runs": xs}

        return {"img_per_s": s(runs), "client_cpu_us_per_img": s([client]), "server_cpu_us_per_img": s([server])}

    fixed = policy([990, 1000, 1010], 100, 300)
    rows = _verdicts({"capacity": {"fixed": fixed, "adaptive": policy([990, 1000, 1010], 100, 300)}})
    assert list(rows.values()) == [True, True]
    # Every adaptive run below every fixed one: p = 1/20 = 0.05, lower. And 101 > 300 / 3.
    rows = _verdicts({"capacity": {"fixed": fixed, "adaptive": policy([987, 988, 989], 101, 300)}})
    assert list(rows.values()) == [False, False]
    # A lower median (995 against 1,000) the runs cannot tell from noise (p = 0.5) is not called lower.
    rows = _verdicts({"capacity": {"fixed": fixed, "adaptive": policy([980, 995, 1020], 100, 300)}})
    assert list(rows.values()) == [True, True]
    # One run each can never show a difference (p = 0.5): the median decides nothing alone.
    one = _verdicts({"capacity": {"fixed": policy([1001], 100, 300), "adaptive": policy([1000], 100, 300)}})
    assert list(one.values()) == [True, True]


def test_lower_p_is_the_exact_one_sided_rank_test():
    from bench.sweep import lower_p

    assert lower_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.05)  # 1 of the C(6,3) = 20 orderings
    assert lower_p([4, 5, 6], [1, 2, 3]) == pytest.approx(1.0)
    assert lower_p([3, 5, 6], [1, 2, 4]) == pytest.approx(0.95)
    assert lower_p([], [1, 2]) == 1.0

"""What the intervals add to writing a report: python -m bench.intervals [REPORT_JSON]

Times, in CPU seconds of this process, the figures of a two-model comparison with every interval
(results/metrics.py's ``intervals`` for each model, results/compare.py's paired intervals and tests)
against the same figures without them, several times over, and prints the smallest and the median
difference. REPORT_JSON is a saved `--compare` run (both models' results); without it, a synthetic
10,000-image comparison shaped like the shipped model against the quick one (94.51% and 91.57%,
5.62% of images answered right by one model only, queued latencies that drift).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from configs import load_config
from configs.flags import FlagParser
from results import run as run_json
from results.compare import compare
from results.machine import describe, machine
from results.metrics import Uncertainty, figures
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, RunInfo, RunResult


def synthetic(n: int = 10_000, seed: int = 0) -> tuple[RunResult, RunResult]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    right_a = rng.random(n) < 0.9451
    right_b = right_a.copy()
    flip = rng.choice(n, int(0.0562 * n), replace=False)  # discordant: 5.62%, mostly A right and B wrong
    right_b[flip] = ~right_a[flip]
    t0 = 1_764_000_000.0
    out = []
    for name, right, confidence in (("a" * 16, right_a, 0.95), ("b" * 16, right_b, 0.92)):
        backlog = np.convolve(rng.normal(size=n + 49), np.ones(50) / 7, "valid")  # correlated, as a queue is
        answers = Answers.of(
            np.arange(n), [str(i) for i in range(n)], labels, np.where(right, labels, (labels + 1) % 10),
            np.clip(rng.normal(confidence, 0.05, n), 0.1, 1.0), latency_ms=14 * np.exp(0.4 * backlog),
            received_s=t0 + np.arange(n) / 200,
        )  # fmt: skip
        out.append(
            RunResult(
                run=RunInfo(run_id="bench"),
                model=ModelIdentity(name, (name,)),
                dataset=DatasetIdentity("synthetic", "0" * 64, n),
                class_names=tuple(map(str, range(10))),
                answers=answers,
                counters=Counters(sent=n),
                published_s=t0 + np.arange(n) / 200 - 0.014,
            )  # fmt: skip
        )
    return out[0], out[1]


def cpu_seconds(a: RunResult, b: RunResult, u: Uncertainty | None) -> float:
    started = time.process_time()
    compare(a, b, figures(a, u), figures(b, u), uncertainty=u)
    return time.process_time() - started


def make_parser() -> FlagParser:
    p = FlagParser(prog="python -m bench.intervals", description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", help="report.json of a --compare run (default: a synthetic comparison)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds with and without intervals")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    a, b = run_json.load(args.report)[:2] if args.report else synthetic()
    u = Uncertainty(**load_config(None, "stream.py").intervals)
    added = []
    for _ in range(args.repeats):  # interleaved, so a machine that slows down slows both alike
        without = cpu_seconds(a, b, None)
        added.append(cpu_seconds(a, b, u) - without)
    print(
        f"all intervals of a comparison of {len(a.answers):,} and {len(b.answers):,} images "
        f"({u.resamples} resamples, level {u.level:g}): +{min(added):.2f} s CPU at best, "
        f"+{statistics.median(added):.2f} s median of {args.repeats}, on {describe(machine())}"
    )


if __name__ == "__main__":
    main()

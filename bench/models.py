"""Serving cost of two models, model-only, in one process: python -m bench.models OLD NEW

Rounds alternate between the models so that a machine that speeds up or slows down during the
run (these machines differ by up to 3.5x from day to day, and drift within a day) affects both
alike. Prints a table and writes bench/results/models-<time>.json with the machine's CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from configs.flags import FlagParser
from results.machine import describe as describe_machine
from train.checkpoint import ModelError


def compare(dirs: list[str], sizes: list[int], rounds: int, seconds: float) -> dict:
    from bench.run import img_per_s, machine  # imported here: main() checks its flags before JAX loads
    from train.predictor import load_predictor

    predictors = {d: load_predictor(d) for d in dirs}
    runs = {d: {str(s): [] for s in sizes} for d in dirs}
    for _ in range(rounds):
        for size in sizes:
            for d, p in predictors.items():
                runs[d][str(size)].append(img_per_s(p, size, seconds))
    return {
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds_per_measurement": seconds,
        "models": {
            d: {
                "test_accuracy": predictors[d].meta.get("test_accuracy"),
                "param_count": predictors[d].meta.get("param_count"),
                "test_time_flip": bool(predictors[d].meta.get("test_time_flip", False)),
                "img_per_s": runs[d],
                "median": {s: float(np.median(v)) for s, v in runs[d].items()},
            }
            for d in dirs
        },
    }


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories (the first is the reference)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 256], help="batch sizes")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per batch size")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--out", default="bench/results", help="where the JSON goes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        r = compare(args.models, args.sizes, args.rounds, args.seconds)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = r["machine"]
    print(describe_machine(m))
    ref = r["models"][args.models[0]]["median"]
    for d, v in r["models"].items():
        cells = ", ".join(
            f"batch {s}: {' / '.join(f'{x:,.0f}' for x in v['img_per_s'][s])} img/s "
            f"(median {v['median'][s] / ref[s]:.2f}x the first)"
            for s in v["median"]
        )
        flip = ", flip TTA: 2 forward passes per image" if v["test_time_flip"] else ""
        print(f"{d} ({v['test_accuracy']:.2%}, {v['param_count']:,} parameters{flip}): {cells}")
    out = Path(args.out) / f"models-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

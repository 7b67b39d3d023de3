"""make bench: python -m bench [--repeats 3] [--quick]

The flags are checked (configs/flags.py) before bench.run, and with it JAX, is imported.
"""

import sys

from configs.flags import FlagParser


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m bench", description="Benchmark the system against its baselines.")
    parser.add_argument("--repeats", type=int, default=3, help="repeat runs per throughput figure (min/median/max)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster pass (fewer images, 1 repeat)")
    parser.add_argument("--out", default="bench/results", help="where the JSON goes")
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and the PNGs go")
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    from bench.run import main

    sys.exit(main(args))

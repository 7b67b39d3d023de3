"""make bench: python -m bench [--repeats 3] [--quick]"""

import argparse
import sys

from bench.run import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the system against its baselines.")
    parser.add_argument("--repeats", type=int, default=3, help="repeat runs per throughput figure (min/median/max)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster pass (fewer images, 1 repeat)")
    parser.add_argument("--out", default="bench/results", help="where the JSON goes")
    parser.add_argument("--docs", default="docs", help="where benchmarks.md and the PNGs go")
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    sys.exit(main(parser.parse_args()))

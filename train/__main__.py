"""python -m train [--config configs/NAME.py] [--config.KEY=VALUE ...] [--workdir DIR]

Without --workdir the model goes to a new runs/<config>-<time>/ folder, never over the shipped
model; to replace the shipped model on purpose, pass --workdir models/fashion-mnist.
"""

import argparse
import sys
import time

from configs import load_config, override, parse_overrides
from train.checkpoint import ModelError
from train.data import DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train a classifier from a config file.")
    parser.add_argument("--config", help="config file (default configs/default.py)")
    parser.add_argument("--workdir", help="where the checkpoint and metadata.json go (default: runs/<config>-<time>)")
    args, rest = parser.parse_known_args(argv)
    try:
        config = override(load_config(args.config, "default.py"), parse_overrides(rest))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        parser.error(str(err))
    workdir = args.workdir or f"runs/{config.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    from train.train import train_and_evaluate  # imported late: keeps --help fast

    try:
        meta = train_and_evaluate(config, workdir)
    except (DatasetError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"test accuracy {meta['test_accuracy']:.4%} in {meta['train_time_s']:.0f}s -> {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

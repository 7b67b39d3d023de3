"""python -m train [--config configs/NAME.py] [--config.KEY=VALUE ...] [--workdir DIR]

Without --workdir the model goes to a new runs/<config>-<time>/ folder, never over the shipped
model; to replace the shipped model on purpose, pass --workdir models/fashion-mnist.

The config (file and overrides) is checked against configs/flags.py, and its data loaded and split
(train/splits.py), before the training modules and with them JAX (~2 s) are imported: a value outside
its domain, a missing dataset or too few images is one line and exit 2.
"""

import sys
import time

from configs import load_config, override, parse_overrides
from configs.flags import TRAIN_CONFIG, FlagParser, config_problems, problem


def make_parser() -> FlagParser:
    parser = FlagParser(prog="python -m train", description="Train a classifier from a config file.")
    parser.add_argument("--config", help="config file (default configs/default.py)")
    parser.add_argument("--workdir", help="where the checkpoint and metadata.json go (default: runs/<config>-<time>)")
    return parser


def override_problem(key: str, value) -> str | None:
    """The one-line problem with --config.KEY=VALUE, if its key has a domain and the value is outside it."""
    return problem(f"--config.{key}", value, TRAIN_CONFIG[key], "=") if key in TRAIN_CONFIG else None


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
        # Each override against its domain before it is applied (ml_collections takes True for 1) ...
        problems = [line for key, value in overrides.items() if (line := override_problem(key, value))]
        if not problems:
            config = override(load_config(args.config, "default.py"), overrides)
            # ... then the whole config, the file's own values included.
            problems = config_problems(config, overrides, args.config or "configs/default.py")
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        parser.error(str(err))
    if problems:
        parser.error(problems[0])
    workdir = args.workdir or f"runs/{config.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    from train.checkpoint import ModelError
    from train.data import DatasetError
    from train.splits import training_splits

    try:
        splits = training_splits(config)  # the data, checked before JAX loads
        from train.train import train_and_evaluate

        meta = train_and_evaluate(config, workdir, splits)
    except (DatasetError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"test accuracy {meta['test_accuracy']:.4%} in {meta['train_time_s']:.0f}s -> {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m train [--config configs/NAME.py] [--config.key=value ...] [--workdir DIR]"""

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from train.checkpoint import ModelError
from train.data import DatasetError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
flags.DEFINE_string("workdir", "models/fashion-mnist", "Where the checkpoint and metadata.json go.")
config_flags.DEFINE_config_file("config", str(CONFIGS / "default.py"), "Training config file.", lock_config=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    from train.train import train_and_evaluate  # imported late: keeps --help fast

    try:
        meta = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (DatasetError, ModelError) as err:
        sys.exit(f"error: {err}")
    print(f"test accuracy {meta['test_accuracy']:.4%} in {meta['train_time_s']:.0f}s -> {flags.FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main)

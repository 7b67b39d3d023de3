"""A seconds-long smoke run for tests: tiny net, a slice of the data, one epoch.

Command:   python -m train --config configs/smoke.py --workdir /tmp/smoke
Runtime:   ~15 seconds on 2 CPU cores. Accuracy: meaningless (>10% = it learns something).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.name = "smoke"
    config.model.widths = (8, 16)
    config.model.convs_per_block = 1
    config.model.dense = 32
    config.num_epochs = 1
    config.batch_size = 32
    config.eval_batch_size = 250
    config.validation_size = 0.1
    config.train_limit = 2048
    config.test_limit = 500
    return config

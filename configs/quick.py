"""A fast recipe: fewer, narrower epochs for a model in a few minutes.

Command:   python -m train --config configs/quick.py --workdir /tmp/quick
Runtime:   about 2.5 minutes on 2 CPU cores (3 epochs, width 16).
Accuracy:  about 90-91% on the 10,000-image test set.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.name = "quick"
    config.model.widths = (16, 32)
    config.model.dense = 128
    config.num_epochs = 3
    config.batch_size = 128
    config.augment.erase_prob = 0.0
    return config

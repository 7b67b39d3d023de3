"""A fast recipe: a narrower net, three epochs, light regularisation.

Command:   python -m train --config configs/quick.py --workdir /tmp/quick
Runtime:   83 s wall (82 s in training) on 2026-11-26 on 2 CPU cores (AMD EPYC with AVX-512,
           9,447-9,591 img/s model-only at batch 256 the same day), the machine otherwise idle.
Accuracy:  91.57% on the 10,000-image test set (models/fashion-mnist-quick, the second model for
           `python -m streamer --compare`); 5,000 training images are held out for validation.
           Test ECE 0.79% before and 1.05% after temperature scaling (T = 0.971): without label
           smoothing (inherited from the default since 2026-11-26) three epochs come out calibrated.

Three epochs underfit rather than overfit, so this drops the default's dropout in the
conv blocks, the random crop and random erasing, and uses a higher peak learning rate.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.name = "quick"
    config.model.widths = (16, 32)
    config.model.dense = 128
    config.model.dropout_conv = 0.0
    config.model.dropout_dense = 0.25
    config.num_epochs = 3
    config.learning_rate = 5e-3
    config.ema_decay = 0.99  # ~100 steps: a 1,000-step average would reach back into the first epoch of three
    config.augment.crop_pad = 0
    config.augment.erase_prob = 0.0
    return config

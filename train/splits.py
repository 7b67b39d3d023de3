"""The splits a training config names, loaded and checked before JAX: (train, validation, test).

`python -m train` loads them before it imports the training modules (and with them JAX, ~2 s): a
missing dataset, a split that cannot be made or fewer images than one batch is one line at once.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from train import data as data_lib
from train.checkpoint import ModelError

Splits = tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset]


def training_splits(config: ml_collections.ConfigDict) -> Splits:
    """The config's (train, validation, test) splits, or DatasetError/ModelError for what would stop its training."""
    if config.test_time_flip and not config.augment.hflip:  # a config error: say so before loading data
        raise ModelError("test_time_flip averages each image with its mirror image: train with augment.hflip=True")
    train_ds, val_ds, test_ds = load_datasets(config)
    if len(train_ds) < config.batch_size:
        raise data_lib.DatasetError(f"{len(train_ds)} training images is fewer than one batch of {config.batch_size}")
    return train_ds, val_ds, test_ds


def load_datasets(
    config: ml_collections.ConfigDict,
) -> Splits:
    """The (train, validation, test) splits the config names, shrunk by train_limit/test_limit."""
    names = tuple(config.class_names) or None
    if config.dataset == "fashion_mnist":
        train_ds, test_ds = data_lib.load_fashion_mnist("train"), data_lib.load_fashion_mnist("test")
    elif config.dataset == "idx":
        train_ds = data_lib.load_idx_pair(config.images_path, config.labels_path, names)
        test_ds = data_lib.load_idx_pair(config.test_images_path, config.test_labels_path, train_ds.class_names)
    elif config.dataset == "folder":
        shape = tuple(config.image_shape)
        train_ds = data_lib.load_image_folder(config.image_dir, shape, names)
        if config.test_image_dir:
            test_ds = data_lib.load_image_folder(config.test_image_dir, shape, train_ds.class_names)
        else:
            train_ds, test_ds = data_lib.split_dataset(train_ds, config.test_fraction, config.seed)
    else:
        raise data_lib.DatasetError(f"unknown dataset {config.dataset!r}: use fashion_mnist, idx or folder")
    train_ds, val_ds = split_validation(train_ds, config.validation_size, config.seed)
    return (
        data_lib.take(train_ds, config.train_limit or None),
        val_ds,
        data_lib.take(test_ds, config.test_limit or None),
    )


# A validation count is used as given only when the training split is at least ten times larger;
# below that, 10% of it is held out instead. Ten times, because then the two rules meet: at N = 10 x
# count both hold out `count`, so one more image never shrinks the validation set (the rule is
# min(count, 10% of N)). 10% is the usual hold-out. Fashion-MNIST's 60,000 with the recipes' 5,000
# (8.3%) are above the threshold (50,000) and keep exactly the split they always had; a 720-image
# folder holds out 72 instead of refusing, as the README's own-dataset command needs.
VALIDATION_FALLBACK_FRACTION = 0.1


def validation_count(n: int, size: float) -> int:
    """How many of `n` training images to hold out: a fraction (< 1) of them, or a count (>= 1) capped at 10%."""
    if size < 1:
        return max(1, int(round(n * size)))
    return min(int(size), max(1, int(round(n * VALIDATION_FALLBACK_FRACTION))))


def split_validation(ds: data_lib.Dataset, size: float, seed: int) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """Hold out a fixed, seeded validation set of validation_count(len(ds), size) images.

    It chooses the checkpoint and fits the temperature, so the test set is used once, at the end.
    """
    n_val = validation_count(len(ds), size)
    if not 0 < n_val <= len(ds) // 2:
        raise data_lib.DatasetError(
            f"validation_size={size} gives {n_val} of {len(ds)} training images; "
            "use a fraction such as --config.validation_size=0.1"
        )
    order = np.random.default_rng([seed, 1]).permutation(len(ds))
    return ds.subset(np.sort(order[n_val:])), ds.subset(np.sort(order[:n_val]))

"""What a run streams: `--dataset SPEC`, checked against the served model before anything starts.

fashion_mnist            Fashion-MNIST's 10,000 test images (the default)
idx:IMAGES,LABELS        any IDX pair, gzipped or not
folder:DIR               one subfolder per class; DIR/test/ when it exists, otherwise the same
                         held-out split training made (the model's metadata records its seed)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from train.data import (
    Dataset,
    DatasetError,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    split_dataset,
    take,
)


def load_dataset(spec: str, meta: dict, limit: int | None = None) -> Dataset:
    """The test images `spec` names, in the model's input shape, with the model's class names."""
    kind, _, rest = spec.partition(":")
    shape = tuple(meta["input_shape"])
    names = tuple(meta["class_names"])
    if kind == "fashion_mnist" and not rest:
        ds = load_fashion_mnist("test")
    elif kind == "idx" and rest.count(",") == 1:
        images, labels = rest.split(",")
        ds = load_idx_pair(images, labels)
        if ds.labels.size and ds.labels.max() >= len(names):
            raise DatasetError(
                f"{labels} has label {int(ds.labels.max())}, but the model knows {len(names)} classes {list(names)}"
            )
        ds = dataclasses.replace(ds, class_names=names, name=Path(images).name)
    elif kind == "folder" and rest:
        root = Path(rest)
        if (root / "test").is_dir():
            ds = load_image_folder(root / "test", shape, check_classes(root / "test", names))
        else:
            config = meta.get("config", {})
            full = load_image_folder(root, shape, check_classes(root, names))
            ds = split_dataset(full, config.get("test_fraction", 0.2), config.get("seed", 0))[1]
    else:
        raise DatasetError(f"--dataset {spec!r}: use fashion_mnist, idx:IMAGES,LABELS or folder:DIR")
    if tuple(ds.images.shape[1:]) != shape:
        raise DatasetError(f"{spec}: images are {tuple(ds.images.shape[1:])}, the model takes {shape}")
    if tuple(ds.class_names) != names:
        raise DatasetError(f"{spec}: classes {list(ds.class_names)} differ from the model's {list(names)}")
    return take(ds, limit)


def check_classes(root: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """The folder's classes must be the model's: one line naming the difference otherwise."""
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    found = {p.name for p in root.iterdir() if p.is_dir()}
    extra, absent = sorted(found - set(names)), sorted(set(names) - found)
    if extra or absent:
        parts = [f"{extra} not in the model" if extra else "", f"model classes {absent} missing" if absent else ""]
        raise DatasetError(f"{root}: classes differ from the model's: " + "; ".join(p for p in parts if p))
    return names

"""What a run streams: `--dataset SPEC`, checked against the served model before anything starts.

fashion_mnist            Fashion-MNIST's 10,000 test images (the default)
idx:IMAGES,LABELS        any IDX pair, gzipped or not
folder:DIR               one subfolder per class; DIR/test/ when it exists, otherwise the same
                         held-out split training made (the model's metadata records its seed)

With --corruptions the run streams a robustness set built from it (`robustness_set`): a seeded subset of its
images clean, then every corruption x severity of the same images.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from results.robustness import CLEAN, cell_id
from results.run import dataset_digest, dataset_identity
from streamer.stream import png_bytes
from train.corruptions import CORRUPTIONS, CorruptedSet, corrupt_dataset
from train.data import (
    Dataset,
    DatasetError,
    load_fashion_mnist,
    load_idx_pair,
    load_image,
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


# ------------------------------------------------------------------ robustness runs
@dataclasses.dataclass(frozen=True)
class RobustnessSet:
    """What a robustness run streams, and what the server will have decoded from it."""

    streamed: Dataset  # the clean sources, then each cell's; ids "<source id>|<corruption>|<severity>"
    seen: Dataset  # the same images as the server decodes them: `streamed` itself for raw pixels,
    # load_image of their PNG bytes with --content-type png (same ids and digest, so the two pair)
    corrupted: CorruptedSet
    info: dict  # RunInfo.robustness: the settings and how long generation took

    def gallery(self) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
        """The first source image as the server saw it, and its image in every cell."""
        sources = len(self.corrupted.sources)
        first = np.flatnonzero(self.corrupted.source == self.corrupted.sources[0])
        cells = {(str(self.corrupted.corruption[i]), int(self.corrupted.severity[i])): i for i in first}
        return self.seen.images[0], {cell: self.seen.images[sources + i] for cell, i in cells.items()}


def robustness_set(
    data: Dataset,
    corruptions: Sequence[str],
    severities: Sequence[int],
    per_cell: int,
    seed: int,
    content_type: str = "raw",
) -> RobustnessSet:
    """The clean subset of `per_cell` source images (train.corruptions.select_sources) and every cell over the
    same images, built before the timed stream: on 2 cores, corrupting while streaming would take the
    server's CPU. Every image is a pure function of (source image, corruption, severity, seed), so the
    offline check rebuilds exactly what was sent.

    With PNG the server decodes each picture with load_image (grayscale, inversion of a light-bordered image,
    letterbox, resize), and a raised background (brightness, fog, contrast, noise) can trigger the inversion:
    `seen` is that decoding, done here, so the offline check and the figures use what the server saw, and
    the clean images take the same path (their own pixels as PNG, not a folder's original file).
    """
    corrupted = corrupt_dataset(data, corruptions, severities, per_cell, seed, progress=True)
    sources = corrupted.sources
    _, source_ids = dataset_identity(data)
    ids = tuple(cell_id(source_ids[i], CLEAN, 0) for i in sources) + tuple(
        cell_id(source_ids[i], str(c), int(s))
        for i, c, s in zip(corrupted.source, corrupted.corruption, corrupted.severity)
    )
    images = np.concatenate([data.images[sources], corrupted.images])
    labels = np.concatenate([data.labels[sources], corrupted.labels]).astype(np.int32)
    name = f"{data.name}+corruptions"
    streamed = Dataset(images, labels, data.class_names, name, digest=dataset_digest(images, labels, ids=ids), ids=ids)
    seen, decode_s = streamed, None
    if content_type == "png":
        start = time.perf_counter()
        shape = images.shape[1:]
        decoded = np.stack(
            [load_image(png_bytes(image), shape) for image in tqdm(images, desc="decoding as the server", leave=False)]
        )
        decode_s = time.perf_counter() - start
        seen = dataclasses.replace(streamed, images=decoded)
    info = {
        "source_dataset": {"name": data.name, "digest": dataset_identity(data)[0].digest, "size": len(data)},
        "corruptions": list(corruptions),
        "families": {name: CORRUPTIONS[name].family for name in corruptions},
        "severities": [int(s) for s in severities],
        "per_cell": len(sources),
        "seed": int(seed),
        "requests": len(streamed),
        "generation_s": round(corrupted.seconds, 2),
        "decode_s": None if decode_s is None else round(decode_s, 2),
        "inverted": None if decode_s is None else _inverted(images, seen.images),
    }
    return RobustnessSet(streamed, seen, corrupted, info)


def _inverted(sent: np.ndarray, seen: np.ndarray) -> int:
    """How many images the server's decoding inverted: closer to 255 - sent than to sent."""
    sent, seen = sent.astype(np.int16).reshape(len(sent), -1), seen.astype(np.int16).reshape(len(seen), -1)
    return int((np.abs(seen - (255 - sent)).mean(1) < np.abs(seen - sent).mean(1)).sum())

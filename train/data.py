"""Datasets: Fashion-MNIST IDX files, any IDX pair, or an image folder.

Everything is returned as uint8 arrays of shape (N, H, W, C) plus int32 labels,
so that training, evaluation and serving all see exactly the same pixels.

Fashion-MNIST is looked up in this order (first hit wins):
  1. ``$FASHION_MNIST_DIR``;
  2. Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist);
  3. the user cache dir (``$XDG_CACHE_HOME/fashion-mnist`` or ~/.cache/fashion-mnist);
  4. a download from the dataset's canonical URLs into that cache, checksum-verified.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from results.run import dataset_digest

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CANONICAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the .gz files as published in the dataset's README.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA-256 of the decompressed IDX payloads. Mirrors (Debian included) recompress
# the files, which changes the .gz MD5 but not the data, so either digest proves it.
PAYLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FIX_HINT = (
    "install it with 'apt-get install dataset-fashion-mnist', "
    "or point $FASHION_MNIST_DIR at a folder holding the four *-ubyte.gz files"
)


class DatasetError(Exception):
    """A dataset is missing or malformed; the message says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images as uint8 (N, H, W, C) and labels as int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    files: tuple[str, ...] = ()  # for image folders: the picture behind each image, in order
    # sha256 of the dataset the images were loaded from (results.run.dataset_digest). With an image's
    # file name, or its index while the images are a prefix of it (--limit), it names the image across runs.
    digest: str = ""
    # Explicit image ids, when neither the index nor the file names them: a robustness run's
    # "<source id>|<corruption>|<severity>" (results/run.py image_ids).
    ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> Dataset:
        """The images at `index` (an array of positions or a slice), with their labels and files."""
        files = tuple(np.asarray(self.files, dtype=object)[index]) if self.files else ()
        ids = tuple(np.asarray(self.ids, dtype=object)[index]) if self.ids else ()
        prefix = isinstance(index, slice) and index.start in (None, 0) and index.step in (None, 1)
        digest = self.digest if prefix or files or ids else ""  # an index no longer names the same image
        return dataclasses.replace(
            self, images=self.images[index], labels=self.labels[index], files=files, digest=digest, ids=ids
        )


# ---------------------------------------------------------------- IDX parsing
_IDX_DTYPES = {0x08: np.uint8}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX blob, validating magic, dtype and length."""
    if len(raw) < 4:
        raise DatasetError(f"{source}: truncated IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DatasetError(f"{source}: not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetError(f"{source}: IDX size mismatch: header says {shape} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(f"{path}: corrupt gzip data ({err})") from None
    return parse_idx(raw, str(path))


def load_idx_pair(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    class_names: tuple[str, ...] | None = None,
    name: str = "idx",
) -> Dataset:
    """Load an IDX image file and its label file into a validated Dataset."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.ndim != 1:
        raise DatasetError(f"{images_path}: expected (N,H,W[,C]) images and (N,) labels")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(f"{labels_path}: label {labels.max()} out of range for {num_classes} classes")
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
    return Dataset(images, labels.astype(np.int32), names, name, digest=dataset_digest(images, labels))


# ------------------------------------------------------------ Fashion-MNIST
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashion-mnist"


def _has_files(folder: Path, split: str) -> bool:
    return all((folder / f).is_file() for f in FILES[split])


def verify_checksum(path: Path, name: str | None = None) -> None:
    """Accept a file whose .gz MD5 is the published one, or whose payload SHA-256 is known.

    `name` is the published file name when `path` is a temporary (.part) file.
    """
    name = name or path.name
    raw = path.read_bytes()
    if hashlib.md5(raw).hexdigest() == PUBLISHED_MD5[name]:
        return
    try:
        payload = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: downloaded file is not gzip ({err})") from None
    if hashlib.sha256(payload).hexdigest() != PAYLOAD_SHA256[name]:
        raise DatasetError(f"{path}: checksum mismatch; the download is corrupt or not Fashion-MNIST")


def download(target: Path, base_url: str = CANONICAL_URL, timeout: float = 30.0) -> Path:
    """Download the four files into target, verifying each checksum before keeping it."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_MD5:
        final = target / name
        if final.is_file():
            continue
        partial = final.with_suffix(".part")
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/" + name, timeout=timeout) as resp:
                partial.write_bytes(resp.read())
        except OSError as err:
            raise DatasetError(f"download of {name} failed ({err}); {FIX_HINT}") from None
        try:
            verify_checksum(partial, name)
        except DatasetError:
            partial.unlink(missing_ok=True)
            raise
        partial.rename(final)
    return target


def find_fashion_mnist(split: str = "test", allow_download: bool | None = None) -> Path:
    """Return the folder holding the split's files, following the documented order."""
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        if _has_files(Path(env), split):
            return Path(env)
        raise DatasetError(f"$FASHION_MNIST_DIR={env} lacks {', '.join(FILES[split])}; {FIX_HINT}")
    for folder in (DEBIAN_DIR, cache_dir()):
        if _has_files(folder, split):
            return folder
    if allow_download is None:
        allow_download = os.environ.get("FASHION_MNIST_NO_DOWNLOAD", "") == ""
    if not allow_download:
        raise DatasetError(f"Fashion-MNIST not found; {FIX_HINT}")
    base_url = os.environ.get("FASHION_MNIST_URL", CANONICAL_URL)
    return download(cache_dir(), base_url)


def load_fashion_mnist(split: str = "test", limit: int | None = None) -> Dataset:
    """Load the Fashion-MNIST train or test split (optionally only its first `limit` images)."""
    folder = find_fashion_mnist(split)
    images_file, labels_file = FILES[split]
    ds = load_idx_pair(folder / images_file, folder / labels_file, FASHION_MNIST_CLASSES, "fashion_mnist")
    return take(ds, limit)


def take(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.subset(slice(0, limit))


# ------------------------------------------------------------- image folders
# Decoding is bounded: larger pictures are refused as decompression bombs.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 4096


def load_image(path: str | os.PathLike | bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Convert any PNG/JPEG (any size or mode) to the model's uint8 (H, W, C) input.

    Colour images become grayscale (ITU-R 601 luma) for 1-channel models. The
    picture is letterboxed onto a square canvas of its own border colour, then
    resized with Lanczos. Fashion-MNIST shows light garments on a black
    background, so a picture whose border is lighter than its centre (a photo
    on a white background) is inverted; that gives a product photo a fair chance.
    """
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    label = "image bytes" if isinstance(path, bytes) else str(path)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=("PNG", "JPEG")) as img:
                if max(img.size) > MAX_IMAGE_SIDE:  # checked before decoding: an aspect-ratio bomb
                    raise ValueError(f"{img.size[0]}x{img.size[1]} pixels; the longer side may be {MAX_IMAGE_SIDE}")
                img.load()
                img = img.convert("L" if channels == 1 else "RGB")
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise DatasetError(f"{label}: not a readable image ({err})") from None
    arr = np.asarray(img)
    border = np.concatenate([arr[0].ravel(), arr[-1].ravel(), arr[:, 0].ravel(), arr[:, -1].ravel()])
    if channels == 1 and border.mean() > arr.mean():
        img = Image.fromarray(255 - arr)
        border = 255 - border
    side = max(img.size)
    fill = int(np.median(border)) if channels == 1 else tuple(np.median(border.reshape(-1, 3), 0).astype(int))
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - img.size[0]) // 2, (side - img.size[1]) // 2))
    out = np.asarray(canvas.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
    return out.reshape(height, width, channels)


def load_image_folder(
    root: str | os.PathLike,
    shape: tuple[int, int, int] = (28, 28, 1),
    class_names: tuple[str, ...] | None = None,
) -> Dataset:
    """Load root/<class>/*.png|jpg; class names come from the folder names unless given."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = tuple(class_names) if class_names else tuple(p.name for p in folders)
    if not folders:
        raise DatasetError(f"{root}: no class subfolders (expected root/<class>/*.png)")
    images, labels, files = [], [], []
    for folder in folders:
        if folder.name not in names:
            raise DatasetError(f"{folder}: folder is not one of the configured classes {names}")
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(load_image(file, shape))
                labels.append(names.index(folder.name))
                files.append(str(file))
    if not images:
        raise DatasetError(f"{root}: no PNG/JPEG images found in the class folders")
    images, labels, files = np.stack(images), np.asarray(labels, np.int32), tuple(files)
    return Dataset(images, labels, names, root.name, files, dataset_digest(images, labels, files))


def split_dataset(ds: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic stratification-free shuffle split (for folders without a test split)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    n_test = max(1, int(round(len(ds) * test_fraction)))
    return ds.subset(order[n_test:]), ds.subset(order[:n_test])

"""Corrupted images: noise, blur, geometric, digital and weather corruptions at five calibrated severities.

Every corrupted image is a pure function of (source image, corruption, severity, seed): `corrupt` draws its
random numbers from a generator seeded by (seed, the corruption's name) only, so the same image and seed give
the same bytes on every call, and the five severities of one corruption share one draw (a severity step
changes only the parameter: common random numbers, so severity curves are smooth and monotone per image).

`CORRUPTIONS` is the one home of the severity table (docs/robustness.md explains each row). Parameters are
stated for a 28-pixel image side; spatial ones (blur radii and lengths, glass displacement, fog scale) scale
with min(H, W) / 28, so a 56x56 image gets the same blur relative to its size. Re-implemented in NumPy, SciPy
and Pillow after MNIST-C (Mu & Gilmer 2019) and ImageNet-C (Hendrycks & Dietterich 2019); their parameter
tables were the starting point, rescaled for 28x28 images.

Images are uint8 (H, W) or (H, W, C), any size, one channel or several; the output has the input's shape
and dtype. `corrupt_dataset` builds the cells of a robustness run from a dataset.
"""

from __future__ import annotations

import dataclasses
import io
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from train.data import Dataset

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("noise", "blur", "geometric", "digital", "weather")
REFERENCE_SIDE = 28  # the side the spatial parameters are stated for


# ------------------------------------------------------------------ helpers (float images in [0, 1], (H, W, C))
def _side_scale(x: np.ndarray) -> float:
    return min(x.shape[0], x.shape[1]) / REFERENCE_SIDE


def _per_channel(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(x[..., c]) for c in range(x.shape[-1])], axis=-1)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # "nearest" extends the border: on a black-bordered image it adds black, on a photo its own border colour.
    return _per_channel(x, lambda ch: ndimage.convolve(ch, kernel, mode="nearest"))


def _border_fill(x: np.ndarray) -> np.ndarray:
    """Per channel, the median of the outermost pixels: what a geometric transform uncovers.

    The same rule as train.data.load_image's letterbox: Fashion-MNIST's black border stays black,
    a photo on white gets white.
    """
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])  # (border pixels, C)
    return np.median(border, axis=0)


def _affine(x: np.ndarray, matrix: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Output pixel p (row, col) reads input pixel centre + matrix @ (p - centre) - shift, bilinearly."""
    centre = (np.array(x.shape[:2], np.float64) - 1) / 2
    offset = centre - matrix @ centre - (0 if shift is None else shift)
    fill = _border_fill(x)
    return np.stack(
        [
            ndimage.affine_transform(x[..., c], matrix, offset=offset, order=1, mode="constant", cval=fill[c])
            for c in range(x.shape[-1])
        ],
        axis=-1,
    )


def _disk_kernel(radius: float) -> np.ndarray:
    """A flat disk of the given radius, anti-aliased: each pixel weighs the fraction of it inside the disk."""
    half = int(np.ceil(radius))
    sub = (np.arange(8) + 0.5) / 8 - 0.5  # 8x8 samples per pixel
    grid = np.arange(-half, half + 1)
    ys = (grid[:, None] + sub[None, :]).ravel()
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2
    kernel = inside.reshape(len(grid), 8, len(grid), 8).mean(axis=(1, 3))
    return kernel / kernel.sum()


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A centred line of the given length and angle, drawn by bilinear splatting of 8 samples per pixel."""
    half = int(np.ceil(length / 2)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    t = np.linspace(-length / 2, length / 2, int(np.ceil(length * 8)) + 1)
    rows, cols = half - t * np.sin(angle), half + t * np.cos(angle)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(kernel, (r0 + dr, c0 + dc), w)
    return kernel / kernel.sum()


def _random_sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


# ------------------------------------------------------------------ the corruptions: f(x, parameter, rng) -> x'
def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation `sigma` (on the 0..1 pixel scale)."""
    return x + sigma * rng.standard_normal(x.shape)


def shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise: a pixel of value v counts Poisson(v * photons) photons; fewer photons, more noise."""
    return rng.poisson(x * photons) / photons


def impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: a fraction `amount` of pixel values become 0 or 1 (half each).

    Two draws, which values and which colour, so the corrupted set of a higher severity contains the lower one's.
    """
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), x)


def defocus_blur(x: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Convolution with a flat disk (an out-of-focus lens's point spread) of `radius` pixels at 28 px."""
    return _convolve(x, _disk_kernel(radius * _side_scale(x)))


def motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """Convolution with a centred line of `length` pixels (at 28 px) at a random angle: a camera or object moving."""
    angle = rng.uniform(0.0, np.pi)  # a centred line covers both directions
    return _convolve(x, _line_kernel(length * _side_scale(x), angle))


def glass_blur(x: np.ndarray, params: tuple[float, float, int], rng: np.random.Generator) -> np.ndarray:
    """Frosted glass: Gaussian blur, then `iterations` rounds of every pixel reading the image at a random
    offset of up to `delta` pixels in each axis (bilinear), then the blur again.

    `params` = (sigma, delta, iterations), sigma and delta at 28 px. Offsets are sub-pixel because one whole
    pixel is 4% of a 28-pixel side: ImageNet-C's smallest swap distance (1 px of 224) would be 0.125 px here.
    """
    sigma, delta, iterations = params
    scale = _side_scale(x)
    sigma, delta = sigma * scale, delta * scale
    blur = lambda im: _per_channel(im, lambda ch: ndimage.gaussian_filter(ch, sigma, mode="nearest"))
    rows, cols = np.indices(x.shape[:2], dtype=np.float64)
    x = blur(x)
    for _ in range(iterations):
        dr, dc = rng.uniform(-delta, delta, size=(2, *x.shape[:2]))
        coords = [rows + dr, cols + dc]
        x = _per_channel(x, lambda ch, at=coords: ndimage.map_coordinates(ch, at, order=1, mode="nearest"))
    return blur(x)


def rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotation by `degrees` about the centre, clockwise or anticlockwise at random."""
    theta = np.deg2rad(degrees) * _random_sign(rng)
    c, s = np.cos(theta), np.sin(theta)
    return _affine(x, np.array([[c, -s], [s, c]]))


def shear(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shear by `factor` (a pixel moves `factor` pixels sideways per pixel from the centre line), horizontal or
    vertical and in either direction at random."""
    k = factor * _random_sign(rng)
    matrix = np.array([[1.0, 0.0], [k, 1.0]]) if rng.random() < 0.5 else np.array([[1.0, k], [0.0, 1.0]])
    return _affine(x, matrix)


def scale(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Zoom out about the centre: the picture shrinks to `factor` of its size, the border colour fills the rest."""
    return _affine(x, np.eye(2) / factor)


def translate(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Shift by `fraction` of the image side in a random direction, rounded to whole pixels (no resampling blur)."""
    angle = rng.uniform(0.0, 2 * np.pi)
    shift = np.rint(fraction * min(x.shape[:2]) * np.array([np.sin(angle), np.cos(angle)]))
    return _affine(x, np.eye(2), shift)


def contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduced to `factor` about each channel's mean."""
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * factor + mean


def brightness(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """HSV value raised by `amount` (hue and saturation kept): grayscale pixels gain `amount`, clipped at white.

    With hue and saturation fixed, RGB is proportional to V, so scaling each pixel by V'/V is the exact HSV
    edit; a black pixel (V = 0, no hue) becomes gray V'.
    """
    value = x.max(axis=-1, keepdims=True)
    raised = np.minimum(value + amount, 1.0)
    return np.where(value > 0, x * raised / np.maximum(value, 1e-12), raised)


def pixelate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Box-downsampled to `factor` of each side, then enlarged back with nearest-neighbour: visible blocks."""
    height, width = x.shape[:2]
    small = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))

    def one(ch: np.ndarray) -> np.ndarray:
        im = Image.fromarray(ch.astype(np.float32)).resize(small, Image.Resampling.BOX)
        return np.asarray(im.resize((width, height), Image.Resampling.NEAREST), np.float64)

    return _per_channel(x, one)


def jpeg(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG compression at `quality` (Pillow's encoder, 4:2:0 chroma subsampling for colour): 8x8 block artefacts."""
    pixels = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    channels = pixels.shape[-1]
    # JPEG holds 1 or 3 channels; any other count is compressed one channel at a time.
    planes = [pixels] if channels == 3 else [pixels[..., c] for c in range(channels)]
    out = []
    for plane in planes:
        buf = io.BytesIO()
        Image.fromarray(plane).save(buf, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float64) / 255)
    return out[0] if channels == 3 else np.stack(out, axis=-1)


def fog(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """A cloud-like field (Gaussian noise with a 1/f^2 amplitude spectrum, scaled to 0..1) added with weight
    `density`, then the image rescaled so its brightest value stays where it was: less contrast, uneven haze."""
    height, width = x.shape[:2]
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    amplitude = np.zeros_like(freq)
    amplitude[freq > 0] = freq[freq > 0] ** -2.0  # the mean (frequency 0) is dropped, min-max scaling sets it
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((height, width))) * amplitude))
    field = (field - field.min()) / max(field.max() - field.min(), 1e-12)
    peak = max(float(x.max()), 1e-12)
    return (x + density * field[..., None]) * peak / (peak + density)


# ------------------------------------------------------------------ the registry: the one home of the severity table
@dataclasses.dataclass(frozen=True)
class Corruption:
    """A corruption: its family, its function and its parameter at severities 1..5 (at a 28-pixel side)."""

    name: str
    family: str
    fn: Callable[[np.ndarray, object, np.random.Generator], np.ndarray]
    params: tuple
    unit: str  # what the parameter means, for tables


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", "noise", gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), "noise sd (0..1 scale)"),
        Corruption("shot_noise", "noise", shot_noise, (60, 25, 12, 5, 3), "photons at white"),
        Corruption("impulse_noise", "noise", impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), "fraction of values"),
        Corruption("defocus_blur", "blur", defocus_blur, (0.8, 1.2, 1.6, 2.0, 2.5), "disk radius, px"),
        Corruption("motion_blur", "blur", motion_blur, (2.0, 3.0, 4.5, 6.0, 8.0), "line length, px"),
        Corruption(
            "glass_blur",
            "blur",
            glass_blur,
            ((0.4, 0.5, 1), (0.45, 0.7, 1), (0.5, 0.9, 1), (0.55, 1.1, 2), (0.6, 1.3, 2)),
            "(sigma px, delta px, iterations)",
        ),
        Corruption("rotate", "geometric", rotate, (8.0, 16.0, 24.0, 32.0, 40.0), "degrees, random sign"),
        Corruption("shear", "geometric", shear, (0.1, 0.2, 0.3, 0.4, 0.5), "shear factor, random axis and sign"),
        Corruption("scale", "geometric", scale, (0.9, 0.8, 0.7, 0.6, 0.5), "size factor (zoom out)"),
        Corruption("translate", "geometric", translate, (0.05, 0.1, 0.15, 0.2, 0.25), "fraction of side"),
        Corruption("contrast", "digital", contrast, (0.6, 0.45, 0.3, 0.2, 0.1), "contrast factor"),
        Corruption("brightness", "digital", brightness, (0.1, 0.2, 0.3, 0.4, 0.5), "HSV value added"),
        Corruption("pixelate", "digital", pixelate, (0.8, 0.65, 0.5, 0.4, 0.3), "fraction of side kept"),
        Corruption("jpeg", "digital", jpeg, (25, 18, 12, 8, 5), "JPEG quality"),
        Corruption("fog", "weather", fog, (0.4, 0.7, 1.0, 1.4, 2.0), "fog weight"),
    )
}


def parse_corruptions(text: str) -> tuple[str, ...]:
    """ "all" or a comma-separated list of names -> the names, in the registry's order for "all".

    Raises ValueError with a one-line message naming the valid names.
    """
    text = text.strip()
    if text == "all":
        return tuple(CORRUPTIONS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown corruption {', '.join(map(repr, unknown)) or repr(text)}; "
            f"use 'all' or names from: {', '.join(CORRUPTIONS)}"
        )
    return tuple(dict.fromkeys(names))  # duplicates dropped, order kept


def parse_severities(text: str) -> tuple[int, ...]:
    """ "1-5", "3", "1,3,5" or "1-2,5" -> sorted severities; ValueError (one line) outside 1..5 or malformed."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            lo, hi = int(low), int(high) if high else int(low)
            if lo > hi:
                raise ValueError
            out.update(range(lo, hi + 1))
    except ValueError:
        raise ValueError(f"severities {text!r}: expected e.g. 1-5, 3 or 1,3,5") from None
    if not out or min(out) < SEVERITIES[0] or max(out) > SEVERITIES[-1]:
        raise ValueError(f"severities {text!r}: each must be in {SEVERITIES[0]}-{SEVERITIES[-1]}")
    return tuple(sorted(out))


def _seed_entropy(seed: int | Sequence[int], name: str) -> list[int]:
    ints = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if any(s < 0 for s in ints):
        raise ValueError(f"seed {seed!r} must be non-negative")
    return [*ints, zlib.crc32(name.encode())]


def corrupt(image: np.ndarray, name: str, severity: int, seed: int | Sequence[int] = 0) -> np.ndarray:
    """The corrupted image: uint8 in, uint8 out, same shape; a pure function of its four arguments.

    `seed` is an int or a sequence of ints (corrupt_dataset passes (seed, source index)). The generator is
    seeded by it and the name, not the severity: the five severities of one image share one draw.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; one of: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} must be one of {SEVERITIES}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 2:
        raise ValueError(f"expected a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}")
    spec = CORRUPTIONS[name]
    rng = np.random.default_rng(np.random.SeedSequence(_seed_entropy(seed, name)))
    x = image.astype(np.float64).reshape(*image.shape[:2], -1) / 255.0
    out = spec.fn(x, spec.params[severity - 1], rng)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8).reshape(image.shape)


# ------------------------------------------------------------------ corrupted sets for a robustness run
@dataclasses.dataclass(frozen=True)
class CorruptedSet:
    """The images of a robustness run, cell by cell (corruption-major, then severity), each cell the same
    `sources` in the same order, so cells pair image by image with each other and with the clean run."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,): the source image's label (never sent to a server)
    source: np.ndarray  # int64 (N,): index of the source image in the dataset
    corruption: np.ndarray  # str (N,)
    severity: np.ndarray  # int64 (N,): 1..5
    sources: np.ndarray  # int64 (per_cell,): the subset, sorted, the same for every cell
    seed: int
    seconds: float  # wall time of the generation

    def __len__(self) -> int:
        return len(self.labels)


def select_sources(n_images: int, per_cell: int, seed: int = 0) -> np.ndarray:
    """A fixed, seeded subset of `per_cell` source indices (all of them if the dataset is smaller), sorted.

    The first `per_cell` of one seeded permutation: a smaller run's images are part of a larger run's.
    """
    if per_cell < 1:
        raise ValueError(f"per_cell must be at least 1, got {per_cell}")
    rng = np.random.default_rng(np.random.SeedSequence([seed]))
    return np.sort(rng.permutation(n_images)[:per_cell]).astype(np.int64)


def corrupt_dataset(
    dataset: Dataset,
    corruptions: Sequence[str],
    severities: Sequence[int],
    per_cell: int,
    seed: int = 0,
    progress: bool = True,
) -> CorruptedSet:
    """Every (corruption, severity) cell over the same seeded subset of `per_cell` source images.

    Image i of the subset in every cell is corrupt(dataset.images[i], corruption, severity, (seed, i)).
    """
    from tqdm import tqdm

    for name in corruptions:
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; one of: {', '.join(CORRUPTIONS)}")
    for s in severities:
        if s not in SEVERITIES:
            raise ValueError(f"severity {s!r} must be one of {SEVERITIES}")
    sources = select_sources(len(dataset), per_cell, seed)
    cells = [(name, s) for name in corruptions for s in severities]
    n = len(cells) * len(sources)
    images = np.empty((n, *dataset.images.shape[1:]), np.uint8)
    start = time.perf_counter()
    with tqdm(total=n, desc="corrupting", unit="img", disable=not progress, leave=False) as bar:
        for k, (name, s) in enumerate(cells):
            base = k * len(sources)
            for j, i in enumerate(sources):
                images[base + j] = corrupt(dataset.images[i], name, s, (seed, int(i)))
            bar.update(len(sources))
    seconds = time.perf_counter() - start
    return CorruptedSet(
        images=images,
        labels=np.tile(dataset.labels[sources], len(cells)).astype(np.int32),
        source=np.tile(sources, len(cells)),
        corruption=np.repeat(np.array([c for c, _ in cells], dtype=object), len(sources)).astype(str),
        severity=np.repeat(np.array([s for _, s in cells], np.int64), len(sources)),
        sources=sources,
        seed=seed,
        seconds=seconds,
    )

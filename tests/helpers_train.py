"""Shared helpers for the train/* tests: IDX writers, synthetic image folders, CLI runs, a cached smoke model.

Not a conftest: test modules import what they need. The smoke model is trained
once per pytest session (cached here) however many modules ask for it.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SMOKE_CONFIG = "configs/smoke.py"
METADATA_KEYS = (
    "dataset",
    "machine",
    "test_predictions",
    "class_names",
    "input_shape",
    "config",
    "test_accuracy",
    "per_class_accuracy",
    "param_count",
    "train_time_s",
    "versions",
    "checkpoint_sha256",
)


# ------------------------------------------------------------------ IDX files
def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an (uncompressed) IDX blob."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tiny_fashion_mnist(folder: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a fake four-file Fashion-MNIST (n images per split) into folder; return the test split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = None
    for images_name, labels_name in (
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
        out = images, labels
    return out


# ------------------------------------------------------------- image folders
SHAPE_CLASSES = ("circle", "square", "stripes")


def shape_image(kind: str, size: int = 16, seed: int = 0) -> Image.Image:
    """A light shape on a black background (Fashion-MNIST polarity), RGB."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    shift = int(rng.integers(0, 3))
    s = size / 16
    if kind == "circle":
        draw.ellipse(((2 + shift) * s, (2 + shift) * s, (12 + shift) * s, (12 + shift) * s), fill=colour)
    elif kind == "square":
        draw.rectangle(((3 + shift) * s, (3 + shift) * s, (11 + shift) * s, (11 + shift) * s), fill=colour)
    else:
        for y in range(shift, 16, 4):
            draw.rectangle((0, y * s, size - 1, (y + 1) * s), fill=colour)
    return img


def make_shape_folder(root: Path, per_class: int = 20, size: int = 16, classes=SHAPE_CLASSES) -> Path:
    """root/<class>/<i>.png with distinct simple shapes per class."""
    for c, kind in enumerate(classes):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(kind, size, seed=1000 * c + i).save(root / kind / f"{i:03d}.png")
    return root


# ---------------------------------------------------------------------- CLIs
def run_cli(*args: str, env: dict | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    """Run `python <args>` from the project root; text output captured."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [PYTHON, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def train_smoke(workdir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m train --config configs/smoke.py --workdir DIR [--config.KEY=VALUE ...]`."""
    return run_cli("-m", "train", "--config", SMOKE_CONFIG, "--workdir", str(workdir), *overrides, env=env)


_TRAINED: dict[str, Path] = {}


def run_folder(tmp_path_factory, name: str) -> Path:
    """`name` in the test run's one folder: pytest-xdist workers of one run all see the same path."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # every worker's basetemp lies in the run's one folder
    return root / name


def trained_once(tmp_path_factory, name: str, *overrides: str) -> Path:
    """`python -m train --config configs/smoke.py [overrides]` into the run's folder `name`, once per test run.

    pytest-xdist workers of one run share it: the first to ask trains it under a file lock, the others
    wait and read it (test_train and test_predict landed on different workers and trained it twice).
    """
    if name not in _TRAINED:
        from filelock import FileLock

        workdir = run_folder(tmp_path_factory, name)
        with FileLock(f"{workdir}.lock"):
            if not (workdir / "metadata.json").is_file():  # written last: a model that is there is whole
                proc = train_smoke(workdir, *overrides)
                assert proc.returncode == 0, f"training {name} failed:\n{proc.stdout}\n{proc.stderr}"
        _TRAINED[name] = workdir
    return _TRAINED[name]


def smoke_model(tmp_path_factory) -> Path:
    """Train the smoke config once per test run (12-33 s) and return its model directory."""
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file() and not os.environ.get("FASHION_MNIST_DIR"):
        import pytest

        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return trained_once(tmp_path_factory, "smoke-model")


SHAPES_PER_CLASS = 30


def shapes_models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An image-folder dataset (3 classes x 30 pictures, 16x16, RGB files read as grey) and two smoke models
    trained on it with seeds 0 and 1, once per test run: (images, model a, model b).

    test_train and test_evaluator each trained on a folder of their own (14-15 CPU-s each). Only the seed
    differs between the two models, so the second runs the first one's compiled programs from the run's XLA
    cache (a learning rate is compiled in): 25.7 s for both against 28.8 s with two rates.
    """
    from filelock import FileLock

    images, made = run_folder(tmp_path_factory, "shapes"), run_folder(tmp_path_factory, "shapes.made")
    with FileLock(f"{images}.lock"):
        if not made.is_file():  # written last: a folder that is there is whole
            make_shape_folder(images, per_class=SHAPES_PER_CLASS, size=16)
            made.touch()
    common = ("--config.dataset=folder", f"--config.image_dir={images}", "--config.image_shape=(16,16,1)")
    common += ("--config.batch_size=16", "--config.num_epochs=3")
    a, b = (trained_once(tmp_path_factory, f"shapes-{s}", *common, f"--config.seed={s}") for s in (0, 1))
    return images, a, b


def mains_in_one_process(module: str, cases: list[list[str]], heavy: tuple[str, ...]) -> tuple[list, list[str]]:
    """Run `module`'s main(argv) for every argv in one fresh interpreter.

    Returns ([exit code, stderr] per case, the modules under `heavy` that got imported): a flag
    refused before anything starts leaves JAX, Flax, Orbax and the Pub/Sub client unimported.
    """
    script = (
        "import contextlib, io, json, sys\n"
        f"from {module} import main\n"
        "out = []\n"
        f"for argv in {cases!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as exit:  # configs/flags.py's FlagParser exits 2 itself\n"
        "            code = exit.code\n"
        "    out.append([code, err.getvalue()])\n"
        f"print(json.dumps([out, sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})]))\n"
    )
    proc = subprocess.run([PYTHON, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    results, imported = json.loads(proc.stdout)
    return results, imported

"""Orbax checkpoints plus a JSON metadata file: the only way models are stored.

Layout of a model directory:
    checkpoint/      Orbax StandardCheckpointer output (the model's nnx.State)
    metadata.json    classes, input shape, model config, accuracy, timings, digest
No pickle anywhere: Orbax writes tensors (OCDBT/zarr), the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Orbax, Flax and train.model (CNN, in the annotations) are imported by the functions that use them:
# the entry points import DEFAULT_MODEL_DIR, ModelError and load_metadata to check their flags
# before JAX loads (~3 s).

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "fashion-mnist"


class ModelError(Exception):
    """A model directory is missing or inconsistent; the message says how to fix it."""


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """SHA-256 over every file of the checkpoint (relative path + bytes), in sorted order."""
    root = Path(checkpoint_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save_model(model_dir: str | Path, model: CNN, metadata: dict) -> dict:  # noqa: F821
    """Write the checkpoint and metadata.json (with the checkpoint's digest); return the metadata."""
    import orbax.checkpoint as ocp
    from flax import nnx

    model_dir = Path(model_dir).resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(model_dir / "checkpoint", nnx.state(model), force=True)
    checkpointer.wait_until_finished()
    metadata = {**metadata, "checkpoint_sha256": checkpoint_digest(model_dir / "checkpoint")}
    (model_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def load_metadata(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "metadata.json"
    if not path.is_file():
        raise ModelError(f"{path} not found; train a model with 'python -m train' or pass --model DIR")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None


def load_model(model_dir: str | Path = DEFAULT_MODEL_DIR, verify: bool = True) -> tuple[CNN, dict]:  # noqa: F821
    """Restore a model in eval mode: abstract model via nnx.eval_shape, then Orbax restore + merge."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from train.model import build_model

    model_dir = Path(model_dir).resolve()
    meta = load_metadata(model_dir)
    ckpt = model_dir / "checkpoint"
    if not ckpt.is_dir():
        raise ModelError(f"{ckpt} not found; the model directory is incomplete")
    if verify and checkpoint_digest(ckpt) != meta.get("checkpoint_sha256"):
        raise ModelError(f"{ckpt}: digest differs from metadata.json; the checkpoint was modified")
    make = lambda: build_model(meta["model_config"], meta["input_shape"], len(meta["class_names"]))  # noqa: E731
    abstract = nnx.eval_shape(make)
    graphdef, abstract_state = nnx.split(abstract)
    state = ocp.StandardCheckpointer().restore(ckpt, abstract_state)
    model = nnx.merge(graphdef, state)
    model.eval()
    return model, meta

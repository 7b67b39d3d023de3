"""The shipped model (models/fashion-mnist): intact, accurate, small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.checkpoint import DEFAULT_MODEL_DIR, checkpoint_digest

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "fashion-mnist"


@pytest.fixture(scope="module")
def metadata() -> dict:
    path = MODEL_DIR / "metadata.json"
    if not path.is_file():
        pytest.skip(f"{path} does not exist yet (the default training run writes it when it finishes)")
    return json.loads(path.read_text())


def test_default_model_dir_is_the_shipped_one():
    assert DEFAULT_MODEL_DIR == MODEL_DIR


def test_checkpoint_digest_matches(metadata):
    assert metadata["checkpoint_sha256"] == checkpoint_digest(MODEL_DIR / "checkpoint")


def test_accuracy(metadata):
    assert metadata["test_accuracy"] >= 0.94
    assert metadata.get("test_images") == 10000


def test_model_is_small(metadata):
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024, f"{MODEL_DIR} is {size / 1e6:.1f} MB"

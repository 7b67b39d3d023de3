"""The shipped model (models/fashion-mnist): intact, accurate, small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    # The shipped model's target: >= 94.5% on the 10,000 test images with at most 1M parameters.
    assert metadata["test_accuracy"] >= 0.945
    assert metadata.get("test_images") == 10000
    assert metadata["param_count"] <= 1_000_000


def test_temperature_scaling_improves_every_calibration_figure(metadata):
    """Temperature fitted on the 5,000-image validation split; on the test set ECE, NLL and Brier all drop."""
    assert metadata["validation"]["images"] == 5000 and metadata["temperature"] > 0
    cal = metadata["test_calibration"]
    assert cal["bins"] == 15
    for key in ("ece", "nll", "brier"):
        assert cal["after_scaling"][key] < cal["before_scaling"][key], key


def test_served_confidences_are_calibrated(metadata):
    """The shipped model's goal: test-set ECE (15 equal-width bins) <= 1.0% after temperature scaling."""
    assert metadata["test_calibration"]["after_scaling"]["ece"] <= 0.010


@pytest.mark.timeout(120)
def test_evaluate_reproduces_the_recorded_predictions(metadata):
    """Every label as recorded, image by image; accuracy exactly; ECE, NLL, Brier within results.agreement's rule."""
    from results import metrics
    from train.evaluate import check_against_metadata, evaluate_model

    result = evaluate_model(MODEL_DIR)
    assert metrics.accuracy(result) == metadata["test_accuracy"]
    check = check_against_metadata(result, metadata)
    assert check is not None and check.compared == 10000
    assert check.ok, check.describe()


@pytest.mark.timeout(120)
def test_evaluate_matches_under_the_avx2_instruction_set(metadata):
    """XLA capped to AVX2 (what a machine without AVX-512 runs) still says "matches metadata.json".

    The cap only lowers the instruction set, so on an AVX2 machine this is the plain run again.
    """
    # Compiled afresh, not from the suite's compilation cache: this test is about the kernels themselves.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XLA_FLAGS"] = "--xla_cpu_max_isa=AVX2"
    out = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--model", str(MODEL_DIR)],
        cwd=MODEL_DIR.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "matches metadata.json", out.stdout


def test_model_is_small(metadata):
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024, f"{MODEL_DIR} is {size / 1e6:.1f} MB"

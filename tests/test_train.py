"""End to end: `python -m train` (smoke config, image folder), `python -m train.evaluate`, failures."""

from __future__ import annotations

import csv
import json
import re

import pytest
from helpers_train import (
    METADATA_KEYS,
    SHAPE_CLASSES,
    make_shape_folder,
    run_cli,
    shapes_models,
    smoke_model,
    train_smoke,
)

from train.checkpoint import checkpoint_digest
from train.data import FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return smoke_model(tmp_path_factory)


@pytest.mark.timeout(240)
def test_smoke_training_writes_model(smoke):
    meta = json.loads((smoke / "metadata.json").read_text())
    missing = [key for key in METADATA_KEYS if key not in meta]
    assert not missing, missing
    assert meta["dataset"] == "fashion_mnist"
    assert meta["class_names"] == list(FASHION_MNIST_CLASSES)
    assert meta["input_shape"] == [28, 28, 1]
    assert meta["config"]["name"] == "smoke" and meta["config"]["test_limit"] == 500
    assert meta["test_images"] == 500 and meta["train_images"] == 2048
    assert meta["test_accuracy"] > 0.2
    assert set(meta["per_class_accuracy"]) == set(FASHION_MNIST_CLASSES)
    assert all(acc is None or 0.0 <= acc <= 1.0 for acc in meta["per_class_accuracy"].values())
    assert isinstance(meta["param_count"], int) and meta["param_count"] > 0
    assert meta["train_time_s"] > 0
    assert set(meta["versions"]) >= {"jax", "flax", "optax"}
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["isa"] and "xla_flags" in meta["machine"]
    assert meta["test_predictions"]["n"] == 500
    assert meta["checkpoint_sha256"] == checkpoint_digest(smoke / "checkpoint")


@pytest.mark.timeout(240)
def test_evaluate_reproduces_metadata_accuracy(smoke, tmp_path):
    meta = json.loads((smoke / "metadata.json").read_text())
    csv_path = tmp_path / "predictions.csv"
    proc = run_cli("-m", "train.evaluate", "--model", str(smoke), "--limit", "500", "--predictions", str(csv_path))
    assert proc.returncode == 0, proc.stderr
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 501
    rows = list(csv.DictReader(lines))
    assert list(rows[0]) == ["index", "label", "prediction", "confidence"]
    assert [int(r["index"]) for r in rows] == list(range(500))
    correct = sum(r["label"] == r["prediction"] for r in rows)
    assert correct / 500 == meta["test_accuracy"]
    match = re.search(r"accuracy (\d+\.\d+)% \((\d+)/500\)", proc.stdout)
    assert match, proc.stdout
    assert int(match.group(2)) == correct
    assert all(0.0 < float(r["confidence"]) <= 1.0 for r in rows)
    assert "matches metadata.json" in proc.stdout.splitlines(), proc.stdout


@pytest.mark.timeout(240)
def test_evaluate_with_classes_missing_from_the_slice(smoke, capsys):
    """--limit small enough that some classes have no test image: reported, not a crash."""
    from train import evaluate

    assert evaluate.main(["--model", str(smoke), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "n/a" in out
    assert re.search(r"accuracy \d+\.\d+% \(\d/5\)", out), out


@pytest.mark.timeout(240)
def test_train_on_image_folder_then_predict(tmp_path_factory):
    """`python -m train` on a folder of pictures (the run's shared shapes models: test_evaluator serves them)."""
    images, workdir, _ = shapes_models(tmp_path_factory)
    meta = json.loads((workdir / "metadata.json").read_text())
    assert meta["dataset"] == "shapes"
    assert meta["class_names"] == list(SHAPE_CLASSES)
    assert meta["input_shape"] == [16, 16, 1]
    # 90 images: test_fraction 0.2 holds out 18; validation_size 0.1 of the other 72 holds out 7 more.
    assert meta["train_images"] == 65 and meta["test_images"] == 18 and meta["validation"]["images"] == 7
    assert meta["checkpoint_sha256"] == checkpoint_digest(workdir / "checkpoint")

    picture = images / "circle" / "003.png"
    proc = run_cli("-m", "train.predict", str(picture), "--model", str(workdir))
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"003\.png: label (\d) '([^']+)' confidence (\d+\.\d+)%", proc.stdout)
    assert match, proc.stdout
    assert match.group(2) in SHAPE_CLASSES
    assert SHAPE_CLASSES[int(match.group(1))] == match.group(2)


@pytest.mark.timeout(60)
def test_missing_dataset_is_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # smoke config + a scratch workdir: should the error ever not happen, nothing long runs or gets overwritten
    proc = train_smoke(tmp_path / "out", env={"FASHION_MNIST_DIR": str(empty)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: $FASHION_MNIST_DIR=")
    assert "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_too_few_images_for_a_batch_is_one_line_error(tmp_path):
    images = make_shape_folder(tmp_path / "shapes", per_class=2, size=8)
    proc = train_smoke(tmp_path / "out", "--config.dataset=folder", f"--config.image_dir={images}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # 6 pictures: 1 held out for testing, 1 of the other 5 for validation (smoke's validation_size 0.1)
    assert proc.stderr.splitlines() == ["error: 4 training images is fewer than one batch of 32"]


@pytest.mark.timeout(60)
def test_test_time_flip_without_training_flips_is_one_line_error(tmp_path):
    proc = train_smoke(tmp_path / "out", "--config.test_time_flip=True", "--config.augment.hflip=False")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: test_time_flip averages each image with its mirror image: train with augment.hflip=True"
    ]
    assert not (tmp_path / "out").exists()

"""The evaluator for any model on any dataset: your own test set, two models on one stream, calibration."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_train import SHAPE_CLASSES, make_shape_folder, train_smoke

from results import metrics
from results.compare import mcnemar_p_value
from results.metrics import calibration_from_confidences, calibration_report
from tests.conftest import REPO
from train.calibration import fit_temperature


# ------------------------------------------------------------------ calibration and McNemar, by hand
def test_ece_matches_a_hand_computed_value():
    # Bins of width 1/15: 0.95 and 0.97 share the last bin (14/15, 1]; 0.55 and 0.58 share bin 8 (8/15, 9/15].
    confidences = np.array([0.95, 0.97, 0.55, 0.58, 0.30])
    correct = np.array([True, False, True, True, False])
    # last bin: mean confidence 0.96, accuracy 0.5 -> gap 0.46, weight 2/5
    # bin 8: mean confidence 0.565, accuracy 1.0 -> gap 0.435, weight 2/5
    # bin 4 (0.2667, 0.3333]: confidence 0.30, accuracy 0 -> gap 0.30, weight 1/5
    expected = 0.4 * 0.46 + 0.4 * 0.435 + 0.2 * 0.30
    cal = calibration_from_confidences(confidences, correct)
    assert cal["ece"] == pytest.approx(expected, abs=1e-12)
    assert cal["max_gap"] == pytest.approx(0.46, abs=1e-12)
    assert cal["mean_confidence"] == pytest.approx(confidences.mean())
    assert [b["count"] for b in cal["bins"]] == [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2]


def test_nll_brier_and_temperature_on_a_known_input():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1])
    report = calibration_report(probs, labels)
    assert report["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.7)) / 3)
    assert report["brier"] == pytest.approx(((0.2**2 * 2) + (0.6**2 * 2) + (0.3**2 * 2)) / 3)
    # An over-confident model (right 3 times in 4 at 99%) is cooled: T > 1.
    over = np.array([[0.99, 0.01]] * 4)
    assert fit_temperature(over, np.array([0, 0, 0, 1])) > 1.5


def mcnemar_by_hand(b: int, c: int) -> float:
    """2·P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1: the exact two-sided McNemar p-value."""
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def test_mcnemar_exact_p_values():
    # scipy's binomtest sums the same binomial terms in another order: equal to a relative 1e-12.
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(1, 5) == pytest.approx(2 * (1 + 6) / 2**6, rel=1e-12)  # 0.21875
    assert mcnemar_p_value(0, 10) == pytest.approx(2 / 2**10, rel=1e-12)
    assert mcnemar_p_value(7, 7) == 1.0
    for b, c in ((3, 17), (40, 61), (250, 190), (0, 1)):
        assert mcnemar_p_value(b, c) == pytest.approx(mcnemar_by_hand(b, c), rel=1e-12)


# ------------------------------------------------------------------ your own data through the broker
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An image-folder dataset and two small models trained on it (different learning rates)."""
    root = tmp_path_factory.mktemp("evaluator")
    images = make_shape_folder(root / "shapes", per_class=30, size=16)
    models = []
    for name, lr in (("a", "0.003"), ("b", "0.0003")):
        proc = train_smoke(
            root / name, "--config.dataset=folder", f"--config.image_dir={images}", "--config.image_shape=(16,16,1)",
            "--config.batch_size=16", "--config.num_epochs=3", f"--config.learning_rate={lr}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        models.append(root / name)
    return images, models[0], models[1]


def run_streamer(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def only_report(folder: Path) -> dict:
    (path,) = folder.glob("*/report.json")
    return json.loads(path.read_text())


@pytest.mark.emulator
@pytest.mark.timeout(400)
@pytest.mark.parametrize("content_type", ["raw", "png"])
def test_your_folder_dataset_through_the_real_serving_path(emulator, suffix, shapes, content_type, tmp_path):
    from streamer.datasets import load_dataset
    from train.checkpoint import load_metadata
    from train.evaluate import evaluate_model

    images, model, _ = shapes
    proc = run_streamer(
        "--dataset", f"folder:{images}", "--model", str(model), "--content-type", content_type,
        "--topic-suffix", suffix, "--rate", "0", "--reports-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = only_report(tmp_path)
    test = load_dataset(f"folder:{images}", load_metadata(model))
    assert report["counts"]["sent"] == report["counts"]["answered"] == len(test) == 18  # 20% of 90 pictures
    assert report["class_names"] == list(SHAPE_CLASSES)
    offline = evaluate_model(model, dataset=test)
    assert report["accuracy"] == metrics.accuracy(offline)
    assert report["offline"]["identical"] is True
    assert [p["prediction"] for p in sorted(report["predictions"], key=lambda p: p["index"])] == (
        offline.answers.prediction.tolist()
    )
    assert report["calibration"]["bins"] and 0 <= report["calibration"]["ece"] <= 1


@pytest.mark.emulator
@pytest.mark.timeout(400)
def test_two_models_on_one_stream(emulator, suffix, shapes, tmp_path):
    images, model_a, model_b = shapes
    proc = run_streamer(
        "--dataset", f"folder:{images}", "--model", str(model_a), "--compare", str(model_b),
        "--topic-suffix", suffix, "--rate", "0", "--reports-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = only_report(tmp_path)
    cmp, b = report["compare"], report["compare"]["b"]
    assert report["counts"]["answered"] == b["counts"]["answered"] == 18
    assert report["model"]["identity"] != b["model"]["identity"]
    assert report["offline"]["identical"] and b["offline"]["identical"]
    pa = {p["index"]: p for p in report["predictions"]}
    pb = {p["index"]: p for p in b["predictions"]}
    right_a = {i: p["prediction"] == p["label"] for i, p in pa.items()}
    right_b = {i: p["prediction"] == p["label"] for i, p in pb.items()}
    mc = cmp["mcnemar"]
    assert mc["a_right_b_wrong"] == sum(right_a[i] and not right_b[i] for i in pa)
    assert mc["a_wrong_b_right"] == sum(right_b[i] and not right_a[i] for i in pa)
    assert mc["both_right"] + mc["both_wrong"] + mc["a_right_b_wrong"] + mc["a_wrong_b_right"] == 18
    assert mc["p_value"] == pytest.approx(mcnemar_by_hand(mc["a_right_b_wrong"], mc["a_wrong_b_right"]), rel=1e-12)
    assert cmp["disagreements"] == sum(pa[i]["prediction"] != pb[i]["prediction"] for i in pa)
    folder = next(tmp_path.glob("*/"))
    assert (folder / "disagreements.png").is_file() and (folder / "reliability.png").is_file()
    assert "McNemar" in (folder / "report.md").read_text()
    # Two saved runs compared: a diff of this run against itself says "same" model and +0.00 pts.
    diff = run_streamer("report", "--diff", str(folder), str(folder))
    assert diff.returncode == 0 and "same" in diff.stdout and "+0.00 pts" in diff.stdout


def test_a_dataset_whose_classes_differ_stops_before_anything_starts(shapes, tmp_path):
    images, model, _ = shapes
    other = make_shape_folder(tmp_path / "other", per_class=2, size=16, classes=("circle", "square", "zigzag"))
    proc = run_streamer("--dataset", f"folder:{other}", "--model", str(model), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "zigzag" in lines[0] and "stripes" in lines[0], proc.stderr
    assert "emulator" not in proc.stderr.lower() and "Traceback" not in proc.stderr

"""The evaluator for any model on any dataset, through the emulator: your own test set, two models on one stream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_train import SHAPE_CLASSES, make_shape_folder, shapes_models
from test_figures import mcnemar_by_hand

from broker.pubsub import EMULATOR_PROJECT, Topology
from results import metrics
from tests.conftest import REPO, ServerProcess, delete_subscription, fresh_topology, metered_server, own_results


# ------------------------------------------------------------------ your own data through the broker
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An image-folder dataset and two small models trained on it (seeds 0 and 1), shared with test_train."""
    return shapes_models(tmp_path_factory)


@pytest.fixture(scope="module")
def serving_a(emulator, shapes) -> Iterator[str]:
    """A ready `python -m server` for model a on its own topology, shared by the runs that only stream to it:
    one server start (imports, model load, warm-up: 8-10 s on the AVX2 machine) instead of one per run.
    Yields its topic suffix."""
    with metered_server(shapes[1]) as (server, _, _):
        yield server.suffix


@pytest.fixture
def a_suffix(serving_a) -> Iterator[str]:
    """Model a's server for one run, which sees only its own results (conftest's `own_results`)."""
    with own_results(fresh_topology(serving_a).results_subscription_path):
        yield serving_a


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
def test_your_folder_dataset_through_the_real_serving_path(a_suffix, shapes, content_type, tmp_path):
    from streamer.datasets import load_dataset
    from train.checkpoint import load_metadata
    from train.evaluate import evaluate_model

    images, model, _ = shapes
    proc = run_streamer(
        "--dataset", f"folder:{images}", "--model", str(model), "--content-type", content_type,
        "--server", "external", "--topic-suffix", a_suffix, "--rate", "0", "--reports-dir", str(tmp_path),
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
def test_two_models_on_one_stream(a_suffix, shapes, tmp_path):
    """Model a's running server on the requests subscription, model b's on its own subscription of the same topic
    (`--compare` names it: the configured name + "-compare"), both already running (`--server external`)."""
    from configs import load_config
    from streamer.session import COMPARE

    images, model_a, model_b = shapes
    broker = load_config(None, "stream.py").broker
    compare = broker.requests_subscription + COMPARE
    compare_topo = Topology.from_names(
        EMULATOR_PROJECT, {**broker.to_dict(), "requests_subscription": compare}, a_suffix
    )
    server_b = ServerProcess(a_suffix, model_b, "--subscription", compare)
    try:
        server_b.wait_ready()
        proc = run_streamer(
            "--dataset", f"folder:{images}", "--model", str(model_a), "--compare", str(model_b),
            "--server", "external", "--topic-suffix", a_suffix, "--rate", "0", "--reports-dir", str(tmp_path),
        )  # fmt: skip
    finally:
        server_b.kill()
        # later runs on this topic must not feed a subscription nobody serves
        delete_subscription(compare_topo.requests_subscription_path)
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

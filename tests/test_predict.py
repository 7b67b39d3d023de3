"""`python -m train.predict` against a smoke model trained once for the session."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers_train import run_cli, smoke_model
from PIL import Image

from train.data import FASHION_MNIST_CLASSES

LINE = re.compile(r"^(?P<name>.+): label (?P<label>\d+) '(?P<cls>[^']+)' confidence (?P<conf>\d+\.\d+)%")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return smoke_model(tmp_path_factory)


def _check_line(line: str) -> re.Match:
    match = LINE.match(line)
    assert match, line
    assert match["cls"] in FASHION_MNIST_CLASSES
    assert FASHION_MNIST_CLASSES[int(match["label"])] == match["cls"]
    assert 0.0 < float(match["conf"]) <= 100.0
    return match


@pytest.mark.timeout(240)
def test_predict_png(model, tmp_path):
    # a trouser-ish picture: two dark legs on a white background, 60x90 RGB (gets inverted and resized)
    arr = np.full((90, 60, 3), 255, np.uint8)
    arr[5:85, 12:28] = (30, 30, 90)
    arr[5:85, 32:48] = (30, 30, 90)
    arr[5:20, 12:48] = (30, 30, 90)
    png = tmp_path / "trousers.png"
    Image.fromarray(arr).save(png)
    proc = run_cli("-m", "train.predict", str(png), "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    match = _check_line(lines[0])
    assert match["name"] == str(png)
    assert "[next: " in lines[0]


@pytest.mark.timeout(240)
def test_predict_index(model):
    proc = run_cli("-m", "train.predict", "--index", "0", "--index", "1", "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    first, second = (_check_line(line) for line in lines)
    assert first["name"] == "test[0]" and "(true: Ankle boot)" in lines[0]
    assert second["name"] == "test[1]" and "(true: Pullover)" in lines[1]


@pytest.mark.timeout(240)
def test_predict_non_image_is_exit_2(model, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("definitely not a picture\n")
    proc = run_cli("-m", "train.predict", str(bogus), "--model", str(model))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "notes.png: not a readable image" in lines[0]
    assert proc.stdout == ""


@pytest.mark.timeout(60)
def test_predict_missing_model_is_exit_2(tmp_path):
    png = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(png)
    proc = run_cli("-m", "train.predict", str(png), "--model", str(tmp_path / "no-model"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "metadata.json not found" in lines[0], proc.stderr


@pytest.mark.timeout(240)
def test_predict_index_out_of_range(model):
    proc = run_cli("-m", "train.predict", "--index", "10000", "--model", str(model))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --index 10000 is outside the test set (0..9999)"]

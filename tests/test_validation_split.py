"""The validation split follows the dataset's size: the README's own-dataset command trains a small folder,
and the shipped recipes keep exactly the split they were trained with."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
from helpers_train import ROOT, SHAPE_CLASSES, make_shape_folder, run_cli
from hypothesis import given
from hypothesis import strategies as st

from configs import load_config
from train.splits import validation_count

SHIPPED = {"default": ROOT / "models" / "fashion-mnist", "quick": ROOT / "models" / "fashion-mnist-quick"}


@given(n=st.integers(2, 2_000_000), count=st.integers(1, 200_000))
def test_a_count_is_used_as_given_only_on_ten_times_as_many_images(n, count):
    held = validation_count(n, float(count))
    tenth = max(1, round(n * 0.1))
    assert held == (count if n >= 10 * count else tenth)
    assert held == min(count, tenth)  # the two rules meet at n = 10 x count: no jump
    assert validation_count(n + 1, float(count)) >= held  # one more image never shrinks the validation set
    assert 1 <= held <= max(1, n // 2)


@given(n=st.integers(2, 2_000_000), fraction=st.floats(0.001, 0.5))
def test_a_fraction_is_used_as_given(n, fraction):
    assert validation_count(n, fraction) == max(1, int(round(n * fraction)))


@pytest.mark.parametrize("name", ["default", "quick"])
def test_shipped_recipes_keep_their_split(name):
    """configs/default.py and quick.py hold out exactly the 5,000 images their shipped models were trained with."""
    meta_path = SHIPPED[name] / "metadata.json"
    if not meta_path.is_file():
        pytest.skip(f"{meta_path} is not there")
    meta = json.loads(meta_path.read_text())
    config = load_config(ROOT / "configs" / f"{name}.py", "default.py")
    assert (config.validation_size, config.seed) == (meta["config"]["validation_size"], meta["config"]["seed"])
    n = meta["train_images"] + meta["validation"]["images"]
    assert n == 60_000
    assert validation_count(n, config.validation_size) == meta["validation"]["images"] == 5000


@pytest.mark.timeout(120)
def test_shipped_models_reproduce_their_validation_accuracy():
    """The split made today is the one the shipped models chose their epoch on: same images, same accuracy."""
    from results import metrics
    from train.data import load_fashion_mnist
    from train.evaluate import evaluate_model
    from train.splits import split_validation

    metas = {name: SHIPPED[name] / "metadata.json" for name in SHIPPED}
    if not all(path.is_file() for path in metas.values()):
        pytest.skip("the shipped models are not there")
    try:
        full = load_fashion_mnist("train")
    except Exception as err:  # DatasetError: not installed
        pytest.skip(str(err))
    for name, path in metas.items():
        meta = json.loads(path.read_text())
        config = load_config(ROOT / "configs" / f"{name}.py", "default.py")
        train_ds, val_ds = split_validation(full, config.validation_size, config.seed)
        assert (len(train_ds), len(val_ds)) == (meta["train_images"], meta["validation"]["images"])
        # today's split, spelled out: the first 5,000 of the seeded permutation
        expected = np.sort(np.random.default_rng([config.seed, 1]).permutation(len(full))[:5000])
        np.testing.assert_array_equal(val_ds.images, full.images[expected])
        accuracy = metrics.accuracy(evaluate_model(SHIPPED[name], dataset=val_ds))
        assert accuracy == meta["validation"]["accuracy"], name


def readme_own_dataset_command() -> list[str]:
    """The first command of the README's "Train on another dataset" section, as argv."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Train on another dataset", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    command = block.replace("\\\n", " ").splitlines()[0]
    return shlex.split(command)


@pytest.mark.timeout(180)
def test_readme_own_dataset_command_trains_a_900_image_folder(tmp_path):
    """The README's command as written (only fewer epochs) on 900 pictures of 3 classes, no test split."""
    argv = readme_own_dataset_command()
    assert argv[:2] == ["python", "-m"] and "--config.image_dir=/path/to/pictures" in argv
    pictures = make_shape_folder(tmp_path / "pictures", per_class=300, size=16)
    workdir = tmp_path / "mine"
    argv = [a.replace("/path/to/pictures", str(pictures)).replace("/tmp/mine", str(workdir)) for a in argv]
    proc = run_cli(*argv[1:], "--config.num_epochs=1", timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((workdir / "metadata.json").read_text())
    assert meta["class_names"] == list(SHAPE_CLASSES) and meta["input_shape"] == [32, 32, 1]
    # 900 pictures: 20% (180) held out for testing; of the other 720, the recipe's 5,000-image
    # validation count is more than 10%, so 10% (72) is held out and 648 train.
    assert meta["test_images"] == 180
    assert meta["validation"]["images"] == 72
    assert meta["train_images"] == 648
    assert meta["config"]["validation_size"] == 5000.0 and "capped at 10%" in meta["validation"]["rule"]
    assert meta["test_accuracy"] > 1 / 3  # it learned something in one epoch of 5 batches

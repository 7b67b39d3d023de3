"""Corruptions (train/corruptions.py), robustness figures (results/robustness.py) and the offline robustness
evaluation (`python -m train.evaluate --corruptions ...`)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers_train import mains_in_one_process
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import stats

from results.robustness import (
    CLEAN,
    Outcomes,
    cell_matrix,
    corruption_errors,
    paired_difference,
    robustness_figures,
)
from results.stats import wilson_bounds
from tests.conftest import SHIPPED_MODEL
from train.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corrupt_dataset,
    parse_corruptions,
    parse_severities,
    select_sources,
)
from train.data import Dataset, load_fashion_mnist

NAMES = list(CORRUPTIONS)
FAMILIES = {name: c.family for name, c in CORRUPTIONS.items()}
N_IMAGES = 40  # the first 40 test images: each severity step adds >= 1.7 gray levels (7%) of mean abs. difference


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_fashion_mnist("test", N_IMAGES).images


def colour_images(gray: np.ndarray, shape: tuple[int, int] = (36, 42)) -> np.ndarray:
    """Fashion-MNIST garments resized to a non-square size, tinted on a coloured background."""
    rng = np.random.default_rng(0)
    out = []
    for img in gray:
        big = np.asarray(Image.fromarray(img[..., 0]).resize(shape[::-1], Image.Resampling.BILINEAR)) / 255.0
        tint, background = rng.uniform(0.3, 1, 3), rng.uniform(0, 1, 3)
        out.append(np.rint(255 * (big[..., None] * tint + (1 - big[..., None]) * background)).astype(np.uint8))
    return np.stack(out)


def mean_abs_diff(name: str, severity: int, imgs: np.ndarray) -> float:
    """The stated measure: mean absolute pixel difference (0..255) from the clean image, averaged over images."""
    return float(
        np.mean([np.abs(corrupt(im, name, severity, (0, i)).astype(float) - im).mean() for i, im in enumerate(imgs)])
    )


# ------------------------------------------------------------------ the registry
def test_registry_covers_the_four_families_with_five_severities():
    assert len(CORRUPTIONS) >= 12
    wanted = {
        "noise": {"gaussian_noise", "shot_noise", "impulse_noise"},
        "blur": {"defocus_blur", "motion_blur", "glass_blur"},
        "geometric": {"rotate", "shear", "scale", "translate"},
        "digital": {"contrast", "brightness", "pixelate", "jpeg"},
    }
    for family, names in wanted.items():
        assert names <= {n for n, f in FAMILIES.items() if f == family}, family
    for c in CORRUPTIONS.values():
        assert len(c.params) == len(SEVERITIES) == 5, c.name


# ------------------------------------------------------------------ each corruption
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_same_shape_and_dtype_and_changes_the_image(name, images):
    before = images.copy()
    for i, img in enumerate(images[:8]):
        for severity in SEVERITIES:
            out = corrupt(img, name, severity, (0, i))
            assert out.dtype == np.uint8 and out.shape == img.shape
            np.testing.assert_array_equal(out, corrupt(img.copy(), name, severity, (0, i)))
            assert not np.array_equal(out, img), (name, severity, i)
    np.testing.assert_array_equal(images, before, "the source images were modified")


@pytest.mark.parametrize("name", NAMES)
def test_further_from_clean_at_every_severity_step(name, images):
    """Mean absolute difference from the clean image, averaged over the first 40 test images, rises at each step."""
    distances = [mean_abs_diff(name, s, images) for s in SEVERITIES]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances


@pytest.mark.parametrize("name", NAMES)
def test_colour_and_other_sizes(name, images):
    colour = colour_images(images[:12])  # (36, 42, 3)
    distances = [mean_abs_diff(name, s, colour) for s in SEVERITIES]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    flat = np.asarray(Image.fromarray(images[0, ..., 0]).resize((20, 20)))  # (H, W), no channel axis
    tall = np.repeat(np.repeat(images[1], 2, axis=0), 3, axis=1)[:, :70]  # (56, 70, 1)
    for img in (flat, tall, colour[0]):
        for severity in (1, 5):
            out = corrupt(img, name, severity, 7)
            assert out.shape == img.shape and out.dtype == np.uint8
            assert not np.array_equal(out, img)
            np.testing.assert_array_equal(out, corrupt(img, name, severity, 7))


def test_random_corruptions_depend_on_the_seed_and_share_it_across_severities(images):
    img = images[0]
    assert not np.array_equal(corrupt(img, "gaussian_noise", 3, (0, 0)), corrupt(img, "gaussian_noise", 3, (0, 1)))
    # One draw for every severity: pixel by pixel, severity 5's noise is severity 1's scaled up (before clipping),
    # so no pixel moves less at severity 5.
    low = corrupt(img, "gaussian_noise", 1, 3).astype(int) - img
    high = corrupt(img, "gaussian_noise", 5, 3).astype(int) - img
    assert (np.abs(high) >= np.abs(low) - 1).all() and (np.sign(high) * np.sign(low) >= 0).all()
    # Impulse noise hits a superset of pixels as severity rises.
    hit1 = corrupt(img, "impulse_noise", 1, 3) != img
    hit5 = corrupt(img, "impulse_noise", 5, 3) != img
    assert (hit5 | ~hit1).all()


def test_bad_arguments_are_refused(images):
    for call in (
        lambda: corrupt(images[0], "snow", 1),
        lambda: corrupt(images[0], "fog", 0),
        lambda: corrupt(images[0], "fog", 6),
        lambda: corrupt(images[0].astype(np.float32), "fog", 1),
        lambda: corrupt(images[:2], "fog", 1),
        lambda: corrupt(images[0], "fog", 1, -1),
    ):
        with pytest.raises(ValueError):
            call()


# ------------------------------------------------------------------ flags
def test_parse_corruptions_and_severities():
    assert parse_corruptions("all") == tuple(CORRUPTIONS)
    assert parse_corruptions("fog, rotate,fog") == ("fog", "rotate")
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("5,1-2") == (1, 2, 5)
    assert parse_severities("3") == (3,)
    for bad in ("", "snow", "fog,snow", "ALL", ","):
        with pytest.raises(ValueError, match="corruption"):
            parse_corruptions(bad)
    for bad in ("", "0", "6", "0-5", "1-6", "5-1", "a", "1.5", "-1", "1--2"):
        with pytest.raises(ValueError, match="severities"):
            parse_severities(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_any_text_is_parsed_or_refused_with_a_value_error(text):
    try:
        names = parse_corruptions(text)
        assert names and set(names) <= set(CORRUPTIONS)
    except ValueError as err:
        assert "\n" not in str(err)
    try:
        sev = parse_severities(text)
        assert sev and set(sev) <= set(SEVERITIES) and list(sev) == sorted(set(sev))
    except ValueError as err:
        assert "\n" not in str(err)


def test_bad_flags_exit_2_with_one_line_before_jax_loads():
    cases = [
        ["--corruptions", "snow"],
        ["--corruptions", "all", "--severities", "0-5"],
        ["--corruptions", "all", "--severities", "6"],
        ["--corruptions", "all", "--per-cell", "0"],
        ["--corruptions", "all", "--per-cell", "many"],
        ["--corruptions", "all", "--reference", "/nonexistent-model"],
        ["--per-cell", "10"],
        ["--corruptions", "fog", "--limit", "-1"],  # (0 is the whole test set)
    ]
    results, heavy = mains_in_one_process("train.evaluate", cases, ("jax", "flax", "orbax"))
    assert heavy == []
    for argv, (code, err) in zip(cases, results):
        assert code == 2, argv
        assert re.match(r"(python -m train\.evaluate: )?error: ", err) and err.count("\n") == 1, (argv, err)


# ------------------------------------------------------------------ corrupted sets
def test_corrupt_dataset_pairs_every_cell_with_the_same_sources(images):
    ds = Dataset(images, np.arange(len(images), dtype=np.int32) % 10, tuple("0123456789"), "t")
    built = corrupt_dataset(ds, ["fog", "rotate"], [2, 5], per_cell=6, seed=3, progress=False)
    assert len(built) == 24 and built.images.shape == (24, 28, 28, 1)
    assert list(built.sources) == sorted(set(built.sources)) and len(built.sources) == 6
    np.testing.assert_array_equal(built.sources, select_sources(len(images), 6, 3))
    assert [(c, s) for c, s in zip(built.corruption[::6], built.severity[::6])] == [
        ("fog", 2),
        ("fog", 5),
        ("rotate", 2),
        ("rotate", 5),
    ]
    for k in range(24):
        i = int(built.source[k])
        assert built.source[k] == built.sources[k % 6] and built.labels[k] == ds.labels[i]
        np.testing.assert_array_equal(
            built.images[k], corrupt(images[i], built.corruption[k], built.severity[k], (3, i))
        )
    again = corrupt_dataset(ds, ["fog", "rotate"], [2, 5], per_cell=6, seed=3, progress=False)
    np.testing.assert_array_equal(again.images, built.images)
    assert built.seconds > 0
    assert len(corrupt_dataset(ds, ["jpeg"], [1], per_cell=1000, progress=False).sources) == len(images)
    assert not np.array_equal(select_sources(1000, 50, 0), select_sources(1000, 50, 1))
    assert set(select_sources(1000, 50, 0)) < set(select_sources(1000, 200, 0))  # nested across sizes
    with pytest.raises(ValueError):
        corrupt_dataset(ds, ["snow"], [1], per_cell=5, progress=False)
    with pytest.raises(ValueError):
        select_sources(10, 0)


# ------------------------------------------------------------------ figures
def test_wilson_interval_matches_scipy():
    """The cells' interval is results.stats' Wilson interval."""
    for k, n in ((0, 10), (3, 10), (10, 10), (475, 500), (9451, 10000)):
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        lo, hi = wilson_bounds(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def paired_difference_interval(first, second):
    interval = paired_difference(first, second)
    return interval.estimate, interval.lo, interval.hi


def test_paired_difference_interval_behaves_and_covers():
    """A cell's drop: results.stats' Newcombe paired interval, on the clean and corrupted outcomes."""
    same = np.ones(50, bool)
    diff, lo, hi = paired_difference_interval(same, same)
    assert diff == 0 and lo < 0 < hi  # no discordant pairs is not certainty
    first = np.array([True] * 80 + [False] * 20)
    second = np.array([True] * 50 + [False] * 50)
    diff, lo, hi = paired_difference_interval(first, second)
    assert diff == pytest.approx(0.3) and 0.2 < lo < 0.3 < hi < 0.4
    # Coverage, simulated: the clean image right with p 0.9; its corrupted copy right when the image is easy
    # (u < 0.6) or by luck (v < 0.1): p 0.64, correlated with the clean outcome. 2,000 runs of 200 pairs.
    rng = np.random.default_rng(0)
    true, hits = 0.9 - (0.6 + 0.4 * 0.1), 0
    for _ in range(2000):
        u, v = rng.random(200), rng.random(200)
        _, lo, hi = paired_difference_interval(u < 0.9, (u < 0.6) | (v < 0.1))
        hits += lo <= true <= hi
    assert 0.935 <= hits / 2000 <= 0.975, hits / 2000


def outcomes_from(table: dict[tuple[str, int], list[int]], sources=None) -> Outcomes:
    """{(corruption, severity): per-source 0/1 correctness} -> Outcomes (confidence 0.9 when right, 0.6 when not)."""
    rows = [(c, s, j, v) for (c, s), values in table.items() for j, v in enumerate(values)]
    sources = sources if sources is not None else list(range(100, 100 + len(next(iter(table.values())))))
    return Outcomes(
        source=np.array([sources[j] for _, _, j, _ in rows]),
        corruption=np.array([c for c, _, _, _ in rows]),
        severity=np.array([s for _, s, _, _ in rows]),
        correct=np.array([bool(v) for *_, v in rows]),
        confidence=np.array([0.9 if v else 0.6 for *_, v in rows]),
    )


def test_robustness_figures_on_a_hand_built_run():
    table = {
        (CLEAN, 0): [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # 90%
        ("fog", 1): [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # 80%
        ("fog", 5): [1, 1, 1, 1, 0, 0, 0, 0, 0, 1],  # 50%: one image the clean run got wrong is right here
        ("rotate", 1): [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # 100%
        ("rotate", 5): [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # 30%
    }
    families = {"fog": "weather", "rotate": "geometric"}
    fig = robustness_figures(outcomes_from(table), families, resamples=200)
    assert fig["clean"]["accuracy"] == 0.9 and fig["per_cell"] == 10
    cells = {(c["corruption"], c["severity"]): c for c in fig["cells"]}
    assert cells[("fog", 5)]["accuracy"] == 0.5 and cells[("fog", 5)]["drop"] == pytest.approx(0.4)
    assert cells[("rotate", 1)]["drop"] == pytest.approx(-0.1)
    for c in fig["cells"]:
        assert c["interval"][0] <= c["accuracy"] <= c["interval"][1]
        assert c["drop_interval"][0] <= c["drop"] <= c["drop_interval"][1]
        # ECE with confidence 0.9 when right and 0.6 when wrong, one bin each: |0.9 - 1| p + |0.6 - 0| (1 - p)
        assert c["ece"] == pytest.approx(0.1 * c["accuracy"] + 0.6 * (1 - c["accuracy"]))
    assert fig["corruptions"]["fog"]["accuracy"] == pytest.approx(0.65)
    assert fig["families"]["geometric"]["accuracy"] == pytest.approx(0.65)
    assert fig["mean_corrupted"]["accuracy"] == pytest.approx(0.65)
    assert fig["mean_corrupted"]["drop"] == pytest.approx(0.25)
    assert [(c["corruption"], c["severity"]) for c in fig["worst"]][:2] == [("rotate", 5), ("fog", 5)]


def test_corruption_errors_follow_the_imagenet_c_definitions():
    model = {
        (CLEAN, 0): [1] * 9 + [0],  # error 10%
        ("fog", 1): [1] * 8 + [0] * 2,  # 20%
        ("fog", 2): [1] * 6 + [0] * 4,  # 40%
        ("jpeg", 1): [1] * 9 + [0],  # 10%
        ("jpeg", 2): [1] * 7 + [0] * 3,  # 30%
    }
    reference = {
        (CLEAN, 0): [1] * 8 + [0] * 2,  # error 20%
        ("fog", 1): [1] * 6 + [0] * 4,  # 40%
        ("fog", 2): [1] * 4 + [0] * 6,  # 60%
        ("jpeg", 1): [1] * 8 + [0] * 2,  # 20%: the reference loses nothing at jpeg 1 ...
        ("jpeg", 2): [1] * 8 + [0] * 2,  # ... nor at 2: relative CE undefined
    }
    out = corruption_errors(outcomes_from(model), outcomes_from(reference), resamples=200)
    assert out["corruptions"]["fog"]["ce"] == pytest.approx((0.2 + 0.4) / (0.4 + 0.6))
    assert out["corruptions"]["fog"]["relative_ce"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.4))
    assert out["corruptions"]["jpeg"]["ce"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.2))
    assert out["corruptions"]["jpeg"]["relative_ce"] is None and out["relative_undefined"] == ["jpeg"]
    assert out["mce"] == pytest.approx((0.6 + 1.0) / 2)
    assert out["relative_mce"] == pytest.approx(0.4 / 0.6)
    itself = corruption_errors(outcomes_from(model), outcomes_from(model), resamples=200)
    assert itself["mce"] == pytest.approx(1.0) and itself["mce_interval"] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        corruption_errors(outcomes_from(model), outcomes_from(model, sources=list(range(10))))


def test_cells_must_pair_with_the_clean_images():
    unpaired = outcomes_from({(CLEAN, 0): [1, 1, 0], ("fog", 1): [1, 0, 0]})
    broken = Outcomes(
        *(getattr(unpaired, f)[:-1] for f in ("source", "corruption", "severity", "correct", "confidence"))
    )
    with pytest.raises(ValueError, match="exactly once"):
        cell_matrix(broken)
    with pytest.raises(ValueError, match="clean"):
        cell_matrix(outcomes_from({("fog", 1): [1, 0]}))


def test_predict_probs_batches_exactly_like_predict_in_batches():
    """Chunked for the progress bar, yet the same batches: a predict that depends on the whole batch agrees."""
    from train.evaluate import predict_probs
    from train.model import predict_in_batches

    class Fake:
        meta = {"eval_batch_size": 7}
        state = None

        @staticmethod
        def predict(state, x):
            x = np.asarray(x, np.float64).reshape(len(x), -1)
            return np.stack([x.mean(1), x.mean(1) - x.mean()], axis=1)  # depends on the batch's mean

    x = np.random.default_rng(0).integers(0, 256, (163, 4, 4, 1), dtype=np.uint8)
    np.testing.assert_array_equal(predict_probs(Fake, x), predict_in_batches(Fake.predict, None, x, 7))


# ------------------------------------------------------------------ the shipped model
@pytest.mark.timeout(120)
def test_shipped_model_loses_accuracy_at_severity_5():
    """On 200 images per cell, severity 5 is below clean for at least 10 corruptions, each one significantly:
    the paired 95% interval of the drop excludes 0 (a 200-image cell alone would be +-4 to 7 points wide)."""
    if not (SHIPPED_MODEL / "metadata.json").is_file():
        pytest.skip("the shipped model is not there")
    from train.evaluate import evaluate_robustness

    result = evaluate_robustness(SHIPPED_MODEL, severities=(5,), per_cell=200, resamples=100, progress=False)
    figures = result["model"]["figures"]
    assert figures["per_cell"] == 200 and len(figures["cells"]) == len(CORRUPTIONS)
    significant = [c["corruption"] for c in figures["cells"] if c["drop_interval"][0] > 0]
    assert len(significant) >= 10, figures["cells"]
    # The clean subset is a fair sample: its accuracy interval holds the full test set's 94.51%.
    lo, hi = figures["clean"]["interval"]
    assert lo <= 0.9451 <= hi

"""Robustness figures: accuracy and calibration per corruption x severity, the paired drop against clean,
per-family means, the worst cells, and Corruption Error (CE, mCE, relative mCE) against a reference model.

Pure functions of per-image outcomes (which cell, which source image, right or wrong, how confident), so the
offline evaluation and a streamed run compute the same figures from the same outcomes. The clean images are
one more cell, named CLEAN with severity 0.

Every figure has an interval (95% by default):
- a cell's accuracy: Wilson score interval (keeps inside 0..1 and does not collapse at 0 or 100% errors);
- a cell's drop against clean: Newcombe's hybrid score interval for paired proportions (1998, method 10):
  the same source images, so the pairing removes the between-image variance;
- means over cells (family, corruption, all) and CE / mCE: a bootstrap over source images, resampling the
  same images in every cell and for both models (the cells are paired through their shared sources);
- ECE: the same bootstrap (ECE is biased upward on small cells: 500 images add about a point).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from results.metrics import ECE_BINS, calibration_from_confidences

CLEAN = "clean"
LEVEL = 0.95
# Bootstrap resamples. On the shipped model's 500-image run, the bounds of the mean corrupted accuracy moved by
# up to 0.3 point across 8 bootstrap seeds.
RESAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """One model's per-image outcomes of a robustness run; the clean images are the cell (CLEAN, 0)."""

    source: np.ndarray  # int (N,): the source image's index in the dataset
    corruption: np.ndarray  # str (N,)
    severity: np.ndarray  # int (N,): 1..5, 0 for clean
    correct: np.ndarray  # bool (N,)
    confidence: np.ndarray  # float (N,): the top-1 probability

    @classmethod
    def from_predictions(
        cls,
        source: Sequence[int],
        corruption: Sequence[str],
        severity: Sequence[int],
        labels: Sequence[int],
        predictions: Sequence[int],
        confidences: Sequence[float],
    ) -> Outcomes:
        return cls(
            source=np.asarray(source, np.int64),
            corruption=np.asarray(corruption, str),
            severity=np.asarray(severity, np.int64),
            correct=np.asarray(predictions) == np.asarray(labels),
            confidence=np.asarray(confidences, np.float64),
        )


@dataclasses.dataclass(frozen=True)
class CellMatrix:
    """Outcomes pivoted to (cell, source): row k is cells[k], column j is sources[j]."""

    cells: list[tuple[str, int]]  # corrupted cells, in first-seen order
    sources: np.ndarray
    correct: np.ndarray  # bool (cells, sources)
    confidence: np.ndarray  # float (cells, sources)
    clean_correct: np.ndarray  # bool (sources,)
    clean_confidence: np.ndarray


def cell_matrix(outcomes: Outcomes) -> CellMatrix:
    """Pivot outcomes to one row per cell; every cell, clean included, must hold each source exactly once."""
    keys = list(zip(outcomes.corruption.tolist(), outcomes.severity.tolist()))
    cells = list(dict.fromkeys(keys))
    if (CLEAN, 0) not in cells:
        raise ValueError("the outcomes have no clean cell (corruption 'clean', severity 0)")
    cells.remove((CLEAN, 0))
    sources = np.unique(outcomes.source)
    row = {cell: k for k, cell in enumerate([(CLEAN, 0), *cells])}
    rows = np.array([row[k] for k in keys], np.int64)
    cols = np.searchsorted(sources, outcomes.source)
    filled = np.zeros((len(row), len(sources)), np.int64)
    np.add.at(filled, (rows, cols), 1)
    if (filled != 1).any():
        bad = [c for c, k in row.items() if (filled[k] != 1).any()][0]
        raise ValueError(f"cell {bad} does not hold each of the {len(sources)} source images exactly once")
    correct = np.zeros(filled.shape, bool)
    confidence = np.zeros(filled.shape)
    correct[rows, cols] = outcomes.correct
    confidence[rows, cols] = outcomes.confidence
    return CellMatrix(cells, sources, correct[1:], confidence[1:], correct[0], confidence[0])


# ------------------------------------------------------------------ intervals
@functools.lru_cache(maxsize=8)
def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def wilson_interval(successes, n, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a proportion, vectorised (the formula scipy's binomtest(...).proportion_ci
    uses with method="wilson"); n = 0 gives (nan, nan)."""
    k, n = np.asarray(successes, np.float64), np.asarray(n, np.float64)
    z = _z(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (k + z * z / 2) / (n + z * z)
        half = z * np.sqrt(n) / (n + z * z) * np.sqrt(p * (1 - p) + z * z / (4 * n))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def paired_difference_interval(first, second, level: float = LEVEL) -> tuple[float, float, float]:
    """mean(first) - mean(second) for paired booleans, with Newcombe's method-10 interval (score-based).

    Built from the Wilson intervals of the two proportions and the phi correlation of the pairs.
    """
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    n = len(first)
    if n == 0 or len(second) != n:
        raise ValueError("paired samples must be non-empty and of equal length")
    a = int((first & second).sum())
    b = int((first & ~second).sum())
    c = int((~first & second).sum())
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = (tuple(map(float, wilson_interval(k, n, level))) for k in (a + b, a + c))
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / np.sqrt(denominator) if denominator > 0 else 0.0
    delta = np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return float(diff), float(max(diff - delta, -1.0)), float(min(diff + epsilon, 1.0))


def bootstrap_counts(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n): how often each of n source images is drawn in each resample (multinomial), fixed seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def _percentiles(samples: np.ndarray, level: float) -> list[float] | None:
    """The central `level` interval of bootstrap samples; resamples where a ratio is undefined (nan) are left
    out, and None when none is left."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator where the denominator is positive, nan elsewhere."""
    return np.divide(numerator, denominator, out=np.full_like(numerator, np.nan), where=denominator > 0)


def _ece_samples(confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ECE of each bootstrap resample (rows of `weights`, (resamples, n sources) summing to 1).

    Sample i belongs to source i % n: one cell's images, or several cells' raveled cell by cell. A bin's
    weighted gap is a sum over its samples, taken with np.add.reduceat after sorting the samples by bin.
    """
    n_samples, n = len(confidence), weights.shape[1]
    index = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    order = np.argsort(index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(index[order]) != 0])
    gap = (confidence - correct)[order] * (n / n_samples)
    per_bin = np.add.reduceat(weights[:, order % n] * gap, starts, axis=1)
    return np.abs(per_bin).sum(axis=1)


# ------------------------------------------------------------------ the figures
def robustness_figures(
    outcomes: Outcomes,
    families: Mapping[str, str],
    level: float = LEVEL,
    worst: int = 5,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """Clean accuracy, every cell's accuracy, ECE and paired drop, per-corruption and per-family means, the
    mean corrupted accuracy and the `worst` cells (lowest accuracy), each with its interval.

    `families` maps each corruption name to its family. Means over cells weigh every cell alike (equal sizes).
    """
    m = cell_matrix(outcomes)
    n = len(m.sources)
    weights = bootstrap_counts(n, resamples, seed) / n
    acc_samples = weights @ m.correct.T.astype(np.float64)  # (resamples, cells)

    def accuracy_entry(correct: np.ndarray) -> dict:
        k = int(correct.sum())
        lo, hi = wilson_interval(k, len(correct), level)
        return {"n": len(correct), "accuracy": k / len(correct), "interval": [float(lo), float(hi)]}

    def ece_entry(confidence: np.ndarray, correct: np.ndarray, w: np.ndarray) -> dict:
        return {
            "ece": calibration_from_confidences(confidence, correct)["ece"],
            "ece_interval": _percentiles(_ece_samples(confidence, correct, w), level),
        }

    clean = {**accuracy_entry(m.clean_correct), **ece_entry(m.clean_confidence, m.clean_correct, weights)}
    cells = []
    for k, (name, severity) in enumerate(m.cells):
        drop, lo, hi = paired_difference_interval(m.clean_correct, m.correct[k], level)
        cells.append(
            {
                "corruption": name,
                "family": families[name],
                "severity": int(severity),
                **accuracy_entry(m.correct[k]),
                "drop": drop,
                "drop_interval": [lo, hi],
                **ece_entry(m.confidence[k], m.correct[k], weights),
            }
        )

    clean_samples = weights @ m.clean_correct.astype(np.float64)

    def mean_entry(rows: list[int]) -> dict:
        mean = acc_samples[:, rows].mean(axis=1)
        accuracy = float(m.correct[rows].mean())
        return {
            "cells": len(rows),
            "accuracy": accuracy,
            "interval": _percentiles(mean, level),
            "drop": float(m.clean_correct.mean()) - accuracy,
            "drop_interval": _percentiles(clean_samples - mean, level),
        }

    corruptions = {}
    for name in dict.fromkeys(c for c, _ in m.cells):
        rows = [k for k, (c, _) in enumerate(m.cells) if c == name]
        # The ECE pooled over a corruption's severities (raveled cell by cell), resampled by source.
        pooled_conf, pooled_correct = m.confidence[rows].ravel(), m.correct[rows].ravel()
        corruptions[name] = {
            "family": families[name],
            **mean_entry(rows),
            **ece_entry(pooled_conf, pooled_correct, weights),
        }
    families_out = {}
    for family in dict.fromkeys(families[c] for c, _ in m.cells):
        rows = [k for k, (c, _) in enumerate(m.cells) if families[c] == family]
        families_out[family] = {
            "corruptions": list(dict.fromkeys(m.cells[k][0] for k in rows)),
            **mean_entry(rows),
        }
    order = sorted(range(len(cells)), key=lambda k: (cells[k]["accuracy"], -cells[k]["severity"]))
    return {
        "level": level,
        "per_cell": n,
        "bootstrap": {"resamples": resamples, "seed": seed},
        "clean": clean,
        "cells": cells,
        "corruptions": corruptions,
        "families": families_out,
        "mean_corrupted": mean_entry(list(range(len(cells)))),
        "worst": [cells[k] for k in order[:worst]],
    }


def corruption_errors(
    model: Outcomes,
    reference: Outcomes,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """ImageNet-C's Corruption Error of `model` normalised by `reference`, on the same cells and images.

    CE_c = sum_s E_model(c, s) / sum_s E_ref(c, s); relative CE_c = sum_s (E_model(c, s) - E_model(clean)) /
    sum_s (E_ref(c, s) - E_ref(clean)); mCE and relative mCE are their means over corruptions (below 100%:
    the model errs less than the reference / loses less than the reference does). A CE whose reference makes
    no error, or a relative CE whose reference loses nothing (denominator <= 0), is undefined: None, listed
    under "undefined" / "relative_undefined" and left out of the mean.
    Intervals: a bootstrap over source images, the same resample for both models and every cell.
    """
    a, b = cell_matrix(model), cell_matrix(reference)
    if a.cells != b.cells or not np.array_equal(a.sources, b.sources):
        raise ValueError("model and reference must be evaluated on the same cells and source images")
    names = list(dict.fromkeys(c for c, _ in a.cells))
    n = len(a.sources)
    # Error counts, not rates: whole numbers, so "the reference loses nothing" is an exact 0 (the n cancels
    # in every ratio). Row 0 is the run itself (each image once), then the resamples.
    counts = np.vstack([np.ones(n, np.int64), bootstrap_counts(n, resamples, seed)])
    err_a = n - counts @ a.correct.T.astype(np.int64)  # (1 + resamples, cells)
    err_b = n - counts @ b.correct.T.astype(np.int64)
    clean_a = n - counts @ a.clean_correct.astype(np.int64)
    clean_b = n - counts @ b.clean_correct.astype(np.int64)
    per = {}
    ce_all, rel_all = [], []
    for name in names:
        rows = [k for k, (c, _) in enumerate(a.cells) if c == name]
        sa, sb = err_a[:, rows].sum(1).astype(np.float64), err_b[:, rows].sum(1).astype(np.float64)
        ce = _ratio(sa, sb)
        rel = _ratio(sa - len(rows) * clean_a, sb - len(rows) * clean_b)
        ce_all.append(ce)
        rel_all.append(rel)
        point = lambda v: None if np.isnan(v[0]) else float(v[0])
        per[name] = {
            "severities": len(rows),
            "ce": point(ce),
            "ce_interval": _percentiles(ce[1:], level) if point(ce) is not None else None,
            "relative_ce": point(rel),
            "relative_ce_interval": _percentiles(rel[1:], level) if point(rel) is not None else None,
            "model_error": float(sa[0] / len(rows) / n),
            "reference_error": float(sb[0] / len(rows) / n),
        }
    # Means over the corruptions whose point estimate is defined; a resample in which one of them is
    # undefined is left out of the interval.
    ce_used = [v for v in ce_all if not np.isnan(v[0])]
    rel_used = [v for v in rel_all if not np.isnan(v[0])]
    mce = np.mean(ce_used, axis=0) if ce_used else None
    rel_mce = np.mean(rel_used, axis=0) if rel_used else None
    return {
        "level": level,
        "corruptions": per,
        "mce": float(mce[0]) if mce is not None else None,
        "mce_interval": _percentiles(mce[1:], level) if mce is not None else None,
        "relative_mce": float(rel_mce[0]) if rel_mce is not None else None,
        "relative_mce_interval": _percentiles(rel_mce[1:], level) if rel_mce is not None else None,
        "undefined": [n for n, v in zip(names, ce_all) if np.isnan(v[0])],
        "relative_undefined": [n for n, v in zip(names, rel_all) if np.isnan(v[0])],
        "clean_error": {"model": float(clean_a[0] / n), "reference": float(clean_b[0] / n)},
    }

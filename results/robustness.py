"""Robustness figures: accuracy and calibration per corruption x severity, the paired drop against clean,
per-family means, the worst cells, Corruption Error (CE, mCE, relative mCE) against a reference model, and the
per-cell comparison of two models.

Pure functions of per-image outcomes (which cell, which source image, right or wrong, how confident), so the
offline evaluation (train.evaluate) and a streamed run (whose image ids name the cell, `cell_id`) compute the
same figures from the same outcomes. The clean images are one more cell, named CLEAN with severity 0. A cell
is one case of a slice (results/slices.py): its accuracy entry is a slice's.

Every figure has an interval (95% by default):
- a cell's accuracy: Wilson score interval (results/stats.py);
- a cell's drop against clean: Newcombe's paired hybrid score interval (results/stats.py): the same source
  images, so the pairing removes the between-image variance;
- a cell's ECE: results/stats.py's bootstrap over its images, as for any slice;
- means over cells (family, corruption, all), a corruption's pooled ECE and CE / mCE: a bootstrap over source
  images, resampling the same images in every cell and for both models (the cells are paired through their
  shared sources, which a bootstrap of one cell's images cannot express).
A cell whose accuracy interval is too wide to judge (results/slices.py) says so ("judged": False).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from results import stats
from results.metrics import ECE_BINS, calibration_from_confidences
from results.slices import accuracy_entry, ece_entry

if TYPE_CHECKING:
    from results.run import RunResult

CLEAN = "clean"
LEVEL = 0.95
# Bootstrap resamples. On the shipped model's 500-image run, the bounds of the mean corrupted accuracy moved by
# up to 0.3 point across 8 bootstrap seeds.
RESAMPLES = 1000
SEPARATOR = "|"  # in a robustness run's image ids: "<source id>|<corruption>|<severity>"


def cell_id(source: str, corruption: str, severity: int) -> str:
    """The image id of source image `source` in cell (corruption, severity): what a streamed run's collector
    and report.json know the request by (the server sees only its pixels)."""
    return f"{source}{SEPARATOR}{corruption}{SEPARATOR}{int(severity)}"


def parse_cell_id(image: str) -> tuple[str, str, int] | None:
    """(source id, corruption, severity) of a robustness run's image id; None for any other id."""
    parts = str(image).rsplit(SEPARATOR, 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """One model's per-image outcomes of a robustness run; the clean images are the cell (CLEAN, 0)."""

    source: np.ndarray  # (N,): the source image's index in the dataset, or its id (a folder's class/file)
    corruption: np.ndarray  # str (N,)
    severity: np.ndarray  # int (N,): 1..5, 0 for clean
    correct: np.ndarray  # bool (N,)
    confidence: np.ndarray  # float (N,): the top-1 probability

    @classmethod
    def from_predictions(
        cls,
        source: Sequence[int] | Sequence[str],
        corruption: Sequence[str],
        severity: Sequence[int],
        labels: Sequence[int],
        predictions: Sequence[int],
        confidences: Sequence[float],
    ) -> Outcomes:
        return cls(
            source=np.asarray(source),
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
def paired_difference(first: np.ndarray, second: np.ndarray, level: float = LEVEL) -> stats.Interval:
    """mean(first) - mean(second) for paired booleans (clean and corrupted outcomes of the same images), with
    results/stats.py's Newcombe paired interval."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    if len(first) == 0 or len(second) != len(first):
        raise ValueError("paired samples must be non-empty and of equal length")
    both, first_only = int((first & second).sum()), int((first & ~second).sum())
    second_only, neither = int((~first & second).sum()), int((~first & ~second).sum())
    return stats.paired_difference_interval(both, first_only, second_only, neither, level)


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
    index = stats.bin_index(confidence, ECE_BINS)
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

    def ece_by_source(confidence: np.ndarray, correct: np.ndarray) -> dict:
        """Several cells' images raveled cell by cell, resampled by source (the same draw in every cell)."""
        return {
            "ece": calibration_from_confidences(confidence, correct)["ece"],
            "ece_interval": _percentiles(_ece_samples(confidence, correct, weights), level),
        }

    def cell_entry(correct: np.ndarray, confidence: np.ndarray) -> dict:
        """One cell is one slice of the run: the slice's figures (results/slices.py)."""
        return {**accuracy_entry(correct, level), **ece_entry(confidence, correct, level, resamples, seed)}

    clean = cell_entry(m.clean_correct, m.clean_confidence)
    cells = []
    for k, (name, severity) in enumerate(m.cells):
        drop = paired_difference(m.clean_correct, m.correct[k], level)
        cells.append(
            {
                "corruption": name,
                "family": families[name],
                "severity": int(severity),
                **cell_entry(m.correct[k], m.confidence[k]),
                "drop": drop.estimate,
                "drop_interval": [drop.lo, drop.hi],
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
            **ece_by_source(pooled_conf, pooled_correct),
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


# ------------------------------------------------------------------ a streamed run's outcomes
@dataclasses.dataclass(frozen=True)
class RunOutcomes:
    """A robustness run's answered requests as Outcomes, and what had to be left out to keep the cells paired."""

    outcomes: Outcomes
    sources: int  # source images in every cell
    incomplete_sources: int  # source images left out: some cell of theirs was not answered (or not by both models)


def is_robustness_run(r: RunResult) -> bool:
    """Whether the run's image ids name cells (a robustness run); decided by its first answer."""
    return len(r.answers) > 0 and parse_cell_id(r.answers.image[0]) is not None


def outcomes_of(*runs: RunResult) -> list[RunOutcomes] | None:
    """Each run's outcomes, on the source images answered in every cell by every run (so the cells pair with
    the clean one and the runs with each other); None when a run's image ids do not name cells."""
    parsed = []
    for r in runs:
        cells = [parse_cell_id(i) for i in r.answers.image]
        if not cells or any(c is None for c in cells):
            return None
        parsed.append(cells)
    # A source is complete when every run answered it in every cell any run has.
    all_cells = {(c, s) for cells in parsed for _, c, s in cells}
    complete = None
    for cells in parsed:
        seen: dict[str, set] = {}
        for source, c, s in cells:
            seen.setdefault(source, set()).add((c, s))
        full = {source for source, got in seen.items() if got == all_cells}
        complete = full if complete is None else complete & full
    everyone = set.union(*({source for source, _, _ in cells} for cells in parsed))
    # IDX sources are indices: as numbers they sort as the offline evaluation's do, so the bootstrap draws
    # the same images and the intervals are the offline ones too (a folder's class/file ids stay text).
    numeric = all(source.isdigit() for source in everyone)
    out = []
    for r, cells in zip(runs, parsed):
        keep = np.array([source in complete for source, _, _ in cells], bool)
        a = r.answers
        outcomes = Outcomes.from_predictions(
            source=[int(source) if numeric else source for (source, _, _), k in zip(cells, keep) if k],
            corruption=[c for (_, c, _), k in zip(cells, keep) if k],
            severity=[s for (_, _, s), k in zip(cells, keep) if k],
            labels=a.label[keep],
            predictions=a.prediction[keep],
            confidences=a.confidence[keep].astype(np.float64),
        )
        out.append(RunOutcomes(outcomes, len(complete), len(everyone) - len(complete)))
    return out


def cell_comparison(a: Outcomes, b: Outcomes, level: float = LEVEL, alpha: float = 0.05) -> list[dict]:
    """Every cell (clean first) of model B against model A on the same images: both accuracies, B - A with
    Newcombe's paired interval, the exact McNemar p-value, and Holm's correction over all the cells (76 cells
    tested at 5% would find about four "significant" differences between equal models)."""
    ma, mb = cell_matrix(a), cell_matrix(b)
    if ma.cells != mb.cells or not np.array_equal(ma.sources, mb.sources):
        raise ValueError("the two models must be evaluated on the same cells and source images")
    rows = []
    for (name, severity), ra, rb in zip(
        [(CLEAN, 0), *ma.cells], [ma.clean_correct, *ma.correct], [mb.clean_correct, *mb.correct]
    ):
        paired = stats.compare_paired(ra, rb, level)
        rows.append(
            {
                "corruption": name,
                "severity": int(severity),
                "n": paired.n,
                "accuracy_a": float(ra.mean()),
                "accuracy_b": float(rb.mean()),
                "difference": paired.difference.estimate,
                "difference_interval": [paired.difference.lo, paired.difference.hi],
                "a_right_b_wrong": paired.a_right_b_wrong,
                "a_wrong_b_right": paired.a_wrong_b_right,
                "p_value": paired.p_value,
            }
        )
    adjusted, reject = stats.holm([row["p_value"] for row in rows], alpha)
    for row, p, significant in zip(rows, adjusted, reject):
        row["p_holm"], row["significant"] = float(p), bool(significant)
    return rows

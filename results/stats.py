"""How sure is a figure? Confidence intervals, paired tests and the smallest difference a run can detect.

Pure functions over numpy arrays: no I/O and no imports from the rest of the project (``results/`` is
the bottom layer). Every interval comes back as an :class:`Interval` that names its method and level, so
a display can say which one it shows. Conventions:

* a comparison is always "B minus A" (A the reference, B the candidate);
* a bootstrap resamples images (for latencies: blocks of consecutive requests) from a fixed seed, so the
  same inputs always give the same interval;
* ``level`` is the two-sided confidence level, 0.95 unless the caller passes another.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# scipy.special's ndtri/ndtr are what scipy.stats.norm's ppf/cdf call, bit for bit; importing scipy.stats
# itself costs ~0.6 s more CPU (1.3 s against 0.7 s), paid by every streamer and training process.
from scipy import optimize, special

N_RESAMPLES = 1000  # MC error of a 95% percentile endpoint ~4% of the half-width; 2000 would double the cost
SEED = 0
ECE_BINS = 15  # equal-width confidence bins, as in the report (Guo et al. 2017)
WITHIN_RUN = "within this run"  # what a latency interval covers: not the spread between runs
# Elements per bootstrap batch: b x n stays near 250 k (2 MB of float64, cache-sized) whatever n is.
_BATCH_ELEMENTS = 250_000


@dataclass(frozen=True)
class Interval:
    """A figure and its confidence interval [lo, hi] at ``level``, computed by ``method``.

    ``scope`` says what the interval leaves out (e.g. "within this run" for latencies); empty when it
    is the usual sampling uncertainty over images.
    """

    estimate: float
    lo: float
    hi: float
    level: float
    method: str
    scope: str = ""

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside [lo, hi] (False for an undefined interval)."""
        return bool(value < self.lo or value > self.hi)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# One proportion: accuracy, per-class recall and precision, reliability bins


@functools.lru_cache(maxsize=32)
def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, got {level!r}")
    return float(special.ndtri(0.5 + level / 2))


def wilson_bounds(
    successes: np.ndarray | int, n: np.ndarray | int, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval bounds, vectorised over arrays of (successes, n); NaN where n = 0.

    The closed form of scipy's ``binomtest(k, n).proportion_ci(method="wilson")`` (the tests check they
    agree), written out because scipy's takes one k at a time and a report needs hundreds (per class,
    per bin) and the exact coverage check needs every k up to 10,000.
    """
    k = np.asarray(successes, np.float64)
    m = np.asarray(n, np.float64)
    if np.any(k < 0) or np.any(k > m):
        raise ValueError("successes must lie between 0 and n")
    z2 = _z(level) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        center = (k + z2 / 2) / (m + z2)
        half = math.sqrt(z2) / (m + z2) * np.sqrt(k * (m - k) / m + z2 / 4)
    lo = np.where(m > 0, np.clip(center - half, 0.0, 1.0), np.nan)
    hi = np.where(m > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    return lo, hi


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Interval for a proportion (accuracy, a class's recall or precision): the Wilson score interval.

    Why Wilson rather than Clopper-Pearson: Clopper-Pearson guarantees at least the nominal coverage, so
    it overshoots it and is wider (a 95% interval at n = 200, p = 0.5 covers 96.0% of the time, Wilson's
    94.4%); Wilson's coverage stays close to nominal on average over p for every n the reports meet
    (Brown, Cai & DasGupta 2001; the tests compute its exact coverage), so its width is the honest one.
    """
    lo, hi = wilson_bounds(successes, n, level)
    estimate = successes / n if n else math.nan
    return Interval(float(estimate), float(lo), float(hi), level, "Wilson score")


def class_intervals(confusion: np.ndarray, level: float = 0.95) -> dict[str, list[Interval]]:
    """Wilson intervals of each class's recall (hits / its images) and precision (hits / its predictions).

    ``confusion[true, predicted]`` counts images, as in the report.
    """
    confusion = np.asarray(confusion)
    hits = np.diag(confusion)
    out: dict[str, list[Interval]] = {}
    for name, total in (("recall", confusion.sum(1)), ("precision", confusion.sum(0))):
        lo, hi = wilson_bounds(hits, total, level)
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
        out[name] = [Interval(float(e), float(a), float(b), level, "Wilson score") for e, a, b in zip(estimate, lo, hi)]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap over images


def _percentile(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bounds along axis 0, ignoring NaN replicates (a class absent from one resample)."""
    alpha = 1 - level
    replicates = np.asarray(replicates, np.float64)
    missing = np.isnan(replicates)
    if not missing.any():  # the usual case, and nanquantile is several times slower
        lo, hi = np.quantile(replicates, [alpha / 2, 1 - alpha / 2], axis=0)
        return lo, hi
    defined = ~missing.all(axis=0)
    lo = np.full(replicates.shape[1:], np.nan)
    hi = np.full(replicates.shape[1:], np.nan)
    if np.any(defined):
        q = np.nanquantile(replicates[:, defined], [alpha / 2, 1 - alpha / 2], axis=0)
        lo[defined], hi[defined] = q[0], q[1]
    return lo, hi


def _index_batches(n: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Resampled image indices, (b, n) at a time, n_resamples rows in all."""
    batch = max(1, _BATCH_ELEMENTS // n)
    done = 0
    while done < n_resamples:
        b = min(batch, n_resamples - done)
        yield rng.integers(0, n, size=(b, n), dtype=np.int32)  # int32 draws are ~30% faster than int64
        done += b


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 100:
        raise ValueError(f"a percentile bootstrap needs at least 100 resamples, got {n_resamples}")


def _bootstrap_method(n_resamples: int, seed: int, what: str = "images") -> str:
    return f"percentile bootstrap over {what} ({n_resamples} resamples, seed {seed})"


def bootstrap_interval(
    statistic: Callable[..., np.ndarray],
    *samples: np.ndarray,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """Percentile-bootstrap interval of any statistic of per-image arrays, resampling whole images.

    ``statistic(*arrays)`` receives each sample resampled with a leading resample axis, shape (b, n),
    and returns shape (b,): one vectorised call per batch, not one Python call per resample. All samples
    are resampled with the same indices, so values of one image (e.g. a confidence and whether it was
    right, or two models' answers) stay together: that is the paired bootstrap.

    Percentile rather than BCa: BCa's jackknife costs n evaluations of the statistic, over a second
    for 10,000 images; the percentile interval's coverage is checked by simulation in the tests.
    """
    _check_resamples(n_resamples)
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0]) if arrays else 0
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError("bootstrap needs one or more non-empty samples of equal length")
    estimate = float(np.asarray(statistic(*[a[None] for a in arrays]))[0])
    rng = np.random.default_rng(seed)
    reps = np.concatenate(
        [np.asarray(statistic(*[a[idx] for a in arrays]), np.float64) for idx in _index_batches(n, n_resamples, rng)]
    )
    lo, hi = _percentile(reps, level)
    return Interval(estimate, float(lo), float(hi), level, _bootstrap_method(n_resamples, seed))


def _cell_bootstrap(codes: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells, observed counts, resampled counts (n_resamples, cells)) of a statistic of cell counts only.

    Resampling n images with replacement and counting them per cell (confusion-matrix cell, or
    right/wrong pair) is exactly a multinomial draw of n over the observed cell frequencies, so drawing
    the counts directly is the same bootstrap at a cost that does not grow with n.
    """
    _check_resamples(n_resamples)
    cells, counts = np.unique(np.asarray(codes), return_counts=True)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    return cells, counts, rng.multinomial(n, counts / n, size=n_resamples)


def _per_class_f1(counts: np.ndarray, truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 of each class, (..., n_classes), from counts over cells (..., cells) with these truths/predictions."""
    eye = np.eye(n_classes)
    counts = np.asarray(counts, np.float64)
    tp = counts @ (eye[truth] * (truth == pred)[:, None])
    both = counts @ eye[truth] + counts @ eye[pred]  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both > 0, 2 * tp / both, np.nan)


def _macro(f1: np.ndarray) -> np.ndarray:
    """Mean over the classes that have images or predictions (F1 defined)."""
    defined = ~np.isnan(f1)
    return np.where(defined, f1, 0).sum(-1) / np.maximum(defined.sum(-1), 1)


@dataclass(frozen=True)
class F1Intervals:
    """Macro F1 (mean over classes with images or predictions) and each class's F1, with intervals."""

    macro: Interval
    per_class: tuple[Interval, ...]

    def as_dict(self) -> dict:
        return {"macro": self.macro.as_dict(), "per_class": [c.as_dict() for c in self.per_class]}


def _f1_result(estimates: np.ndarray, reps: np.ndarray, level: float, method: str) -> F1Intervals:
    """Per-class and macro intervals from estimates (classes + 1,) and replicates (b, classes + 1)."""
    lo, hi = _percentile(reps, level)
    ivs = [Interval(float(e), float(a), float(b), level, method) for e, a, b in zip(estimates, lo, hi)]
    return F1Intervals(macro=ivs[-1], per_class=tuple(ivs[:-1]))


def _check_labels(n_classes: int, *arrays: np.ndarray) -> None:
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError("need one or more images, and as many predictions as labels")
    for a in arrays:
        if a.min() < 0 or a.max() >= n_classes:
            raise ValueError(f"class indices must lie in [0, {n_classes})")


def f1_intervals(
    labels: np.ndarray,
    predictions: np.ndarray,
    n_classes: int,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> F1Intervals:
    """Per-class and macro F1 with percentile-bootstrap intervals over images.

    F1 of a class is 2·TP / (2·TP + FP + FN): the harmonic mean of precision and recall wherever that is
    defined, 0 for a class with images or predictions but no hits, undefined (NaN) for a class with
    neither. F1 is not a proportion of images, so no binomial interval applies: the bootstrap does,
    drawn as multinomial confusion matrices (see ``_cell_bootstrap``), which costs the same for any n.
    """
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    _check_labels(n_classes, labels, predictions)
    cells, counts, reps = _cell_bootstrap(labels * n_classes + predictions, n_resamples, seed)
    truth, pred = cells // n_classes, cells % n_classes

    def f1_and_macro(c: np.ndarray) -> np.ndarray:
        f1 = _per_class_f1(c, truth, pred, n_classes)
        return np.concatenate([f1, _macro(f1)[..., None]], axis=-1)

    return _f1_result(f1_and_macro(counts), f1_and_macro(reps), level, _bootstrap_method(n_resamples, seed))


def paired_f1_difference(
    labels: np.ndarray,
    predictions_a: np.ndarray,
    predictions_b: np.ndarray,
    n_classes: int,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> F1Intervals:
    """F1 of B minus F1 of A (per class and macro) on the same images, by a paired bootstrap.

    Each resample keeps an image's label and both models' answers together, so what the two models
    have in common cancels out of the difference; drawn as multinomial counts over
    (label, A's answer, B's answer) cells.
    """
    labels = np.asarray(labels, np.int64)
    pa, pb = np.asarray(predictions_a, np.int64), np.asarray(predictions_b, np.int64)
    _check_labels(n_classes, labels, pa, pb)
    k = n_classes
    cells, counts, reps = _cell_bootstrap((labels * k + pa) * k + pb, n_resamples, seed)
    truth, a, b = cells // (k * k), (cells // k) % k, cells % k

    def difference(c: np.ndarray) -> np.ndarray:
        fa, fb = _per_class_f1(c, truth, a, k), _per_class_f1(c, truth, b, k)
        return np.concatenate([fb - fa, (_macro(fb) - _macro(fa))[..., None]], axis=-1)

    return _f1_result(difference(counts), difference(reps), level, "paired " + _bootstrap_method(n_resamples, seed))


def paired_accuracy_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """Accuracy of B minus accuracy of A on the same images, by a paired bootstrap over images.

    A cross-check of :func:`paired_difference_interval` (Newcombe), which is the one to show: the
    bootstrap of a difference of two rare events is too narrow when few images are discordant.
    """
    ra, rb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if len(ra) == 0 or len(ra) != len(rb):
        raise ValueError("need one or more images, answered by both models")
    cells, counts, reps = _cell_bootstrap(2 * ra + rb, n_resamples, seed)
    # cell 1 = A wrong, B right (+1); cell 2 = A right, B wrong (-1)
    sign = np.where(cells == 1, 1.0, np.where(cells == 2, -1.0, 0.0))
    n = counts.sum()
    lo, hi = _percentile(reps @ sign / n, level)
    return Interval(
        float(counts @ sign / n), float(lo), float(hi), level, "paired " + _bootstrap_method(n_resamples, seed)
    )


# ---------------------------------------------------------------------------------------------------------------
# Calibration


def bin_index(confidences: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bin of each confidence: bin i holds (i/bins, (i+1)/bins], and 0 goes to the first bin."""
    c = np.asarray(confidences, np.float64)
    return np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin's share of images) x |mean confidence - accuracy| in the bin."""
    c, r = np.asarray(confidences, np.float64), np.asarray(correct, np.float64)
    sums = np.bincount(bin_index(c, bins), weights=c - r, minlength=bins)
    return float(np.abs(sums).sum() / max(len(c), 1))


def _at_most(q: np.ndarray, k: int) -> float:
    """P(E <= k) for E the number of events among independent Bernoulli(q_i) (Poisson-binomial), exactly.

    The coefficients of prod_i (1 - q_i + q_i x) up to x^k: pairs of polynomials multiplied by FFT,
    all pairs of a round at once, log2(n) rounds; whichever of events and non-events is rarer is
    counted, so the polynomials stay short. Rounding errors are ~1e-15, far below the tails compared.
    """
    n = len(q)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if k > n // 2:  # E <= k  <=>  non-events >= n - k
        return max(0.0, 1.0 - _at_most(1 - q, n - k - 1))
    poly = np.stack([1 - q, q], axis=1)[:, : k + 1]
    while len(poly) > 1:
        if len(poly) % 2:
            unit = np.zeros((1, poly.shape[1]))
            unit[0, 0] = 1.0
            poly = np.concatenate([poly, unit])
        d = poly.shape[1]
        size = 2 * d - 1
        spectrum = np.fft.rfft(poly, size, axis=1)
        poly = np.fft.irfft(spectrum[0::2] * spectrum[1::2], size, axis=1)[:, : k + 1]
    return float(np.clip(poly[0].sum(), 0.0, 1.0))


# Up to this many mistakes (or hits, if rarer) the Poisson-binomial is computed exactly (10,000 images:
# ~0.2 s); beyond, its normal approximation with a continuity correction is within ~0.4 points of the
# tail it approximates (skewness 1/sqrt(50)) and costs ~4 ms.
_EXACT_UP_TO = 50


def calibration_gap_interval(confidences: np.ndarray, correct: np.ndarray, level: float = 0.95) -> Interval:
    """Interval of (mean confidence - accuracy), given each image's confidence: an exact test inverted.

    Hypothesis H_g: image i is right with probability clip(c_i - g, 0, 1) (the model over-confident by
    g everywhere), images independent. The number of mistakes is then Poisson-binomial; the interval is
    every g that a two-sided test at this level does not reject (each tail >= (1 - level)/2, as
    Clopper-Pearson does for one proportion), reported as the gap it implies, mean(c) - mean(clip(c - g)).
    Each image keeps its own confidence, so the pairing of confidence with correctness is used, not the
    mean confidence against the accuracy's own interval.

    Why not the bootstrap over images: when mistakes are few it is badly wrong. On 225 images at 99.5%
    confidence (about one expected mistake) a perfectly calibrated model gets a 95% bootstrap interval
    excluding 0 in 33% of runs (a run with no mistake can never resample one, so it always reads as
    "under-confident"), and the interval covers the true gap in 87% of runs (simulated, 2,000 runs);
    this interval covers it in at least 95%. With hundreds of mistakes the two agree (10,000 images:
    within 0.0002 of each other). Beyond _EXACT_UP_TO mistakes the Poisson-binomial's normal
    approximation (continuity-corrected) replaces the exact one.
    """
    c, r = np.asarray(confidences, np.float64), np.asarray(correct, bool)
    n = len(c)
    if n == 0 or len(r) != n:
        raise ValueError("need one or more images, each with a confidence and whether it was right")
    if np.any((c < 0) | (c > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    tail = (1 - level) / 2
    _z(level)  # checks the level
    mistakes = int(n - r.sum())
    exact = min(mistakes, n - mistakes) <= _EXACT_UP_TO

    def at_most(g: float, k: int) -> float:
        q = 1 - np.clip(c - g, 0.0, 1.0)  # each image's chance of a mistake under H_g
        if exact:
            return _at_most(q, k)
        mean, sd = q.sum(), math.sqrt(float(np.sum(q * (1 - q))))
        return float(k >= mean) if sd == 0 else float(special.ndtr((k + 0.5 - mean) / sd))

    # More over-confidence (larger g) means more expected mistakes: P(E <= k) falls and P(E >= k) rises with g.
    hi_g = 1.0 if mistakes == n else optimize.brentq(lambda g: at_most(g, mistakes) - tail, -1.0, 1.0, xtol=1e-9)
    lo_g = (
        -1.0 if mistakes == 0 else optimize.brentq(lambda g: 1 - at_most(g, mistakes - 1) - tail, -1.0, 1.0, xtol=1e-9)
    )

    def implied_gap(g: float) -> float:
        return float(c.mean() - np.clip(c - g, 0.0, 1.0).mean())

    method = "exact test given the confidences (Poisson-binomial), inverted"
    if not exact:
        method = "test given the confidences (Poisson-binomial, normal approximation), inverted"
    return Interval(float(c.mean() - r.mean()), implied_gap(lo_g), implied_gap(hi_g), level, method)


@dataclass(frozen=True)
class CalibrationIntervals:
    """Mean confidence minus accuracy ("gap", > 0: over-confident) and ECE, with their intervals.

    ``gap`` is the one for the verdict (:func:`calibration_gap_interval`); ``gap_bootstrap`` is the
    percentile bootstrap of the same figure, kept for comparison and trustworthy only with many mistakes.
    """

    gap: Interval
    ece: Interval
    gap_bootstrap: Interval

    def as_dict(self) -> dict:
        return {"gap": self.gap.as_dict(), "ece": self.ece.as_dict(), "gap_bootstrap": self.gap_bootstrap.as_dict()}


def _calibration_bootstrap(
    c: np.ndarray, r: np.ndarray, bins: int, level: float, n_resamples: int, seed: int
) -> tuple[Interval, Interval]:
    """(ECE, gap) percentile intervals from one bootstrap over images.

    Both are functions of one per-image value, confidence - correct, and its bin, so one resample
    serves both; each resample draws whole images, so a confidence stays with whether it was right.
    """
    _check_resamples(n_resamples)
    n = len(c)
    if n == 0 or len(r) != n:
        raise ValueError("need one or more images, each with a confidence and whether it was right")
    d = c - r
    b = bin_index(c, bins)
    rng = np.random.default_rng(seed)
    gaps, eces = [], []
    for idx in _index_batches(n, n_resamples, rng):
        dd = np.take(d, idx)  # np.take: the same gather as d[idx], 1.5x faster
        keys = np.take(b, idx) + (np.arange(len(idx)) * bins)[:, None]
        sums = np.bincount(keys.ravel(), weights=dd.ravel(), minlength=len(idx) * bins).reshape(len(idx), bins)
        gaps.append(sums.sum(1) / n)
        eces.append(np.abs(sums).sum(1) / n)
    (e_lo, g_lo), (e_hi, g_hi) = _percentile(np.stack([np.concatenate(eces), np.concatenate(gaps)], 1), level)
    method = _bootstrap_method(n_resamples, seed)
    return (
        Interval(expected_calibration_error(c, r, bins), float(e_lo), float(e_hi), level, method),
        Interval(float(d.mean()), float(g_lo), float(g_hi), level, method),
    )


def ece_interval(
    confidences: np.ndarray,
    correct: np.ndarray,
    bins: int = ECE_BINS,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """ECE with a percentile-bootstrap interval over images (ECE has no test to invert).

    ECE is biased upward (each bin adds |noise|), most on small samples, and its percentile interval
    is around that biased figure: it covers the true ECE when every bin's gap is large beside its
    noise, and near perfect calibration it excludes 0 (the true ECE). Say so beside it; the verdict
    rests on the gap (:func:`calibration_gap_interval`). Its width shrinks as 1/sqrt(n).
    """
    c, r = np.asarray(confidences, np.float64), np.asarray(correct, np.float64)
    return _calibration_bootstrap(c, r, bins, level, n_resamples, seed)[0]


def calibration_intervals(
    confidences: np.ndarray,
    correct: np.ndarray,
    bins: int = ECE_BINS,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> CalibrationIntervals:
    """The gap (exact test given the confidences), ECE (bootstrap) and the gap's bootstrap, for one model."""
    c, r = np.asarray(confidences, np.float64), np.asarray(correct, np.float64)
    ece, gap_bootstrap = _calibration_bootstrap(c, r, bins, level, n_resamples, seed)
    return CalibrationIntervals(
        gap=calibration_gap_interval(c, r.astype(bool), level), ece=ece, gap_bootstrap=gap_bootstrap
    )


def calibration_verdict(gap: Interval) -> str:
    """ "over-confident" / "under-confident" only when the gap's interval excludes 0, else "consistent with calibrated"."""
    if math.isnan(gap.lo) or math.isnan(gap.hi):
        return "undetermined"
    if gap.lo > 0:
        return "over-confident"
    if gap.hi < 0:
        return "under-confident"
    return "consistent with calibrated"


@dataclass(frozen=True)
class BinInterval:
    """One reliability-diagram bin: its edges, image count, mean confidence and accuracy with its interval."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: Interval


def reliability_intervals(
    confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS, level: float = 0.95
) -> list[BinInterval]:
    """Per-bin Wilson intervals of the observed accuracy: a bin of 1 prediction gets a wide bar, one of 8,000 a tight one."""
    c, r = np.asarray(confidences, np.float64), np.asarray(correct, bool)
    b = bin_index(c, bins)
    count = np.bincount(b, minlength=bins)
    hits = np.bincount(b, weights=r, minlength=bins)
    conf_sum = np.bincount(b, weights=c, minlength=bins)
    lo, hi = wilson_bounds(hits, count, level)
    out = []
    for i in range(bins):
        m = int(count[i])
        acc = hits[i] / m if m else math.nan
        out.append(
            BinInterval(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=m,
                confidence=float(conf_sum[i] / m) if m else math.nan,
                accuracy=Interval(float(acc), float(lo[i]), float(hi[i]), level, "Wilson score"),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Two models on the same images


def mcnemar_exact(a_right_b_wrong: int, a_wrong_b_right: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good" each discordant pair is a fair coin."""
    m = a_right_b_wrong + a_wrong_b_right
    if m == 0:
        return 1.0
    from scipy.stats import binomtest  # only a comparison of two models needs scipy.stats (see the imports)

    return float(binomtest(a_wrong_b_right, m, 0.5).pvalue)


def paired_difference_interval(
    both: int, first_only: int, second_only: int, neither: int, level: float = 0.95
) -> Interval:
    """Interval for p1 - p2 of two proportions measured on the same items: Newcombe's hybrid score method.

    ``first_only`` counts items where the first succeeds and the second fails, and so on; the
    estimate is (first_only - second_only) / n. Method 10 of Newcombe (1998, Stat Med 17:2635): each
    proportion's Wilson interval, combined through the estimated correlation phi of the two (its
    numerator continuity-corrected as Newcombe defines it). Chosen over Tango's score interval because
    it is closed-form (no root finding) with coverage close to nominal in Newcombe's evaluation, and over
    the Wald interval, which collapses to zero width when there are no discordant pairs.
    """
    n = both + first_only + second_only + neither
    if min(both, first_only, second_only, neither) < 0 or n == 0:
        raise ValueError("paired counts must be non-negative and not all zero")
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, l2), (u1, u2) = wilson_bounds([both + first_only, both + second_only], n, level)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    if margins == 0:
        phi = 0.0
    else:
        cross = both * neither - first_only * second_only
        # Newcombe's correction: a positive cross-product is shrunk by n/2 (never below 0).
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    estimate = p1 - p2
    lower = estimate - math.sqrt(max(dl1**2 - 2 * phi * dl1 * du2 + du2**2, 0.0))
    upper = estimate + math.sqrt(max(du1**2 - 2 * phi * du1 * dl2 + dl2**2, 0.0))
    return Interval(float(estimate), max(lower, -1.0), min(upper, 1.0), level, "Newcombe paired hybrid score")


@dataclass(frozen=True)
class PairedAccuracy:
    """Two models on the same images: the 2x2 table, B's accuracy minus A's with its interval, McNemar's p."""

    n: int
    both_right: int
    a_right_b_wrong: int
    a_wrong_b_right: int
    both_wrong: int
    difference: Interval
    p_value: float
    test: str = "exact McNemar (two-sided binomial test on the discordant pairs)"

    @property
    def disagreement(self) -> float:
        """Share of images where exactly one model is right: what a paired comparison's power rests on."""
        return (self.a_right_b_wrong + self.a_wrong_b_right) / self.n

    def as_dict(self) -> dict:
        out = asdict(self)
        out["disagreement"] = self.disagreement
        return out


def compare_paired(correct_a: np.ndarray, correct_b: np.ndarray, level: float = 0.95) -> PairedAccuracy:
    """Accuracy of B minus A on the same images: Newcombe's paired interval next to the exact McNemar p-value."""
    ra, rb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if len(ra) == 0 or len(ra) != len(rb):
        raise ValueError("need one or more images, answered by both models")
    both, a_only = int(np.sum(ra & rb)), int(np.sum(ra & ~rb))
    b_only, neither = int(np.sum(~ra & rb)), int(np.sum(~ra & ~rb))
    return PairedAccuracy(
        n=len(ra),
        both_right=both,
        a_right_b_wrong=a_only,
        a_wrong_b_right=b_only,
        both_wrong=neither,
        difference=paired_difference_interval(both, b_only, a_only, neither, level),
        p_value=mcnemar_exact(a_only, b_only),
    )


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjusted p-values and reject flags (family-wise error <= alpha, any dependence).

    Hand-written because scipy's ``false_discovery_control`` only does Benjamini-Hochberg/Yekutieli,
    which bound the false discovery rate, not the chance of any false "significant" class. The i-th
    smallest p (1-based) is multiplied by (m - i + 1), then made non-decreasing and capped at 1.
    """
    p = np.asarray(pvalues, np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be a flat sequence of numbers in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted, adjusted <= alpha


@dataclass(frozen=True)
class ClassComparison:
    """One class: its images, the discordant pairs among them, B's recall minus A's, and the tests."""

    label: int
    n: int
    a_right_b_wrong: int
    a_wrong_b_right: int
    difference: float
    p_value: float
    p_holm: float
    significant: bool

    @property
    def better(self) -> str:
        """ "A" or "B" when the difference is significant after Holm's correction, else ""."""
        if not self.significant:
            return ""
        return "B" if self.difference > 0 else "A"


def per_class_mcnemar(
    labels: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray, n_classes: int, alpha: float = 0.05
) -> list[ClassComparison]:
    """Exact McNemar test of each class's recall (its images only), Holm-corrected across the classes.

    Ten uncorrected tests at 5% find a "significant" class by chance in 40% of comparisons of equal
    models (1 - 0.95^10); Holm keeps that at 5% or less. The family is every class with images.
    """
    labels = np.asarray(labels, np.int64)
    ra, rb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    _check_labels(n_classes, labels)
    if not len(labels) == len(ra) == len(rb):
        raise ValueError("need as many answers of each model as labels")
    n = np.bincount(labels, minlength=n_classes)
    a_only = np.bincount(labels, weights=ra & ~rb, minlength=n_classes).astype(int)
    b_only = np.bincount(labels, weights=~ra & rb, minlength=n_classes).astype(int)
    present = np.flatnonzero(n)
    p = np.array([mcnemar_exact(int(a_only[c]), int(b_only[c])) for c in present])
    adjusted, reject = holm(p, alpha)
    return [
        ClassComparison(
            label=int(c),
            n=int(n[c]),
            a_right_b_wrong=int(a_only[c]),
            a_wrong_b_right=int(b_only[c]),
            difference=float((b_only[c] - a_only[c]) / n[c]),
            p_value=float(pv),
            p_holm=float(adj),
            significant=bool(rej),
        )
        for c, pv, adj, rej in zip(present, p, adjusted, reject)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Two runs on different images


def unpaired_difference_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, level: float = 0.95
) -> Interval:
    """Interval for p_B - p_A of two independent samples (two runs on different images).

    Newcombe's hybrid score interval (method 10 of Newcombe 1998, Stat Med 17:873): the two Wilson
    intervals combined by "square and add". Closed form, and unlike the Wald interval it neither
    collapses at 0% or 100% nor strays outside [-1, 1].
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both runs need one or more images")
    pa, pb = successes_a / n_a, successes_b / n_b
    (la, lb), (ua, ub) = wilson_bounds([successes_a, successes_b], [n_a, n_b], level)
    estimate = pb - pa
    lower = estimate - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    upper = estimate + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    # clipped: at 0% vs 100% rounding can put a bound a hair outside [-1, 1]
    return Interval(float(estimate), max(lower, -1.0), min(upper, 1.0), level, "Newcombe hybrid score (unpaired)")


# ---------------------------------------------------------------------------------------------------------------
# Latency percentiles within one run


def block_length(series: np.ndarray) -> int:
    """Block length for a circular block bootstrap of a time-ordered series: Politis & White (2004).

    Queued requests wait behind the same backlog, so neighbouring latencies are correlated; a block
    must be long enough to carry that correlation, and short enough to leave many blocks to draw. The
    Politis-White rule (with Patton, Politis & White's 2009 correction) estimates the length that
    minimises the error of the bootstrap variance from the autocorrelations themselves, about
    n^(1/3) x (correlation length)^(2/3): 1-3 for independent latencies, tens for a run whose queue
    builds up and drains. It is derived for the mean; for percentiles it gives the right order of
    length. Measured coverage of the 95% intervals (simulated, not a unit test): 94.6% (p50) and 93.2%
    (p90) for independent latencies (1,000 runs, 199 resamples), only 91.5% and 92.0% for strongly
    correlated ones (log-AR(1), phi 0.6, 500 requests, 600 runs, 999 resamples; doubling the block did
    not help): read them as somewhat too narrow there. Capped at n/3 and 3 sqrt(n), as in the reference
    implementation (arch), so a trend cannot make one block the whole run.
    """
    x = np.asarray(series, np.float64)
    n = len(x)
    if n < 8:
        return 1
    e = x - x.mean()
    kn = max(5, int(math.log10(n)))  # consecutive insignificant autocorrelations that end the dependence
    m_max = int(math.ceil(math.sqrt(n))) + kn
    b_max = math.ceil(min(3 * math.sqrt(n), n / 3))
    spectrum = np.fft.rfft(e, 2 * n)
    acv = np.fft.irfft(spectrum * np.conj(spectrum))[: m_max + 1] / n
    if acv[0] <= 0:
        return 1  # a constant series: any block length gives the same (zero-width) interval
    rho = np.abs(acv[1:] / acv[0])
    threshold = 2 * math.sqrt(math.log10(n) / n)
    m_hat, run = m_max, 0
    for lag, r in enumerate(rho, start=1):
        run = run + 1 if r < threshold else 0
        if run == kn:
            m_hat = lag - kn
            break
    m = min(2 * max(m_hat, 1), m_max)
    k = np.arange(1, m + 1)
    t = k / m
    window = np.where(t <= 0.5, 1.0, 2 * (1 - t))  # flat-top lag window
    g = acv[0] + 2 * np.sum(window * acv[k])
    big_g = 2 * np.sum(window * k * acv[k])
    d_cb = 4 / 3 * g**2
    if d_cb <= 0:
        return 1
    b = (2 * big_g**2 / d_cb) ** (1 / 3) * n ** (1 / 3)
    return int(min(max(math.ceil(b), 1), b_max))


def _block_counts(n: int, length: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """How often each request (in time order) appears in b circular block resamples of n requests, (b, n).

    Each resample joins ceil(n / length) blocks at random starts, the last one cut so the total is n.
    Request t is covered by every block that starts in (t - length, t], circularly: one count of the
    starts per request and one moving sum over ``length`` of them, so the cost is a few passes over
    (b, n) whatever the block length, instead of gathering and sorting every resample. (A difference
    array of block starts and ends with float weights did the same in 3x the time at a block of 2.)
    """
    blocks = -(-n // length)
    last = n - (blocks - 1) * length  # the last block's length
    starts = rng.integers(0, n, size=(b, blocks))
    began = np.bincount((starts + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    padded = np.empty((b, n + length), np.int32)  # the last `length` requests again in front: circular
    padded[:, :length] = began[:, n - length :]
    padded[:, length:] = began
    running = np.cumsum(padded, axis=1, dtype=np.int32)  # int32: half the memory traffic of the passes that follow
    counts = running[:, length:] - running[:, :n]
    if last < length:  # the last block stops after `last` requests: take back the rest of it
        counts[np.arange(b)[:, None], (starts[:, -1:] + np.arange(last, length)) % n] -= 1
    return counts


def _block_percentiles(sorted_x: np.ndarray, order: np.ndarray, counts: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """np.percentile (linear interpolation) of each resample given by its counts (b, n); returns (b, len(qs)).

    A resample's k-th smallest value is the sorted value at which the running count (in sorted order)
    first exceeds k: one cumulative sum and a binary search per percentile, no sort per resample.
    """
    b, n = counts.shape
    # One integer type for the running counts, the row offsets and the queries: a cumulative sum that
    # widens int32 to int64, or a search of ints by floats (which converts the whole array), costs 2-3x.
    kind = np.int32 if b * (n + 1) < 2**31 else np.int64
    base = (np.arange(b, dtype=kind) * kind(n + 1))[:, None]
    flat = (np.cumsum(counts[:, order], axis=1, dtype=kind) + base).ravel()  # rows made one increasing array
    h = (n - 1) * qs / 100
    k0 = np.floor(h).astype(kind)
    k1 = np.minimum(k0 + 1, n - 1).astype(kind)

    def order_stat(k: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(flat, (base + k).ravel(), side="right") - (np.arange(b) * n).repeat(len(k))
        return sorted_x[pos].reshape(b, len(k))

    low, high = order_stat(k0), order_stat(k1)
    return low + (h - k0) * (high - low)


def latency_percentile_intervals(
    latencies: np.ndarray,
    percentiles: Sequence[float] = (50, 90, 99),
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    block: int | None = None,
) -> dict[float, Interval]:
    """Intervals of latency percentiles within this run, by a circular moving-block bootstrap.

    ``latencies`` must be in the order the requests were sent. Whole blocks of consecutive requests are
    resampled (Kunsch 1989; circular so the first and last requests weigh like the rest, Politis &
    Romano 1992), ``block`` long, by default :func:`block_length`. Resampling single requests would
    treat a queue's backlog as independent draws and give intervals far too narrow.

    The interval says how well this run pins its own percentile; another run (another machine load,
    another broker) varies more, so every interval is labelled "within this run".
    """
    _check_resamples(n_resamples)
    x = np.asarray(latencies, np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    qs = np.asarray(percentiles, np.float64)
    if n == 0:
        return {float(q): Interval(math.nan, math.nan, math.nan, level, "no latencies", WITHIN_RUN) for q in qs}
    length = block_length(x) if block is None else int(block)
    if not 1 <= length <= n:
        raise ValueError(f"block length must lie in [1, {n}], got {length}")
    rng = np.random.default_rng(seed)
    order = np.argsort(x, kind="stable")
    reps = []
    batch = max(1, _BATCH_ELEMENTS // n)
    for done in range(0, n_resamples, batch):
        b = min(batch, n_resamples - done)
        reps.append(_block_percentiles(x[order], order, _block_counts(n, length, b, rng), qs))
    lo, hi = _percentile(np.concatenate(reps), level)
    estimate = np.percentile(x, qs)
    method = f"circular block bootstrap, block of {length} requests ({n_resamples} resamples, seed {seed})"
    return {
        float(q): Interval(float(e), float(a), float(c), level, method, WITHIN_RUN)
        for q, e, a, c in zip(qs, estimate, lo, hi)
    }


# ---------------------------------------------------------------------------------------------------------------
# Power: the smallest difference a run can detect, and the images a difference needs


def _z_pair(alpha: float, power: float) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power must lie strictly between 0 and 1")
    return float(special.ndtri(1 - alpha / 2)), float(special.ndtri(power))


def images_needed_paired(delta: float, disagreement: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Images for a paired comparison to detect an accuracy difference ``delta`` (McNemar, two-sided).

    Connor's (1987) normal approximation to McNemar's test: with psi the share of images where the two
    models disagree (one right, one wrong), n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2.
    The disagreement rate is what pairing buys: the fewer images the models disagree on, the fewer are
    needed. Without a measured one, see :func:`assumed_disagreement`.
    """
    delta = abs(delta)
    if not 0 < delta <= disagreement <= 1:
        raise ValueError("need 0 < |delta| <= disagreement <= 1 (a difference needs at least that many disagreements)")
    za, zb = _z_pair(alpha, power)
    return math.ceil((za * math.sqrt(disagreement) + zb * math.sqrt(disagreement - delta**2)) ** 2 / delta**2)


def detectable_paired_difference(n: int, disagreement: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference a paired comparison of n images detects with this power (Connor 1987).

    The inverse of :func:`images_needed_paired` in delta; NaN when even "every disagreement favours one
    model" would not be detected (n x disagreement below ~4 images).
    """
    if n <= 0 or not 0 <= disagreement <= 1:
        raise ValueError("need n > 0 and a disagreement rate in [0, 1]")
    za, zb = _z_pair(alpha, power)

    def shortfall(d: float) -> float:
        return math.sqrt(n) * d - za * math.sqrt(disagreement) - zb * math.sqrt(max(disagreement - d * d, 0.0))

    if disagreement == 0 or shortfall(disagreement) < 0:
        return math.nan
    return float(optimize.brentq(shortfall, 1e-12, disagreement, xtol=1e-12))


def assumed_disagreement(baseline_accuracy: float, delta: float) -> float:
    """Default disagreement rate for planning a paired comparison: (1 - baseline accuracy) + |delta|.

    It assumes half of the baseline's errors are shared by the other model, the rest flipped, plus the
    |delta| the difference itself needs. Measured: the shipped and the quick Fashion-MNIST models
    (94.51% and 91.57%) disagree on 5.62% of the test images where this rule says 8.43%, so it asks for
    more images than needed (about 1.5x), the safe side for a plan.
    """
    if not 0 <= baseline_accuracy <= 1:
        raise ValueError("baseline accuracy must lie in [0, 1]")
    return min(1.0, (1 - baseline_accuracy) + abs(delta))


def _toward_half(baseline: float, delta: float) -> float:
    """The alternative accuracy baseline +- delta on the side of 0.5: the one with more variance, needing more images."""
    other = baseline - abs(delta) if baseline >= 0.5 else baseline + abs(delta)
    if not 0 <= other <= 1 or delta == 0:
        raise ValueError(
            f"need 0 < |delta| and an alternative accuracy within [0, 1] (baseline {baseline}, delta {delta})"
        )
    return other


def images_needed_vs_baseline(delta: float, baseline: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Images for one run to tell its accuracy from a known baseline accuracy by ``delta`` (two-sided).

    The one-sample normal approximation, n = (z_a sqrt(p0 q0) + z_b sqrt(p1 q1))^2 / delta^2, with p1 =
    p0 -+ delta on the side of 0.5 (the harder side, so it holds for both). Use it when the baseline is
    known much better than the run (e.g. from the full test set); against another run of the same size,
    use :func:`images_needed_unpaired`.
    """
    za, zb = _z_pair(alpha, power)
    p1 = _toward_half(baseline, delta)
    return math.ceil((za * math.sqrt(baseline * (1 - baseline)) + zb * math.sqrt(p1 * (1 - p1))) ** 2 / delta**2)


def images_needed_unpaired(delta: float, baseline: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Images per run for two independent runs (different images) to detect an accuracy difference ``delta``.

    The two-sample normal approximation without continuity correction (Fleiss 1981):
    n = (z_a sqrt(2 pbar qbar) + z_b sqrt(p0 q0 + p1 q1))^2 / delta^2, p1 on the side of 0.5.
    """
    za, zb = _z_pair(alpha, power)
    p1 = _toward_half(baseline, delta)
    pbar = (baseline + p1) / 2
    spread = math.sqrt(baseline * (1 - baseline) + p1 * (1 - p1))
    return math.ceil((za * math.sqrt(2 * pbar * (1 - pbar)) + zb * spread) ** 2 / delta**2)


def detectable_unpaired_difference(n: int, accuracy: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference a same-size rerun on other images would detect against this run.

    The inverse of :func:`images_needed_unpaired` in delta (a change toward 0.5, the harder side); NaN
    when no change within [0, 1] is detectable.
    """
    if n <= 0 or not 0 <= accuracy <= 1:
        raise ValueError("need n > 0 and an accuracy in [0, 1]")
    za, zb = _z_pair(alpha, power)
    sign = -1.0 if accuracy >= 0.5 else 1.0
    reach = accuracy if accuracy >= 0.5 else 1 - accuracy

    def shortfall(d: float) -> float:
        p1 = accuracy + sign * d
        pbar = (accuracy + p1) / 2
        spread = math.sqrt(accuracy * (1 - accuracy) + p1 * (1 - p1))
        return math.sqrt(n) * d - za * math.sqrt(2 * pbar * (1 - pbar)) - zb * spread

    if shortfall(reach) < 0:
        return math.nan
    return float(optimize.brentq(shortfall, 1e-12, reach, xtol=1e-12))

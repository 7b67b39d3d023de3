"""Every figure of a run, each a pure function of its RunResult (the torchmetrics / sklearn.metrics way).

``figures(result)`` gives them all by name: those names are report.json's keys. Array-level helpers
(``calibration_report``, ``per_class_from_confusion``) serve training too, which has probabilities
and labels but no run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from results.run import RunResult

PERCENTILES = (50, 90, 95, 99)
ECE_BINS = 15  # equal-width confidence bins, the usual choice (Guo et al. 2017)
_EPS = 1e-12


# ------------------------------------------------------------------ correctness
def correct(r: RunResult) -> np.ndarray:
    """Per answered request: was the prediction the truth?"""
    return r.answers.prediction == r.answers.label


def accuracy(r: RunResult) -> float | None:
    return float(correct(r).mean()) if len(r.answers) else None


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted one."""
    matrix = np.zeros((classes, classes), int)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return matrix


def confusion(r: RunResult) -> list[list[int]]:
    return confusion_matrix(r.answers.label, r.answers.prediction, len(r.class_names)).tolist()


def per_class_from_confusion(matrix: np.ndarray, class_names) -> list[dict]:
    """Accuracy (= recall), precision, recall and F1 per class; None where a class has no support or predictions."""
    matrix = np.asarray(matrix)
    tp = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(1), matrix.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), np.nan)
    return [
        {
            "class": name,
            "support": int(support[c]),
            "accuracy": _number(recall[c]),
            "precision": _number(precision[c]),
            "recall": _number(recall[c]),
            "f1": _number(f1[c]),
        }
        for c, name in enumerate(class_names)
    ]


def per_class(r: RunResult) -> list[dict]:
    return per_class_from_confusion(np.asarray(confusion(r)), r.class_names)


# ------------------------------------------------------------------ calibration
def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: its edges, image count, mean confidence and observed accuracy."""
    confidences = np.asarray(confidences, np.float64)
    correct = np.asarray(correct, bool)
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(confidences * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = index == i
        n = int(mask.sum())
        out.append(
            {
                "lower": i / bins,
                "upper": (i + 1) / bins,
                "count": n,
                "confidence": float(confidences[mask].mean()) if n else None,
                "accuracy": float(correct[mask].mean()) if n else None,
            }
        )
    return out


def calibration_from_confidences(
    confidences: np.ndarray,
    correct: np.ndarray,
    bins: int = ECE_BINS,
    nll: float | None = None,
    brier: float | None = None,
) -> dict:
    """The calibration figures that need only the top-1 confidence (what the wire carries)."""
    table = reliability_bins(confidences, correct, bins)
    n = max(1, len(confidences))
    gaps = [abs(b["confidence"] - b["accuracy"]) for b in table if b["count"]]
    ece = sum(b["count"] / n * abs(b["confidence"] - b["accuracy"]) for b in table if b["count"])
    mean_conf = float(np.mean(confidences)) if len(confidences) else 0.0
    accuracy = float(np.mean(correct)) if len(correct) else 0.0
    return {
        "ece": float(ece),
        "max_gap": float(max(gaps)) if gaps else 0.0,
        "mean_confidence": mean_conf,
        "accuracy": accuracy,
        # > 0: it claims more than it delivers
        "overconfidence": mean_conf - accuracy,
        "nll": nll,
        "brier": brier,
        "bins": table,
    }


def calibration_report(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE, maximum bin gap, mean confidence vs accuracy, NLL and Brier score, with the bins."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    return calibration_from_confidences(
        probs.max(-1), probs.argmax(-1) == labels, bins, nll=nll(probs, labels), brier=brier(probs, labels)
    )


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    probs = np.asarray(probs, np.float64)
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], _EPS)).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error between the probability vector and the one-hot truth (summed over classes)."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[-1])[labels]
    return float(((probs - onehot) ** 2).sum(-1).mean())


def calibration(r: RunResult) -> dict:
    """From the top-1 confidences; NLL and Brier too when the result holds whole probability vectors."""
    if r.answers.probs is not None:
        return calibration_report(r.answers.probs, r.answers.label)
    return calibration_from_confidences(r.answers.confidence.astype(float), correct(r))


# ------------------------------------------------------------------ counts
def counts(r: RunResult) -> dict:
    own_errors = [e for e in r.errors if e.get("index") is not None]
    answered = set(r.answers.index.tolist()) | {e["index"] for e in own_errors}
    c = r.counters
    return {
        "sent": c.sent,
        "answered": len(answered),
        "correct": int(correct(r).sum()),
        "errors": len(r.errors),
        "request_errors": len(own_errors),  # of this run's own requests
        "duplicates": c.duplicates,
        "missing": len(r.missing),
        "dead_lettered": c.dead_lettered,
        "stray": c.stray,
        "invalid": c.invalid,
    }


def error_reasons(r: RunResult) -> dict:
    return dict(Counter(e.get("error") for e in r.errors))


# ------------------------------------------------------------------ time
def percentiles(values: np.ndarray, with_min_max: bool = False) -> dict:
    """p50, p90, p95, p99 and the mean of the known values (None when there are none)."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    out = {f"p{q}": _number(np.percentile(v, q)) if len(v) else None for q in PERCENTILES}
    out["mean"] = _number(v.mean()) if len(v) else None
    if with_min_max:
        out["min"], out["max"] = (_number(v.min()), _number(v.max())) if len(v) else (None, None)
    return out


def latency(r: RunResult) -> dict:
    """End-to-end latency, publish to receipt, in ms."""
    return percentiles(r.answers.latency_ms, with_min_max=True)


def server(r: RunResult) -> dict:
    """What the server measured: queue wait and compute per request, and the batches it ran."""
    sizes = r.answers.batch_size
    return {
        "queue_ms": percentiles(r.answers.queue_ms),
        "compute_ms": percentiles(r.answers.compute_ms),
        "batch_size_hist": {str(b): int(c) for b, c in zip(*np.unique(sizes, return_counts=True))},
        "mean_batch_size": float(sizes.mean()) if len(sizes) else None,
    }


def throughput(r: RunResult) -> dict:
    """Results per second from the first publish (or, without one, the first result) to the last result."""
    received = r.answers.received_s[np.isfinite(r.answers.received_s)]
    published = None if r.published_s is None else r.published_s[np.isfinite(r.published_s)]
    t0 = float(published.min()) if published is not None and len(published) else (
        float(received.min()) if len(received) else 0.0
    )  # fmt: skip
    span = max((float(received.max()) if len(received) else t0) - t0, 1e-9)
    out = {
        # An offline evaluation has answers but no receipt times: its throughput is not known.
        "img_per_s": len(received) / span if len(received) else (None if len(r.answers) else 0.0),
        "first_publish_to_last_result_s": span,
        "timeline": timeline(received - t0),
    }
    if published is not None:
        out["published_timeline"] = timeline(published - t0)
    return out


def timeline(seconds: np.ndarray) -> list[list[int]]:
    """[[second, events in that second], ...] from event times relative to the run's start."""
    s = np.asarray(seconds, float)
    s = s[~np.isnan(s)]
    if not len(s):
        return []
    counts = np.bincount(np.floor(np.maximum(s, 0)).astype(int))
    return [[int(t), int(c)] for t, c in enumerate(counts)]


# ------------------------------------------------------------------ all of them
FIGURES: dict[str, Callable[[RunResult], object]] = {
    "counts": counts,
    "accuracy": accuracy,
    "calibration": calibration,
    "per_class": per_class,
    "confusion": confusion,
    "latency_ms": latency,
    "server": server,
    "throughput": throughput,
    "error_reasons": error_reasons,
}


def figures(r: RunResult) -> dict:
    """Every figure of the run, by name."""
    return {name: figure(r) for name, figure in FIGURES.items()}


def _number(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)

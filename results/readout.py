"""A run's figures read out with their intervals: the tables and lines the report and the terminal summary share.

Each reads one run's figures (results/metrics.py ``figures(result, uncertainty)``) and writes every
estimate with its interval, ``94.51% [94.05, 94.94]``; a figure without intervals (none were asked for)
is written alone. The calibration verdict is the one results/stats.py draws from the interval of
mean confidence - accuracy, never from a fixed band.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from results.metrics import ECE_BIAS, interval_at
from results.tables import Cell, Table, cells, fmt

if TYPE_CHECKING:
    from results.run import RunResult

# (name, result, figures) of each model a report shows: ("model", ...) alone, or ("A", ...) and ("B", ...)
Models = list[tuple[str, "RunResult", dict]]


def level_text(figures: dict) -> str:
    """ "95%": the level of the figures' intervals ("" without intervals)."""
    return f"{100 * figures['intervals']['level']:g}%" if figures.get("intervals") else ""


def detectable_rows(f: dict) -> list[list]:
    """How sure the accuracy is: its interval's half-width, and the change a same-size run on other images detects."""
    found = interval_at(f, "detectable")
    if not found:
        return []
    rerun = found["rerun_difference"]
    return [
        [f"Accuracy ± ({level_text(f)} half-width)", f"{100 * found['accuracy_half_width']:.2f} pts"],
        [
            f"Smallest change a same-size run on other images detects ({100 * found['power']:g}% power, "
            f"alpha {found['alpha']:g})",
            f"{100 * rerun:.2f} pts" if rerun is not None else "n/a",
        ],
    ]


def latency_text(f: dict) -> str:
    """p50, p90 and p99 with their intervals (within this run), and the maximum."""
    latency = f["latency_ms"]
    text = "   ".join(
        f"{k} {fmt(latency[k], 'ms', interval=interval_at(f, 'latency_ms', k))}" for k in ("p50", "p90", "p99")
    )
    return f"{text}   max {fmt(latency['max'], 'ms')}" + (
        "  (intervals within this run)" if interval_at(f, "latency_ms") else ""
    )


def calibration_text(f: dict) -> str:
    """ECE and mean confidence - accuracy with their intervals, and the verdict, on one line."""
    cal = f["calibration"]
    ece = fmt(cal["ece"], "percent", interval=interval_at(f, "calibration", "ece"))
    gap = fmt(cal["overconfidence"], "pts", interval=interval_at(f, "calibration", "gap"))
    verdict = (interval_at(f, "calibration") or {}).get("verdict", "n/a")
    return f"ECE {ece}; mean confidence {fmt(cal['mean_confidence'], 'percent')} - accuracy = {gap}: {verdict}"


def detectable_text(f: dict) -> str | None:
    """How sure the accuracy is, on one line: its half-width and the change a same-size rerun detects."""
    found = interval_at(f, "detectable")
    if not found:
        return None
    rerun = found["rerun_difference"]
    reach = f"{100 * rerun:.2f} pts" if rerun is not None else "no change"
    return (
        f"±{100 * found['accuracy_half_width']:.2f} pts ({level_text(f)}); a same-size run on other images detects "
        f"{reach} ({100 * found['power']:g}% power, alpha {found['alpha']:g})"
    )


def per_class_table(figures: dict) -> Table:
    """Support, accuracy (= recall), precision, recall and F1 of each class, with their intervals."""
    rows = []
    for c, row in enumerate(figures["per_class"]):
        recall = interval_at(figures, "per_class", c, "recall")
        rows.append(
            [
                row["class"],
                Cell(row["support"], "count"),
                Cell(row["accuracy"], "number", 3, recall),
                Cell(row["precision"], "number", 3, interval_at(figures, "per_class", c, "precision")),
                Cell(row["recall"], "number", 3, recall),
                Cell(row["f1"], "number", 3, interval_at(figures, "per_class", c, "f1")),
            ]
        )
    return Table(["Class", "Support", "Accuracy", "Precision", "Recall", "F1"], rows)


def calibration_table(models: Models) -> Table:
    """Is the confidence true? One column per model."""
    header = [f"Calibration ({len(models[0][2]['calibration']['bins'])} equal-width bins)"]
    header += [
        f"{'model' if name == 'model' else 'model ' + name} {r.model.identity or ''}".strip() for name, r, _ in models
    ]
    figs = [figures for _, _, figures in models]
    cals = [f["calibration"] for f in figs]
    return Table(
        header,
        [
            [
                "Expected calibration error (ECE)",
                *(Cell(c["ece"], "percent", interval=interval_at(f, "calibration", "ece")) for c, f in zip(cals, figs)),
            ],
            ["Largest bin gap |confidence - accuracy|", *cells("percent", *(c["max_gap"] for c in cals))],
            ["Mean confidence", *cells("percent", *(c["mean_confidence"] for c in cals))],
            [
                "Accuracy",
                *(Cell(c["accuracy"], "percent", interval=interval_at(f, "accuracy")) for c, f in zip(cals, figs)),
            ],
            [
                "Mean confidence - accuracy (> 0: over-confident)",
                *(
                    Cell(c["overconfidence"], "pts", interval=interval_at(f, "calibration", "gap"))
                    for c, f in zip(cals, figs)
                ),
            ],
            ["Verdict", *(confidence_verdict(f) for f in figs)],
        ],
    )


def confidence_verdict(figures: dict) -> str:
    """Over- or under-confident only when the interval of mean confidence - accuracy excludes 0."""
    calibration = interval_at(figures, "calibration")
    if not calibration:
        return "n/a"
    gap = calibration["gap"]
    if calibration["verdict"] == "consistent with calibrated":
        return f"consistent with calibrated (the {level_text(figures)} interval of the gap includes 0)"
    if calibration["verdict"] in ("over-confident", "under-confident"):
        return f"{calibration['verdict']} by {fmt(abs(gap['estimate']), 'pts').lstrip('+')} (its interval excludes 0)"
    return calibration["verdict"]


def calibration_note(figures: dict) -> str | None:
    """What the calibration verdict rests on, and what ECE's interval does not say."""
    calibration = interval_at(figures, "calibration")
    if not calibration:
        return None
    return (
        f"The verdict rests on the interval of mean confidence - accuracy alone ({calibration['gap']['method']}; "
        f"each image keeps its own confidence), never on a fixed band. {ECE_BIAS.rsplit('. ', 1)[0]}. The "
        "reliability diagram's bars carry each bin's Wilson interval and its count."
    )


def per_class_note(figures: dict) -> str | None:
    """How the per-class intervals are made."""
    iv = figures.get("intervals")
    if not iv or not iv.get("per_class"):
        return None
    return (
        f"{level_text(figures)} intervals: Wilson score for accuracy, precision and recall (a proportion of images); "
        f"percentile bootstrap over images for F1 ({iv['resamples']} resamples, seed {iv['seed']})."
    )

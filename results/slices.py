"""Slices: a run's accuracy and calibration per value of per-image metadata, each figure with its interval.

A slice column gives every image a value: a column of a ``--slices FILE.csv`` (joined to the images by
their id), or a robustness run's corruption, severity and family (read from its image ids,
results/robustness.py). The figures of one slice are those of the images with that value; the slices of a
column partition the run, so their counts add up to it.

The CSV's first column names the image, by one of
``index`` (IDX datasets: the image's position), ``file`` (image folders: ``class/name.png``, or the bare
file name when no two classes share it) or ``image`` (the id as report.json writes it); every other column
is a slice column. An image without a row gets the value ``(not in the CSV)``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from results import stats
from results.metrics import calibration_from_confidences

KEYS = ("index", "file", "image")
NOT_IN_CSV = "(not in the CSV)"
MAX_VALUES = 100  # slices per column: more is an id column, not a slice
# A proportion whose 95% interval is wider than +-10 points is shown but not judged: it cannot tell one
# slice from another, nor a corruption's severity from the next (5-15 points apart on the shipped model).
# At 95% accuracy that takes fewer than about 30 images, at 50% fewer than about 100.
JUDGED_HALF_WIDTH = 0.10


class SliceError(ValueError):
    """A slices file that cannot be used; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class SliceTable:
    """A slices CSV: the key column's name, the slice columns, and each key's values."""

    path: str
    key: str
    columns: tuple[str, ...]
    rows: dict[str, tuple[str, ...]]


def read_slices(path: str | Path) -> SliceTable:
    """Read and check a slices CSV (no dataset needed); SliceError (one line) for anything unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SliceError(f"--slices {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SliceError(f"--slices {path}: cannot be read as UTF-8 text ({err})") from None
    try:
        lines = list(csv.reader(text.splitlines()))
    except csv.Error as err:
        raise SliceError(f"--slices {path}: not a CSV file ({err})") from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise SliceError(f"--slices {path}: empty; expected a header such as 'index,lighting'")
    header = [h.strip() for h in lines[0]]
    if header[0] not in KEYS or len(header) < 2:
        raise SliceError(
            f"--slices {path}: the header must start with {', '.join(KEYS[:-1])} or {KEYS[-1]} (how to find each "
            f"image), then one or more slice columns; got {','.join(header)!r}"
        )
    if len(set(header)) != len(header) or not all(header):
        raise SliceError(f"--slices {path}: column names must be distinct and non-empty")
    rows: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise SliceError(f"--slices {path}: line {number} has {len(line)} fields, the header {len(header)}")
        key, *values = (cell.strip() for cell in line)
        if header[0] == "index" and not key.isdigit():
            raise SliceError(f"--slices {path}: line {number}: index {key!r} is not a whole number >= 0")
        key = str(int(key)) if header[0] == "index" else key
        if key in rows:
            raise SliceError(f"--slices {path}: line {number}: {header[0]} {key!r} appears twice")
        rows[key] = tuple(values)
    if not rows:
        raise SliceError(f"--slices {path}: no rows below the header")
    for k, column in enumerate(header[1:]):
        distinct = len({values[k] for values in rows.values()})
        if distinct > MAX_VALUES:
            raise SliceError(
                f"--slices {path}: column {column!r} has {distinct} values; a slice column has at most {MAX_VALUES}"
            )
    return SliceTable(str(path), header[0], tuple(header[1:]), rows)


def join_slices(table: SliceTable, image_ids: Sequence[str]) -> tuple[dict[str, list[str]], int]:
    """Each image's value in each slice column, and how many rows of the CSV name no image here.

    `image_ids` are the dataset's ids (results/run.py image_ids): an index for IDX datasets, ``class/file``
    for folders. SliceError when the key column does not fit the dataset or no row names one of its images.
    """
    ids = [str(i) for i in image_ids]
    folder = bool(ids) and not ids[0].isdigit()
    if table.key == "index" and folder:
        raise SliceError(f"--slices {table.path}: this dataset is a folder: name its images by 'file', not 'index'")
    if table.key == "file" and not folder:
        raise SliceError(f"--slices {table.path}: this dataset's images are numbered: name them by 'index', not 'file'")
    lookup = {i: i for i in ids}
    if table.key == "file":
        bare: dict[str, list[str]] = {}
        for i in ids:
            bare.setdefault(i.rsplit("/", 1)[-1], []).append(i)
        lookup = {}
        for key in table.rows:
            parts = Path(key).parts
            if len(parts) >= 2:
                lookup[key] = "/".join(parts[-2:])
            elif len(bare.get(key, [])) > 1:
                raise SliceError(
                    f"--slices {table.path}: file {key!r} is in {len(bare[key])} class folders; write it as class/{key}"
                )
            elif key in bare:
                lookup[key] = bare[key][0]
    by_id = {lookup[key]: values for key, values in table.rows.items() if key in lookup}
    known = set(ids)
    matched = {i: values for i, values in by_id.items() if i in known}
    if not matched:
        example = ", ".join(ids[:3])
        raise SliceError(
            f"--slices {table.path}: none of its {len(table.rows)} rows names an image of this dataset "
            f"(its {table.key} values should look like: {example})"
        )
    columns = {
        column: [matched[i][k] if i in matched else NOT_IN_CSV for i in ids] for k, column in enumerate(table.columns)
    }
    return columns, len(table.rows) - len(matched)


# ------------------------------------------------------------------ figures
def accuracy_entry(correct: np.ndarray, level: float = 0.95) -> dict:
    """n, correct, accuracy and its Wilson interval, and whether the interval is narrow enough to judge."""
    correct = np.asarray(correct, bool)
    n, k = len(correct), int(correct.sum())
    interval = stats.wilson_interval(k, n, level)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else None,
        "interval": [interval.lo, interval.hi] if n else None,
        "judged": judged(interval),
    }


def judged(interval: stats.Interval) -> bool:
    """False for an interval too wide to judge by (JUDGED_HALF_WIDTH) or undefined."""
    return not (math.isnan(interval.lo) or math.isnan(interval.hi)) and interval.half_width <= JUDGED_HALF_WIDTH


def ece_entry(
    confidence: np.ndarray, correct: np.ndarray, level: float = 0.95, resamples: int = stats.N_RESAMPLES, seed: int = 0
) -> dict:
    """ECE (results/metrics.py's) with results/stats.py's bootstrap interval over the images."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    if not len(confidence):
        return {"ece": None, "ece_interval": None}
    interval = stats.ece_interval(confidence, correct, level=level, n_resamples=resamples, seed=seed)
    return {"ece": calibration_from_confidences(confidence, correct)["ece"], "ece_interval": [interval.lo, interval.hi]}


def _ordered(values: Sequence[str]) -> list[str]:
    """Distinct values, numerically when they are all numbers, the missing marker last."""
    distinct = sorted(set(values) - {NOT_IN_CSV})

    def number(v: str) -> float | None:
        try:
            return float(v)
        except ValueError:
            return None

    if all(number(v) is not None for v in distinct):
        distinct.sort(key=number)
    return distinct + ([NOT_IN_CSV] if NOT_IN_CSV in values else [])


def slice_figures(
    correct: np.ndarray,
    confidence: np.ndarray,
    columns: Mapping[str, Sequence[str]],
    level: float = 0.95,
    resamples: int = stats.N_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Per column, per value: the images' count, accuracy [Wilson], ECE [bootstrap], and whether it is judged.

    `correct`, `confidence` and every column are per answered request, in one order.
    """
    correct, confidence = np.asarray(correct, bool), np.asarray(confidence, np.float64)
    out = {}
    for column, values in columns.items():
        values = np.asarray(values, dtype=object).astype(str)
        if len(values) != len(correct):
            raise ValueError(f"slice column {column!r} has {len(values)} values for {len(correct)} answers")
        out[column] = [
            {
                "value": value,
                **accuracy_entry(correct[values == value], level),
                **ece_entry(confidence[values == value], correct[values == value], level, resamples, seed),
            }
            for value in _ordered(values.tolist())
        ]
    return out


def compare_slices(
    correct_a: np.ndarray, correct_b: np.ndarray, columns: Mapping[str, Sequence[str]], level: float = 0.95
) -> dict:
    """Per column, per value: B's accuracy minus A's on the same images (Newcombe's paired interval, exact
    McNemar p), with Holm's correction over the column's slices (many slices, many chances of a fluke)."""
    ra, rb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    out = {}
    for column, values in columns.items():
        values = np.asarray(values, dtype=object).astype(str)
        rows = []
        for value in _ordered(values.tolist()):
            mask = values == value
            paired = stats.compare_paired(ra[mask], rb[mask], level)
            rows.append(
                {
                    "value": value,
                    "n": paired.n,
                    "accuracy_a": float(ra[mask].mean()),
                    "accuracy_b": float(rb[mask].mean()),
                    "difference": paired.difference.estimate,
                    "difference_interval": [paired.difference.lo, paired.difference.hi],
                    "p_value": paired.p_value,
                }
            )
        adjusted, reject = stats.holm([r["p_value"] for r in rows]) if rows else ([], [])
        for row, p, significant in zip(rows, adjusted, reject):
            row["p_holm"], row["significant"] = float(p), bool(significant)
        out[column] = rows
    return out

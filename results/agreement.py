"""The one rule for saying two evaluations agree: labels identical, floats within one stated tolerance.

XLA's CPU kernels differ by instruction set (AVX-512, AVX2, ...) and by CPU vendor, so the same
checkpoint's probabilities agree across machines to a few float32 ulps, not bit for bit. Measured on
the shipped model's 10,000 test images: the largest per-image probability difference was 7.2e-7
(an Intel AVX-512 machine against itself capped to SSE4.2 with XLA_FLAGS=--xla_cpu_max_isa), and
the ECE differed by 1.7e-10 (AMD AVX-512 vs AMD AVX2) and 1.5e-9 (AMD vs Intel). The predicted
labels were identical everywhere, and they must be: a label is the evaluator's verdict.

TOLERANCE = 1e-5 is 14x the largest difference measured, and 1,000x below the smallest step any
report prints (0.01 point = 1e-4). It bounds each image's probability; every float figure is a
mean of such values, so it moves by at most the same amount, except ECE: one confidence crossing
a bin edge moves that image's (confidence - correct) from one bin's sum to another's, which can
change ECE by up to 2/n. So ECE's allowed change is derived from the reference confidences: the
tolerance plus 2/n for every image whose confidence lies within the tolerance of a bin edge.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import zlib

import numpy as np

TOLERANCE = 1e-5  # per-image probability; see the module docstring for the measured differences


@dataclasses.dataclass(frozen=True)
class Difference:
    """One figure that differs beyond what the rule allows."""

    figure: str
    expected: float
    got: float
    allowed: float

    def __str__(self) -> str:
        return (
            f"{self.figure} {self.got!r} vs {self.expected!r} "
            f"(differs by {abs(self.got - self.expected):.3g}, allowed {self.allowed:.3g})"
        )


@dataclasses.dataclass(frozen=True)
class Agreement:
    """The verdict of comparing an evaluation with a reference one, image by image and figure by figure."""

    compared: int
    label_mismatches: list[int]  # positions whose predicted label differs
    max_confidence_diff: float  # largest |confidence - reference|, over images with the same label
    differences: list[Difference]  # float figures (and confidences) beyond the tolerance

    @property
    def labels_identical(self) -> bool:
        return not self.label_mismatches

    @property
    def ok(self) -> bool:
        return self.labels_identical and not self.differences

    def describe(self) -> str:
        """One line: why it does not match (empty when it does)."""
        parts = []
        if self.label_mismatches:
            shown = ", ".join(str(i) for i in self.label_mismatches[:5])
            parts.append(f"{len(self.label_mismatches)} of {self.compared} labels differ (e.g. image {shown})")
        parts += [str(d) for d in self.differences]
        return "; ".join(parts)


def within(expected: float, got: float, allowed: float = TOLERANCE) -> bool:
    return abs(float(got) - float(expected)) <= allowed


def ece_allowance(reference_confidences: np.ndarray, bins: int, tolerance: float = TOLERANCE) -> float:
    """How far ECE may move when every confidence moves by at most `tolerance` (module docstring)."""
    c = np.asarray(reference_confidences, np.float64)
    if not len(c):
        return tolerance
    edges = np.arange(1, bins) / bins
    near = np.abs(c[:, None] - edges[None, :]).min(-1) <= tolerance
    return tolerance + 2.0 * int(near.sum()) / len(c)


def compare_predictions(
    reference_labels: np.ndarray,
    labels: np.ndarray,
    reference_confidences: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> Agreement:
    """Labels must be identical; confidences (when both are given) within `tolerance` of the reference."""
    ref, got = np.asarray(reference_labels), np.asarray(labels)
    if ref.shape != got.shape:
        raise ValueError(f"cannot compare {len(got)} predictions with {len(ref)} reference predictions")
    mismatches = np.flatnonzero(ref != got).tolist()
    max_diff, differences = 0.0, []
    if reference_confidences is not None and confidences is not None:
        same = ref == got
        diff = np.abs(np.asarray(confidences, np.float64) - np.asarray(reference_confidences, np.float64))[same]
        if len(diff):
            worst = int(np.argmax(diff))
            max_diff = float(diff[worst])
            if max_diff > tolerance:
                i = int(np.flatnonzero(same)[worst])
                differences.append(
                    Difference(
                        f"confidence of image {i}",
                        float(reference_confidences[i]),
                        float(confidences[i]),
                        tolerance,
                    )
                )
    return Agreement(len(got), mismatches, max_diff, differences)


def compare_figures(expected: dict, got: dict, allowed: dict[str, float]) -> list[Difference]:
    """The figures named in `allowed` that differ by more than their allowance (missing ones are skipped)."""
    return [
        Difference(name, float(expected[name]), float(got[name]), limit)
        for name, limit in allowed.items()
        if expected.get(name) is not None and got.get(name) is not None and not within(expected[name], got[name], limit)
    ]


def encode_predictions(labels: np.ndarray, confidences: np.ndarray) -> dict:
    """Per-image predictions for metadata.json, so an evaluation can be checked image by image.

    Language-neutral: little-endian uint16 labels and float32 confidences, each zlib-compressed and
    base64-encoded (about 45 kB for 10,000 images), with the labels' SHA-256 beside them.
    """
    label_bytes = np.asarray(labels, "<u2").tobytes()
    return {
        "n": int(len(labels)),
        "encoding": "base64(zlib(little-endian array))",
        "labels_dtype": "<u2",
        "labels_sha256": hashlib.sha256(label_bytes).hexdigest(),
        "labels": base64.b64encode(zlib.compress(label_bytes, 9)).decode("ascii"),
        "confidences_dtype": "<f4",
        "confidences": base64.b64encode(zlib.compress(np.asarray(confidences, "<f4").tobytes(), 9)).decode("ascii"),
    }


def decode_predictions(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, confidences) back from encode_predictions' record; ValueError if it is damaged."""
    try:
        label_bytes = zlib.decompress(base64.b64decode(record["labels"]))
        confidences = np.frombuffer(
            zlib.decompress(base64.b64decode(record["confidences"])), record["confidences_dtype"]
        )
        labels = np.frombuffer(label_bytes, record["labels_dtype"])
    except (KeyError, TypeError, ValueError, zlib.error) as err:
        raise ValueError(f"test_predictions cannot be read ({err})") from None
    if hashlib.sha256(label_bytes).hexdigest() != record.get("labels_sha256") or len(labels) != len(confidences):
        raise ValueError("test_predictions are damaged (digest or length differs)")
    return labels.astype(int), confidences.astype(np.float64)

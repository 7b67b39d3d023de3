"""The report's plots, declared by name in PLOTS: each builds one matplotlib figure from what the report shows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np

from results import metrics
from results.compare import Comparison, compare
from results.run import RunResult
from results.tables import fmt

matplotlib.use("Agg")  # headless: reports are written on servers and in CI.

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 110
GALLERY_MAX = 40


@dataclasses.dataclass(frozen=True)
class Shown:
    """What a report shows: a run's result and figures, and the comparison when a second model ran."""

    result: RunResult
    figures: dict
    comparison: Comparison | None = None

    @classmethod
    def of(cls, a: RunResult, b: RunResult | None = None) -> Shown:
        fa = metrics.figures(a)
        return cls(a, fa, compare(a, b, fa) if b is not None else None)

    def models(self) -> list[tuple[str, RunResult, dict]]:
        """(name, result, figures) of each model: "model" alone, or "A" and "B"."""
        cmp = self.comparison
        return [("A", cmp.a, cmp.fa), ("B", cmp.b, cmp.fb)] if cmp else [("model", self.result, self.figures)]


@dataclasses.dataclass(frozen=True)
class Plot:
    file: str
    alt: str
    build: Callable[[Shown], Figure]


def _empty_figure(title: str, message: str) -> Figure:
    """Placeholder plot so every report has the same files even when a run produced no data."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="gray", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def confusion_figure(shown: Shown) -> Figure:
    """Heatmap coloured by row-normalised fraction (recall per true class) with raw counts in each cell."""
    matrix = np.asarray(shown.figures["confusion"], dtype=float)
    if matrix.ndim != 2 or matrix.sum() == 0:
        return _empty_figure("Confusion matrix", "No answered predictions")
    row_totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label("fraction of true class (row-normalised)")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if fractions[row, col] > 0.5 else ("black" if count else "lightgray")
        ax.text(col, row, f"{int(count)}", ha="center", va="center", fontsize=8, color=color)
    names = list(shown.result.class_names)
    ax.set_xticks(np.arange(matrix.shape[1]), names)
    ax.set_yticks(np.arange(matrix.shape[0]), names)
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = fmt(shown.figures["accuracy"], "percent")
    ax.set_title(f"Confusion matrix (accuracy {accuracy}, {int(matrix.sum())} answered)")
    fig.tight_layout()
    return fig


def _has_long_tail(values: np.ndarray, p50: float) -> bool:
    """True when the slowest requests are >10x the median: a linear axis would squash the bulk."""
    return bool(values.min() > 0 and values.max() > 10 * p50)


def latency_figure(shown: Shown) -> Figure:
    """Histogram and empirical CDF of end-to-end latency with p50/p99 marked (log x-axis for long tails)."""
    values = shown.result.answers.latency_ms
    values = values[np.isfinite(values)]
    if values.size == 0:
        return _empty_figure("End-to-end latency", "No latencies recorded")
    latency = shown.figures["latency_ms"]
    marks = [("p50", latency["p50"], 0.50, "tab:orange"), ("p99", latency["p99"], 0.99, "tab:red")]
    long_tail = _has_long_tail(values, marks[0][1])
    bins = np.geomspace(values.min(), values.max(), 51) if long_tail else 50
    x_label = "end-to-end latency (ms, log scale)" if long_tail else "end-to-end latency (ms)"
    fig, (hist_ax, cdf_ax) = plt.subplots(1, 2, figsize=(11, 4.5))

    hist_ax.hist(values, bins=bins, color="steelblue", edgecolor="white", linewidth=0.4)
    hist_ax.set_title("Histogram")
    hist_ax.set_ylabel("requests")

    cdf_ax.step(np.sort(values), np.arange(1, values.size + 1) / values.size, where="post", color="steelblue")
    cdf_ax.set_ylim(0.0, 1.02)
    cdf_ax.set_title("Cumulative distribution")
    cdf_ax.set_ylabel("fraction of requests ≤ latency")
    cdf_ax.grid(alpha=0.3)

    for ax in (hist_ax, cdf_ax):
        ax.set_xlabel(x_label)
        if long_tail:
            ax.set_xscale("log")
    for name, value, level, color in marks:
        label = f"{name} = {value:.1f} ms"
        hist_ax.axvline(value, color=color, linestyle="--", linewidth=1.5, label=label)
        cdf_ax.axvline(value, color=color, linestyle="--", linewidth=1.0, label=label)
        cdf_ax.plot([value], [level], marker="o", color=color)
    hist_ax.legend(loc="upper right")
    cdf_ax.legend(loc="lower right")
    fig.suptitle(f"End-to-end latency per request (n = {values.size})")
    fig.tight_layout()
    return fig


def _timeline(points: list | None) -> np.ndarray:
    """A [[t, count], ...] timeline as an (n, 2) float array (empty-safe)."""
    return np.asarray(points or [], dtype=float).reshape(-1, 2)


def throughput_figure(shown: Shown) -> Figure:
    """Results (and publishes) per second over time, against the target publish rate."""
    throughput = shown.figures["throughput"]
    received = _timeline(throughput.get("timeline"))
    published = _timeline(throughput.get("published_timeline"))
    if received.size == 0 and published.size == 0:
        return _empty_figure("Throughput", "No throughput timeline recorded")
    fig, ax = plt.subplots(figsize=(10, 4))
    style = {"marker": ".", "markersize": 4} if max(len(received), len(published)) <= 120 else {}
    if published.size:
        ax.plot(published[:, 0], published[:, 1], color="tab:gray", alpha=0.8, label="published / s", **style)
    if received.size:
        ax.plot(received[:, 0], received[:, 1], color="tab:blue", linewidth=1.8, label="results received / s", **style)
    target = shown.result.run.rate_target or 0
    if target > 0:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1.2, label=f"target rate {target:g} / s")
    peak = max([target] + [float(series[:, 1].max()) for series in (received, published) if series.size])
    ax.set_ylim(0, max(peak, 1.0) * 1.15)  # headroom so lines at the target are not clipped by the frame
    ax.set_xlabel("time since first publish (s)")
    ax.set_ylabel("images per second")
    ax.set_title(f"Throughput ({fmt(throughput.get('img_per_s'))} img/s overall)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def batch_size_figure(shown: Shown) -> Figure:
    """How many requests were served in server batches of each size (one bar per observed size)."""
    server = shown.figures["server"]
    items = sorted((int(size), int(count)) for size, count in (server.get("batch_size_hist") or {}).items())
    if not items:
        return _empty_figure("Server batch sizes", "No batch sizes recorded")
    sizes, counts = zip(*items, strict=True)
    fig, ax = plt.subplots(figsize=(10, 4))
    positions = np.arange(len(sizes))
    bars = ax.bar(positions, counts, color="seagreen")
    few = len(sizes) <= 20
    ax.set_xticks(positions, [str(size) for size in sizes], rotation=0 if few else 90, fontsize=9 if few else 7)
    if few:
        ax.bar_label(bars, fontsize=8)
    ax.margins(y=0.12)
    ax.set_xlabel("batch size (images per forward pass)")
    ax.set_ylabel("requests served")
    ax.set_title(f"Server batch sizes (mean {fmt(server.get('mean_batch_size'))})")
    fig.tight_layout()
    return fig


def reliability_figure(shown: Shown) -> Figure:
    """Confidence bins against the accuracy observed in them, with how many predictions each bin holds."""
    models = shown.models()
    bins = shown.figures["calibration"]["bins"]
    if not bins or not any(b["count"] for b in bins):
        return _empty_figure("Reliability diagram", "No answered predictions")
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(7.5, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1 / len(bins) / len(models)
    for k, (name, result, figures) in enumerate(models):
        cal = figures["calibration"]
        lows = np.array([b["lower"] for b in cal["bins"]]) + k * width
        acc = np.array([b["accuracy"] if b["count"] else np.nan for b in cal["bins"]])
        conf = np.array([b["confidence"] if b["count"] else np.nan for b in cal["bins"]])
        counts = np.array([b["count"] for b in cal["bins"]])
        label = f"{name} {result.model.identity or ''}: ECE {fmt(cal['ece'], 'percent')}"
        bars = ax.bar(lows, acc, width=width, align="edge", alpha=0.75, edgecolor="black", label=label)
        color = bars.patches[0].get_facecolor()
        ax.scatter(lows + width / 2, conf, marker="_", s=120, color="black", zorder=3)
        ax_n.bar(lows, counts, width=width, align="edge", color=color, edgecolor="black")
    ax.set_ylabel("observed accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability diagram: bars = accuracy, black ticks = mean confidence per bin")
    ax.legend(loc="upper left", fontsize=9)
    ax_n.set_yscale("log")
    ax_n.set_ylabel("predictions (log)")
    ax_n.set_xlabel(f"confidence ({metrics.ECE_BINS} equal-width bins)")
    fig.tight_layout()
    return fig


def gallery_figure(cmp: Comparison, images: np.ndarray) -> Figure:
    """Images where the two models disagree, captioned with the truth and both predictions."""
    examples = cmp.disagreement_examples[:GALLERY_MAX]
    names = list(cmp.a.class_names)
    if not examples:
        return _empty_figure("Disagreements", "The two models agree on every image")
    cols = 8
    rows = math.ceil(len(examples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, ex in zip(axes.ravel(), examples):
        image = images[ex["index"]]
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        name = lambda k: names[k] if k < len(names) else str(k)  # noqa: E731
        ax.set_title(
            f"true {name(ex['label'])}\nA {name(ex['a'])}{' ✓' if ex['a'] == ex['label'] else ''}"
            f"\nB {name(ex['b'])}{' ✓' if ex['b'] == ex['label'] else ''}",
            fontsize=7,
        )
    fig.suptitle(f"Where A and B disagree: the first {len(examples)} of {cmp.disagreements} images (✓ = correct)")
    fig.tight_layout()
    return fig


PLOTS: dict[str, Plot] = {
    "confusion": Plot("confusion_matrix.png", "Confusion matrix", confusion_figure),
    "latency": Plot("latency.png", "Latency distribution", latency_figure),
    "throughput": Plot("throughput.png", "Throughput over time", throughput_figure),
    "batch_sizes": Plot("batch_sizes.png", "Server batch sizes", batch_size_figure),
    "reliability": Plot("reliability.png", "Reliability diagram", reliability_figure),
}
GALLERY_PNG = "disagreements.png"  # with two models and the run's images: gallery_figure


def save_figure(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)

"""Render a finished streaming-evaluation run into a report folder a person can read.

The collector produces a plain ``summary`` dict (counts, accuracy, per-class metrics, confusion matrix,
latency percentiles, server-side timings, throughput timelines, errors and per-request predictions).
``write_report`` turns it into:

* ``report.json``: the raw summary, so the run can be re-rendered or compared later;
* ``confusion_matrix.png``, ``latency.png``, ``throughput.png``, ``batch_sizes.png``: the plots;
* ``report.md``: tables plus relative image links, so it renders on a code host;
* ``report.html``: one self-contained page (inline CSS, plots as base64 data URIs) to open offline.

``render_terminal`` gives the at-a-glance console version; ``show_report`` re-renders a saved run.
Missing values (e.g. latencies of a run where nothing was answered) are shown as "n/a".
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from results.machine import describe as describe_machine
from streamer.compare import delta

matplotlib.use("Agg")  # headless: reports are written on servers and in CI.

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
DPI = 110
NA = "n/a"
MAX_MISSING_LISTED = 50
MAX_ERRORS_LISTED = 20
PERCENTILE_KEYS = ("min", "p50", "p90", "p95", "p99", "max", "mean")

# A table is (header, rows); every cell is already formatted text.
Table = tuple[list[str], list[list[str]]]
# A report block is (kind, payload) with kind in {"table", "text", "list", "image"}.
Block = tuple[str, Any]


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    """Format a number for display; None/NaN become "n/a" so empty runs render cleanly."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _ms(value: Any) -> str:
    return _fmt(value, 1, " ms")


def _pct(fraction: Any) -> str:
    """Format a fraction in [0, 1] as a percentage."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return NA
    return f"{100.0 * fraction:.2f}%"


def _section(summary: dict, key: str) -> dict:
    """Return ``summary[key]`` as a dict, tolerating a missing or None entry."""
    return summary.get(key) or {}


# --------------------------------------------------------------------------- tables


def _summary_table(summary: dict) -> Table:
    """Headline numbers of the run: counts, accuracy, rates, latency, ordering, model, wall time."""
    run, counts, latency = _section(summary, "run"), _section(summary, "counts"), _section(summary, "latency_ms")
    throughput = _section(summary, "throughput")
    rows = [
        ["Images sent", _fmt(counts.get("sent"))],
        ["Answered", _fmt(counts.get("answered"))],
        ["Missing", _fmt(counts.get("missing"))],
        ["Duplicates", _fmt(counts.get("duplicates"))],
        ["Errors", _fmt(counts.get("errors"))],
        ["Dead-lettered", _fmt(counts.get("dead_lettered"))],
        ["Stray (not from this run)", _fmt(counts.get("stray"))],
        ["Invalid results (refused)", _fmt(counts.get("invalid"))],
        ["Accuracy", f"{_pct(summary.get('accuracy'))} ({_fmt(counts.get('correct'))} correct)"],
        ["Publish rate target / achieved", f"{_fmt(run.get('rate_target'))} / {_fmt(run.get('rate_achieved'))} img/s"],
        [
            "Throughput (results)",
            f"{_fmt(throughput.get('img_per_s'), 1, ' img/s')} over "
            f"{_fmt(throughput.get('first_publish_to_last_result_s'), 2, ' s')}",
        ],
    ]
    rows += [[f"Latency {key}", _ms(latency.get(key))] for key in PERCENTILE_KEYS if key != "min"]
    rows += [
        ["Ordering violations", _fmt(_section(summary, "ordering").get("violations"))],
        ["Offline check (same checkpoint)", _offline_text(summary.get("offline"))],
        ["Model identity", _model_identity_text(summary)],
        ["Wall time", _fmt(run.get("wall_s"), 1, " s")],
        ["Warm-up (before the timed stream)", _warm_up_text(run)],
        ["Server", f"{_fmt(run.get('server_mode'))}, {_fmt(run.get('replicas'))} replica(s)"],
        ["Dataset / images", f"{_fmt(run.get('dataset'))} / {_fmt(run.get('limit'))}"],
        ["Streams", _fmt(run.get("streams"))],
        ["Broker / content type", f"{_fmt(run.get('broker'))} / {_fmt(run.get('content_type'))}"],
        ["Machine", describe_machine(run.get("machine"))],
    ]
    return ["Metric", "Value"], rows


def _warm_up_text(run: dict) -> str:
    warm = run.get("warm_up")
    return f"{warm['messages']} requests through the real path in {warm['seconds']} s, not timed" if warm else "none"


def _model_identity_text(summary: dict) -> str:
    """The model identity, flagging runs where results came from more than one model."""
    model = _section(summary, "model")
    identity = _fmt(model.get("identity"))
    others = [seen for seen in model.get("seen") or [] if seen != model.get("identity")]
    return f"{identity} (WARNING: also answered by {', '.join(others)})" if others else identity


def _per_class_table(summary: dict) -> Table:
    header = ["Class", "Support", "Accuracy", "Precision", "Recall", "F1"]
    rows = [
        [
            str(entry.get("class", "?")),
            _fmt(entry.get("support")),
            _fmt(entry.get("accuracy"), 3),
            _fmt(entry.get("precision"), 3),
            _fmt(entry.get("recall"), 3),
            _fmt(entry.get("f1"), 3),
        ]
        for entry in summary.get("per_class") or []
    ]
    return header, rows


def _server_table(summary: dict) -> Table:
    """Queue-wait and compute percentiles measured inside the inference server."""
    server = _section(summary, "server")
    stages = [("Queue wait", server.get("queue_ms") or {}), ("Compute", server.get("compute_ms") or {})]
    keys = [key for key in PERCENTILE_KEYS if any(key in stats for _, stats in stages)]
    rows = [[name] + [_ms(stats.get(key)) for key in keys] for name, stats in stages]
    return ["Stage"] + keys, rows


def _error_reasons_table(summary: dict) -> Table:
    reasons = sorted((summary.get("error_reasons") or {}).items(), key=lambda item: (-item[1], item[0]))
    return ["Reason", "Count"], [[str(reason), _fmt(count)] for reason, count in reasons]


def _error_examples_table(summary: dict) -> Table:
    errors = (summary.get("errors") or [])[:MAX_ERRORS_LISTED]
    rows = [[str(e.get("request_id", "")), str(e.get("error", "")), str(e.get("detail", ""))] for e in errors]
    return ["Request id", "Error", "Detail"], rows


def _confusion_table(summary: dict) -> Table:
    matrix = summary.get("confusion") or []
    names = _class_names(summary, len(matrix))
    header = ["True \\ Predicted"] + _class_names(summary, len(matrix[0]) if matrix else 0)
    return header, [[name] + [str(count) for count in row] for name, row in zip(names, matrix, strict=True)]


def _versions_table(summary: dict) -> Table:
    versions = _section(summary, "run").get("versions") or {}
    return ["Package", "Version"], [[str(name), str(version)] for name, version in sorted(versions.items())]


def _class_names(summary: dict, count: int) -> list[str]:
    """Class names for a matrix axis of length ``count``; falls back to indices if they do not match."""
    names = list(summary.get("class_names") or [])
    return [str(name) for name in names] if len(names) == count else [str(i) for i in range(count)]


def _missing_list(summary: dict) -> list[str]:
    missing = list(summary.get("missing") or [])
    listed = [str(request_id) for request_id in missing[:MAX_MISSING_LISTED]]
    if len(missing) > MAX_MISSING_LISTED:
        listed.append(f"... and {len(missing) - MAX_MISSING_LISTED} more (see report.json)")
    return listed


# --------------------------------------------------------------------------- plots


def _empty_figure(title: str, message: str) -> Figure:
    """Placeholder plot so every report has the same files even when a run produced no data."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="gray", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def _confusion_figure(summary: dict) -> Figure:
    """Heatmap coloured by row-normalised fraction (recall per true class) with raw counts in each cell."""
    matrix = np.asarray(summary.get("confusion") or [], dtype=float)
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
    ax.set_xticks(np.arange(matrix.shape[1]), _class_names(summary, matrix.shape[1]))
    ax.set_yticks(np.arange(matrix.shape[0]), _class_names(summary, matrix.shape[0]))
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (accuracy {_pct(summary.get('accuracy'))}, {int(matrix.sum())} answered)")
    fig.tight_layout()
    return fig


def _latencies_ms(summary: dict) -> np.ndarray:
    """Per-request end-to-end latencies, skipping entries where the latency is unknown."""
    values = [p.get("latency_ms") for p in summary.get("predictions") or []]
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def _percentile(summary: dict, values: np.ndarray, key: str, q: float) -> float:
    """Prefer the collector's percentile (so plot and tables agree); compute it if absent."""
    reported = _section(summary, "latency_ms").get(key)
    return float(reported) if reported is not None else float(np.percentile(values, q))


def _has_long_tail(values: np.ndarray, p50: float) -> bool:
    """True when the slowest requests are >10x the median: a linear axis would squash the bulk."""
    return bool(values.min() > 0 and values.max() > 10 * p50)


def _latency_figure(summary: dict) -> Figure:
    """Histogram and empirical CDF of end-to-end latency with p50/p99 marked (log x-axis for long tails)."""
    values = _latencies_ms(summary)
    if values.size == 0:
        return _empty_figure("End-to-end latency", "No latencies recorded")
    marks = [("p50", _percentile(summary, values, "p50", 50), 0.50, "tab:orange")]
    marks.append(("p99", _percentile(summary, values, "p99", 99), 0.99, "tab:red"))
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


def _timeline(points: Sequence | None) -> np.ndarray:
    """A [[t, count], ...] timeline as an (n, 2) float array (empty-safe)."""
    return np.asarray(points or [], dtype=float).reshape(-1, 2)


def _throughput_figure(summary: dict) -> Figure:
    """Results (and publishes) per second over time, against the target publish rate."""
    throughput = _section(summary, "throughput")
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
    target = _section(summary, "run").get("rate_target") or 0
    if target > 0:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1.2, label=f"target rate {target:g} / s")
    peak = max([target] + [float(series[:, 1].max()) for series in (received, published) if series.size])
    ax.set_ylim(0, max(peak, 1.0) * 1.15)  # headroom so lines at the target are not clipped by the frame
    ax.set_xlabel("time since first publish (s)")
    ax.set_ylabel("images per second")
    ax.set_title(f"Throughput ({_fmt(throughput.get('img_per_s'))} img/s overall)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def _batch_size_figure(summary: dict) -> Figure:
    """How many requests were served in server batches of each size (one bar per observed size)."""
    server = _section(summary, "server")
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
    ax.set_title(f"Server batch sizes (mean {_fmt(server.get('mean_batch_size'))})")
    fig.tight_layout()
    return fig


# (file name, alt text, figure builder) for every plot in the report.
def _calibration_table(summary: dict) -> Table:
    """Is the confidence true? One column per model."""
    models = [("", summary)] + ([("B", summary["compare"]["b"])] if summary.get("compare") else [])
    header = ["Calibration (15 equal-width bins)"] + [
        f"model {'A' if not name and len(models) > 1 else name or ''} {_section(s, 'model').get('identity', '')}".strip()
        for name, s in models
    ]
    cals = [_section(s, "calibration") for _, s in models]
    rows = [
        ["Expected calibration error (ECE)"] + [_pct(c.get("ece")) for c in cals],
        ["Largest bin gap |confidence - accuracy|"] + [_pct(c.get("max_gap")) for c in cals],
        ["Mean confidence"] + [_pct(c.get("mean_confidence")) for c in cals],
        ["Accuracy"] + [_pct(c.get("accuracy")) for c in cals],
        ["Verdict"] + [_confidence_verdict(c) for c in cals],
    ]
    return header, rows


def _confidence_verdict(cal: dict) -> str:
    over = cal.get("overconfidence")
    if over is None:
        return NA
    if abs(over) < 0.005:
        return "confidence matches accuracy (within 0.5 points)"
    return f"{'over' if over > 0 else 'under'}-confident by {abs(over) * 100:.2f} points"


def _reliability_figure(summary: dict) -> Figure:
    """Confidence bins against the accuracy observed in them, with how many predictions each bin holds."""
    models = [("A" if summary.get("compare") else "model", summary)]
    if summary.get("compare"):
        models.append(("B", summary["compare"]["b"]))
    bins = _section(summary, "calibration").get("bins") or []
    if not bins or not any(b["count"] for b in bins):
        return _empty_figure("Reliability diagram", "No answered predictions")
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(7.5, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1 / len(bins) / len(models)
    for k, (name, s) in enumerate(models):
        cal = _section(s, "calibration")
        lows = np.array([b["lower"] for b in cal["bins"]]) + k * width
        acc = np.array([b["accuracy"] if b["count"] else np.nan for b in cal["bins"]])
        conf = np.array([b["confidence"] if b["count"] else np.nan for b in cal["bins"]])
        counts = np.array([b["count"] for b in cal["bins"]])
        label = f"{name} {_section(s, 'model').get('identity', '')}: ECE {_pct(cal.get('ece'))}"
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
    ax_n.set_xlabel("confidence (15 equal-width bins)")
    fig.tight_layout()
    return fig


def _comparison_tables(summary: dict) -> list[Block]:
    cmp, b = summary["compare"], summary["compare"]["b"]
    mc = cmp["mcnemar"]
    la, lb = _section(summary, "latency_ms"), _section(b, "latency_ms")
    side = (
        ["", f"A {_section(summary, 'model').get('identity')}", f"B {_section(b, 'model').get('identity')}", "B - A"],
        [
            ["Model folder", _fmt(_section(summary, "model").get("dir")), _fmt(_section(b, "model").get("dir")), ""],
            [
                "Accuracy (paired images)",
                _pct(cmp["accuracy_a"]),
                _pct(cmp["accuracy_b"]),
                _signed_pct(cmp["accuracy_delta"]),
            ],
            ["Answered", _fmt(summary["counts"]["answered"]), _fmt(b["counts"]["answered"]), ""],
            ["ECE", _pct(summary["calibration"]["ece"]), _pct(b["calibration"]["ece"]), ""],
        ]
        + [
            [f"Latency {k}", _ms(la.get(k)), _ms(lb.get(k)), _signed_ms(lb.get(k), la.get(k))]
            for k in ("p50", "p90", "p99")
        ]
        + [
            [
                "Throughput",
                _fmt(summary["throughput"]["img_per_s"], 1, " img/s"),
                _fmt(b["throughput"]["img_per_s"], 1, " img/s"),
                "",
            ]
        ],
    )
    mcnemar = (
        ["McNemar (exact, two-sided)", "B right", "B wrong"],
        [
            ["A right", _fmt(mc["both_right"]), _fmt(mc["a_right_b_wrong"])],
            ["A wrong", _fmt(mc["a_wrong_b_right"]), _fmt(mc["both_wrong"])],
        ],
    )
    verdict = (
        f"On {cmp['paired_images']} paired images the models disagree on {cmp['disagreements']}. Discordant pairs: "
        f"A right/B wrong {mc['a_right_b_wrong']}, A wrong/B right {mc['a_wrong_b_right']}; exact McNemar "
        f"p = {mc['p_value']:.3g}: "
        + (
            f"model {'B' if (cmp['accuracy_delta'] or 0) > 0 else 'A'} is better by more than chance (p < 0.05)."
            if mc["significant_at_0.05"]
            else "the difference could be chance (p >= 0.05)."
        )
    )
    per_class = (
        ["Class", "Accuracy A", "Accuracy B", "Δ accuracy", "F1 A", "F1 B", "Δ F1"],
        [
            [
                row["class"],
                _pct(row["accuracy_a"]),
                _pct(row["accuracy_b"]),
                _signed_pct(row["accuracy_delta"]),
                _fmt(row["f1_a"], 4),
                _fmt(row["f1_b"], 4),
                _fmt(row["f1_delta"], 4),
            ]
            for row in cmp["per_class"]
        ],
    )
    return [("table", side), ("text", verdict), ("table", mcnemar), ("table", per_class)]


def _signed_pct(fraction) -> str:
    return NA if fraction is None else f"{100 * fraction:+.2f} pts"


def _signed_ms(new, old) -> str:
    return NA if new is None or old is None else f"{new - old:+.1f} ms"


GALLERY_PNG = "disagreements.png"
GALLERY_MAX = 40


def _gallery_figure(summary: dict, images: np.ndarray) -> Figure:
    """Images where the two models disagree, captioned with the truth and both predictions."""
    examples = summary["compare"]["disagreement_examples"][:GALLERY_MAX]
    names = summary.get("class_names") or []
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
    total = summary["compare"]["disagreements"]
    fig.suptitle(f"Where A and B disagree: the first {len(examples)} of {total} images (✓ = correct)")
    fig.tight_layout()
    return fig


PLOTS: tuple[tuple[str, str, Callable[[dict], Figure]], ...] = (
    ("confusion_matrix.png", "Confusion matrix", _confusion_figure),
    ("latency.png", "Latency distribution", _latency_figure),
    ("throughput.png", "Throughput over time", _throughput_figure),
    ("batch_sizes.png", "Server batch sizes", _batch_size_figure),
    ("reliability.png", "Reliability diagram", _reliability_figure),
)


def _save_figure(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- markdown / html


def _report_title(summary: dict) -> str:
    run = _section(summary, "run")
    return f"Streaming evaluation of {run.get('dataset') or 'fashion_mnist'}: {_fmt(run.get('started_at'))}"


def _report_sections(summary: dict) -> list[tuple[str, list[Block]]]:
    """The report's content, shared by the Markdown and HTML renderers so both say the same thing."""
    server = _section(summary, "server")
    sections: list[tuple[str, list[Block]]] = [
        ("Summary", [("table", _summary_table(summary))]),
        ("Per-class metrics", [("table", _per_class_table(summary))]),
        ("Confusion matrix", [("image", PLOTS[0][:2]), ("table", _confusion_table(summary))]),
        ("Calibration: is the confidence true?", [("table", _calibration_table(summary)), ("image", PLOTS[4][:2])]),
        ("Latency", [("image", PLOTS[1][:2])]),
        ("Throughput", [("image", PLOTS[2][:2])]),
        (
            "Server-side breakdown",
            [
                ("table", _server_table(summary)),
                ("text", f"Mean batch size: {_fmt(server.get('mean_batch_size'))}"),
                ("image", PLOTS[3][:2]),
            ],
        ),
    ]
    if summary.get("compare"):
        blocks = _comparison_tables(summary)
        if summary["compare"].get("gallery"):
            blocks.append(("image", (GALLERY_PNG, "Images where the two models disagree")))
        sections.insert(1, ("Model A against model B, on the same requests", blocks))
    if summary.get("error_reasons") or summary.get("errors"):
        blocks: list[Block] = [("table", _error_reasons_table(summary))]
        blocks += [("text", f"First {MAX_ERRORS_LISTED} errors:"), ("table", _error_examples_table(summary))]
        sections.append(("Errors", blocks))
    if summary.get("missing"):
        count = len(summary["missing"])
        text = f"{count} request(s) were never answered (first {MAX_MISSING_LISTED} listed):"
        sections.append(("Missing requests", [("text", text), ("list", _missing_list(summary))]))
    if _section(summary, "run").get("versions"):
        sections.append(("Environment", [("table", _versions_table(summary))]))
    return sections


NUMERIC_CELL = re.compile(r"^(n/a|-?\d[\d.,]*(%| ms| s)?)$")


def _numeric_columns(table: Table) -> list[bool]:
    """Which columns hold only numbers (right-aligned so digits line up); the first column is a label."""
    header, rows = table
    return [i > 0 and all(NUMERIC_CELL.match(row[i]) for row in rows) for i in range(len(header))]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: Table) -> str:
    header, rows = table
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(_md_cell(cell) for cell in header) + " |"]
    lines.append("|" + "|".join("---:" if numeric else ":---" for numeric in _numeric_columns(table)) + "|")
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_block(block: Block) -> str:
    kind, payload = block
    if kind == "table":
        return _markdown_table(payload)
    if kind == "image":
        file_name, alt = payload
        return f"![{alt}]({file_name})"
    if kind == "list":
        return "\n".join(f"- `{item}`" for item in payload)
    return str(payload)


def _render_markdown(summary: dict) -> str:
    """The report as Markdown with relative image links (renders on a code host next to the PNGs)."""
    parts = [f"# {_report_title(summary)}"]
    for title, blocks in _report_sections(summary):
        parts.append(f"## {title}")
        parts += [_markdown_block(block) for block in blocks]
    return "\n\n".join(parts) + "\n"


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .7em; }
th { background: #f4f6f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
code { background: #f4f4f4; padding: 0 .3em; }
"""


def _html_table(table: Table) -> str:
    header, rows = table
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    cell_tags = ["<td class=num>" if numeric else "<td>" for numeric in _numeric_columns(table)]
    body = "".join(
        "<tr>" + "".join(f"{tag}{html.escape(cell)}</td>" for tag, cell in zip(cell_tags, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_block(block: Block, out_dir: Path) -> str:
    kind, payload = block
    if kind == "table":
        return _html_table(payload)
    if kind == "image":
        file_name, alt = payload
        return f'<img src="{_png_data_uri(out_dir / file_name)}" alt="{html.escape(alt)}">'
    if kind == "list":
        return "<ul>" + "".join(f"<li><code>{html.escape(item)}</code></li>" for item in payload) + "</ul>"
    return f"<p>{html.escape(str(payload))}</p>"


def _render_html(summary: dict, out_dir: Path) -> str:
    """One self-contained HTML page; the PNGs already written to ``out_dir`` are inlined as data URIs."""
    title = html.escape(_report_title(summary))
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>']
    parts.append(f"<style>{HTML_STYLE}</style></head><body><h1>{title}</h1>")
    for section_title, blocks in _report_sections(summary):
        parts.append(f"<h2>{html.escape(section_title)}</h2>")
        parts += [_html_block(block, out_dir) for block in blocks]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- public API


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays that slipped into the summary serialise as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_report(summary: dict, out_dir: str | Path, images: np.ndarray | None = None) -> Path:
    """Write report.json, the PNG plots, report.md and report.html into ``out_dir``.

    The JSON keeps the raw numbers for later comparison; the plots, Markdown and HTML are for people.
    With two models compared and the run's ``images`` given, a gallery of their disagreements too.
    Returns ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if summary.get("compare") and images is not None:
        _save_figure(_gallery_figure(summary, images), out_dir / GALLERY_PNG)
        summary["compare"]["gallery"] = GALLERY_PNG
    with open(out_dir / REPORT_JSON, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=_json_default)
    for file_name, _alt, build_figure in PLOTS:
        _save_figure(build_figure(summary), out_dir / file_name)
    (out_dir / REPORT_MD).write_text(_render_markdown(summary), encoding="utf-8")
    (out_dir / REPORT_HTML).write_text(_render_html(summary, out_dir), encoding="utf-8")
    return out_dir


def render_terminal(summary: dict, out_dir: str | Path | None = None) -> str:
    """A ~20-line console summary of the run, readable at a glance; mentions where the report lives."""
    run, counts, latency = _section(summary, "run"), _section(summary, "counts"), _section(summary, "latency_ms")
    throughput, server = _section(summary, "throughput"), _section(summary, "server")
    queue, compute = server.get("queue_ms") or {}, server.get("compute_ms") or {}
    reasons = summary.get("error_reasons") or {}
    lines = [
        "=" * 78,
        _report_title(summary),
        "=" * 78,
        f"  run         {_fmt(run.get('started_at'))} -> {_fmt(run.get('finished_at'))}"
        f"  (wall {_fmt(run.get('wall_s'), 1, ' s')})",
        f"  setup       {_fmt(run.get('server_mode'))} server, {_fmt(run.get('replicas'))} replica(s), "
        f"{_fmt(run.get('streams'))} stream(s), broker {_fmt(run.get('broker'))}",
        f"  machine     {describe_machine(run.get('machine'))}",
        f"  warm-up     {_warm_up_text(run)}",
        f"  model       {_model_identity_text(summary)}",
        f"  images      sent {_fmt(counts.get('sent'))}   answered {_fmt(counts.get('answered'))}"
        f"   missing {_fmt(counts.get('missing'))}",
        f"              duplicates {_fmt(counts.get('duplicates'))}   errors {_fmt(counts.get('errors'))}"
        f"   dead-lettered {_fmt(counts.get('dead_lettered'))}   stray {_fmt(counts.get('stray'))}",
        f"  accuracy    {_pct(summary.get('accuracy'))}  ({_fmt(counts.get('correct'))} correct)",
        f"  latency     p50 {_ms(latency.get('p50'))}   p90 {_ms(latency.get('p90'))}"
        f"   p99 {_ms(latency.get('p99'))}   max {_ms(latency.get('max'))}",
        f"  throughput  {_fmt(throughput.get('img_per_s'), 1, ' img/s')}"
        f"   publish rate {_fmt(run.get('rate_achieved'))} / target {_fmt(run.get('rate_target'))} img/s",
        f"  server      queue p50 {_ms(queue.get('p50'))}   compute p50 {_ms(compute.get('p50'))}"
        f"   mean batch {_fmt(server.get('mean_batch_size'))}",
        f"  ordering    {_fmt(_section(summary, 'ordering').get('violations'))} violation(s)",
        "  errors      " + (", ".join(f"{reason} x{count}" for reason, count in reasons.items()) or "none"),
    ]
    cal = _section(summary, "calibration")
    if cal:
        lines.append(
            f"  calibration ECE {_pct(cal.get('ece'))}, mean confidence {_pct(cal.get('mean_confidence'))} "
            f"vs accuracy {_pct(cal.get('accuracy'))}: {_confidence_verdict(cal)}"
        )
    if summary.get("compare"):
        cmp, b = summary["compare"], summary["compare"]["b"]
        mc = cmp["mcnemar"]
        lines += [
            f"  model B     {_fmt(_section(b, 'model').get('identity'))}: accuracy {_pct(cmp['accuracy_b'])} "
            f"vs A {_pct(cmp['accuracy_a'])} ({_signed_pct(cmp['accuracy_delta'])}), "
            f"p50 {_ms(_section(b, 'latency_ms').get('p50'))}",
            f"  McNemar     A right/B wrong {mc['a_right_b_wrong']}, A wrong/B right {mc['a_wrong_b_right']}: "
            f"p = {mc['p_value']:.3g}"
            + (" (significant at 0.05)" if mc["significant_at_0.05"] else " (could be chance)"),
        ]
    weakest = _weakest_class_text(summary)
    if weakest:
        lines.append(f"  weakest     {weakest}")
    if summary.get("offline"):
        lines.append(f"  offline     {_offline_text(summary['offline'])}")
    if out_dir is not None:
        out_dir = Path(out_dir)
        lines.append(f"  report      {out_dir / REPORT_MD}  |  {out_dir / REPORT_HTML}")
    lines.append("=" * 78)
    return "\n".join(lines)


def _offline_text(offline: dict | None) -> str:
    """How the streamed predictions compare with `python -m train.evaluate` on the same images."""
    if not offline:
        return "not run"
    verdict = (
        "identical, prediction by prediction"
        if offline.get("identical")
        else "; ".join([f"{len(offline.get('mismatches') or [])} mismatch(es)", *offline.get("differences", [])])
    )
    spread = ""
    if offline.get("max_confidence_diff") is not None:  # reports written before the tolerance rule lack it
        spread = f"; confidences within {offline['max_confidence_diff']:.1g} (allowed {offline['tolerance']:g})"
    return (
        f"{_fmt(offline.get('agree'))}/{_fmt(offline.get('compared'))} agree; {verdict}{spread}; "
        f"offline accuracy {_pct(offline.get('offline_accuracy'))}"
    )


def _weakest_class_text(summary: dict) -> str:
    """The class with the lowest accuracy, the first place to look when accuracy is off."""
    scored = [entry for entry in summary.get("per_class") or [] if entry.get("accuracy") is not None]
    if not scored:
        return ""
    worst = min(scored, key=lambda entry: entry["accuracy"])
    return f"{worst.get('class')} ({_pct(worst['accuracy'])} of {_fmt(worst.get('support'))})"


def latest_report(reports_dir: str | Path = "reports") -> Path:
    """The newest sub-folder of ``reports_dir`` that contains a report.json (by its modification time)."""
    root = Path(reports_dir)
    candidates = [child for child in root.iterdir() if (child / REPORT_JSON).is_file()] if root.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"No report found: no sub-folder of '{root}' contains {REPORT_JSON}.")
    return max(candidates, key=lambda child: ((child / REPORT_JSON).stat().st_mtime, child.name))


def _resolve_report_json(path: str | Path | None, reports_dir: str | Path) -> Path:
    if path is None:
        return latest_report(reports_dir) / REPORT_JSON
    path = Path(path)
    report_json = path / REPORT_JSON if path.is_dir() else path
    if not report_json.is_file():
        raise FileNotFoundError(f"No report at '{report_json}' (expected a report folder or a {REPORT_JSON} file).")
    return report_json


def show_report(path: str | Path | None = None, reports_dir: str | Path = "reports") -> str:
    """Terminal summary of a saved run: ``path`` (folder or report.json) or else the newest in ``reports_dir``."""
    report_json = _resolve_report_json(path, reports_dir)
    summary = json.loads(report_json.read_text(encoding="utf-8"))
    return render_terminal(summary, report_json.parent)


def diff_reports(path_a: str | Path, path_b: str | Path, reports_dir: str | Path = "reports") -> tuple[str, Path]:
    """Compare two saved runs (any days apart): accuracy, per-class, calibration, latency, throughput, models.

    Returns the text (also printed by `python -m streamer report --diff A B`) and the folder where
    diff.md and diff.json were written.
    """
    paths = [_resolve_report_json(p, reports_dir) for p in (path_a, path_b)]
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    a, b = runs
    la, lb = _section(a, "latency_ms"), _section(b, "latency_ms")
    ta, tb = _section(a, "throughput").get("img_per_s"), _section(b, "throughput").get("img_per_s")
    rows = [
        ["Run", f"{_section(a, 'run').get('run_id')} {_section(a, 'run').get('started_at')}",
         f"{_section(b, 'run').get('run_id')} {_section(b, 'run').get('started_at')}", ""],
        ["Model", _model_identity_text(a), _model_identity_text(b),
         "same" if _section(a, "model").get("identity") == _section(b, "model").get("identity") else "DIFFERENT"],
        ["Dataset / images", f"{_section(a, 'run').get('dataset')} / {_section(a, 'run').get('limit')}",
         f"{_section(b, 'run').get('dataset')} / {_section(b, 'run').get('limit')}", ""],
        ["Accuracy", _pct(a.get("accuracy")), _pct(b.get("accuracy")), _signed_pct(delta(b.get("accuracy"), a.get("accuracy")))],
        ["ECE", _pct(_section(a, "calibration").get("ece")), _pct(_section(b, "calibration").get("ece")),
         _signed_pct(delta(_section(b, "calibration").get("ece"), _section(a, "calibration").get("ece")))],
    ]  # fmt: skip
    rows += [
        [f"Latency {k}", _ms(la.get(k)), _ms(lb.get(k)), _signed_ms(lb.get(k), la.get(k))]
        for k in ("p50", "p90", "p99")
    ]
    rows.append(["Throughput", _fmt(ta, 1, " img/s"), _fmt(tb, 1, " img/s"), _fmt(delta(tb, ta), 1, " img/s")])
    per_class = [
        [ca["class"], _pct(ca["accuracy"]), _pct(cb["accuracy"]), _signed_pct(delta(cb["accuracy"], ca["accuracy"]))]
        for ca, cb in zip(a.get("per_class") or [], b.get("per_class") or [])
    ]
    overview: Table = (["", "A", "B", "B - A"], rows)
    classes: Table = (["Class", "Accuracy A", "Accuracy B", "B - A"], per_class)
    markdown = f"# Run A against run B\n\n{_markdown_table(overview)}\n\n## Per class\n\n{_markdown_table(classes)}\n"
    # Beside run A's folder (reports/<run>/ -> reports/diff-<time>/), wherever that folder lives.
    out_dir = paths[0].parent.parent / f"diff-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diff.md").write_text(markdown, encoding="utf-8")
    table_json = {
        "overview": [dict(zip(overview[0], r)) for r in rows],
        "per_class": [dict(zip(classes[0], r)) for r in per_class],
    }
    (out_dir / "diff.json").write_text(json.dumps(table_json, indent=1), encoding="utf-8")
    width = max(len(r[0]) for r in rows + per_class) + 2
    text = ["Run A against run B", ""]
    text += [f"  {r[0]:<{width}} {r[1]:>28}  {r[2]:>28}  {r[3]:>12}" for r in rows]
    text += ["", "  per class"] + [f"  {r[0]:<{width}} {r[1]:>28}  {r[2]:>28}  {r[3]:>12}" for r in per_class]
    text += ["", f"  written to {out_dir / 'diff.md'} and diff.json"]
    return "\n".join(text), out_dir

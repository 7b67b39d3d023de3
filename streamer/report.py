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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

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
        ["Server", f"{_fmt(run.get('server_mode'))}, {_fmt(run.get('replicas'))} replica(s)"],
        ["Streams / limit", f"{_fmt(run.get('streams'))} / {_fmt(run.get('limit'))}"],
        ["Broker / content type", f"{_fmt(run.get('broker'))} / {_fmt(run.get('content_type'))}"],
    ]
    return ["Metric", "Value"], rows


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
PLOTS: tuple[tuple[str, str, Callable[[dict], Figure]], ...] = (
    ("confusion_matrix.png", "Confusion matrix", _confusion_figure),
    ("latency.png", "Latency distribution", _latency_figure),
    ("throughput.png", "Throughput over time", _throughput_figure),
    ("batch_sizes.png", "Server batch sizes", _batch_size_figure),
)


def _save_figure(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- markdown / html


def _report_title(summary: dict) -> str:
    return f"Fashion-MNIST streaming evaluation: {_fmt(_section(summary, 'run').get('started_at'))}"


def _report_sections(summary: dict) -> list[tuple[str, list[Block]]]:
    """The report's content, shared by the Markdown and HTML renderers so both say the same thing."""
    server = _section(summary, "server")
    sections: list[tuple[str, list[Block]]] = [
        ("Summary", [("table", _summary_table(summary))]),
        ("Per-class metrics", [("table", _per_class_table(summary))]),
        ("Confusion matrix", [("image", PLOTS[0][:2]), ("table", _confusion_table(summary))]),
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


def write_report(summary: dict, out_dir: str | Path) -> Path:
    """Write report.json, the four PNG plots, report.md and report.html into ``out_dir``.

    The JSON keeps the raw numbers for later comparison; the plots, Markdown and HTML are for people.
    Returns ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
        else (f"{len(offline.get('mismatches') or [])} mismatch(es)")
    )
    return (
        f"{_fmt(offline.get('agree'))}/{_fmt(offline.get('compared'))} agree; {verdict}; "
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


if __name__ == "__main__":
    import sys

    print(show_report(sys.argv[1] if len(sys.argv) > 1 else None))

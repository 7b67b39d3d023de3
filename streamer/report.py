"""A finished run as a report folder a person can read, and the saved-report commands (show, latest, diff).

``write_report`` writes, from the run's result (results/run.py) and its figures (results/metrics.py):

* ``report.json``: the result and its figures, so the run can be shown or compared later;
* the plots of streamer/figures.py (PNG);
* ``report.md``: tables plus relative image links, so it renders on a code host;
* ``report.html``: one self-contained page (inline CSS, plots as base64 data URIs) to open offline.

Every table goes through results/tables.py; a comparison of two models (or of two saved runs) is
results/compare.py's. Missing values (e.g. latencies of a run where nothing was answered) read "n/a".
Every figure that is an estimate is shown with its interval (results/metrics.py's ``intervals``), at
the level and bootstrap settings of configs/stream.py's ``intervals`` unless the caller passes others.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from configs import load_config
from results import run as run_json
from results.compare import compare, comparison_blocks, comparison_tables, comparison_text, model_text
from results.machine import describe as describe_machine
from results.metrics import Uncertainty, interval_at
from results.readout import (
    calibration_note,
    calibration_table,
    calibration_text,
    detectable_rows,
    detectable_text,
    latency_text,
    level_text,
    per_class_note,
    per_class_table,
)
from results.run import RunResult
from results.tables import Block, Cell, Section, Table, cells, fmt, render, render_page
from streamer.figures import GALLERY_PNG, PLOTS, Shown, gallery_figure, save_figure

if TYPE_CHECKING:
    from streamer.robustness_report import ReportPart

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
MAX_MISSING_LISTED = 50
MAX_ERRORS_LISTED = 20
PERCENTILE_KEYS = ("p50", "p90", "p95", "p99", "max", "mean")


def interval_settings(config=None, level: float | None = None) -> Uncertainty:
    """The intervals' settings: ``config.intervals`` (configs/stream.py's by default), ``level`` instead of its own."""
    own = config.get("intervals") if config is not None else None  # a config file of its own may have none
    settings = dict(own or load_config(None, "stream.py").intervals)
    if level is not None:
        settings["level"] = level
    return Uncertainty(**settings)


# --------------------------------------------------------------------------- tables
def _summary_table(shown: Shown) -> Table:
    """Headline numbers of the run: counts, accuracy, rates, latency, ordering, model, wall time."""
    r, f = shown.result, shown.figures
    run, counts, latency, throughput = r.run, f["counts"], f["latency_ms"], f["throughput"]
    rows: list[list] = [
        [name, Cell(counts[key], "count")]
        for name, key in (
            ("Images sent", "sent"), ("Answered", "answered"), ("Missing", "missing"), ("Duplicates", "duplicates"),
            ("Errors", "errors"), ("Dead-lettered", "dead_lettered"), ("Stray (not from this run)", "stray"),
            ("Invalid results (refused)", "invalid"),
        )
    ]  # fmt: skip
    rows += [
        [
            "Accuracy",
            f"{fmt(f['accuracy'], 'percent', interval=interval_at(f, 'accuracy'))} ({counts['correct']} correct)",
        ],
        *detectable_rows(f),
        ["Publish rate target / achieved", f"{fmt(run.rate_target)} / {fmt(run.rate_achieved)} img/s"],
        [
            "Throughput (results)",
            f"{fmt(throughput['img_per_s'], 'rate')} over {fmt(throughput['first_publish_to_last_result_s'], 'seconds', 2)}",
        ],
    ]
    within = " (interval within this run)" if interval_at(f, "latency_ms") else ""
    rows += [
        [
            f"Latency {key}" + (within if interval_at(f, "latency_ms", key) else ""),
            Cell(latency[key], "ms", interval=interval_at(f, "latency_ms", key)),
        ]
        for key in PERCENTILE_KEYS
    ]
    rows += [
        ["Ordering violations", Cell(r.ordering.violations, "count")],
        ["Offline check (same checkpoint)", _offline_text(r)],
        ["Model identity", model_text(r)],
        ["Wall time", Cell(run.wall_s, "seconds")],
        ["Warm-up (before the timed stream)", _warm_up_text(r)],
        ["Server", f"{fmt(run.server_mode, 'text')}, {fmt(run.replicas)} replica(s)"],
        ["Dataset / images", f"{fmt(run.dataset, 'text')} / {fmt(run.limit)}"],
        ["Streams", Cell(run.streams, "count")],
        ["Broker / content type", f"{fmt(run.broker, 'text')} / {fmt(run.content_type, 'text')}"],
        ["Machine", describe_machine(run.machine)],
    ]
    level = level_text(f)
    return Table(["Metric", f"Value [{level} interval]" if level else "Value"], rows)


def _warm_up_text(r: RunResult) -> str:
    warm = r.run.warm_up
    return f"{warm['messages']} requests through the real path in {warm['seconds']} s, not timed" if warm else "none"


def _offline_text(r: RunResult) -> str:
    """How the streamed predictions compare with `python -m train.evaluate` on the same images."""
    offline = r.offline
    if offline is None:
        return "not run"
    verdict = (
        "identical, prediction by prediction"
        if offline.identical
        else "; ".join([f"{len(offline.mismatches)} mismatch(es)", *offline.differences])
    )
    spread = ""
    if offline.max_confidence_diff is not None:
        spread = f"; confidences within {offline.max_confidence_diff:.1g} (allowed {offline.tolerance:g})"
    return (
        f"{offline.agree}/{offline.compared} agree; {verdict}{spread}; "
        f"offline accuracy {fmt(offline.offline_accuracy, 'percent')}"
    )


def _per_class_blocks(shown: Shown) -> list[Block]:
    """One per-class table per model; how their intervals are made under them."""
    models = shown.models()
    blocks: list[Block] = []
    for name, r, figures in models:
        if len(models) > 1:
            blocks.append(("text", f"Model {name} {r.model.identity or ''}:"))
        blocks.append(("table", per_class_table(figures)))
    note = per_class_note(shown.figures)
    return blocks + ([("text", note)] if note else [])


def _confusion_table(shown: Shown) -> Table:
    names = list(shown.result.class_names)
    rows = [[name, *cells("count", *row)] for name, row in zip(names, shown.figures["confusion"], strict=True)]
    return Table(["True \\ Predicted", *names], rows)


def _calibration_blocks(shown: Shown) -> list[Block]:
    note = calibration_note(shown.figures)
    return [("table", calibration_table(shown.models())), *([("text", note)] if note else []), _image("reliability")]


def _server_table(shown: Shown) -> Table:
    """Queue-wait and compute percentiles measured inside the inference server."""
    server = shown.figures["server"]
    stages = [("Queue wait", server["queue_ms"]), ("Compute", server["compute_ms"])]
    keys = [key for key in PERCENTILE_KEYS if any(key in stats for _, stats in stages)]
    return Table(["Stage", *keys], [[name, *cells("ms", *(stats.get(k) for k in keys))] for name, stats in stages])


def _errors_blocks(shown: Shown) -> list[Block]:
    reasons = sorted(shown.figures["error_reasons"].items(), key=lambda item: (-item[1], item[0]))
    examples = [[str(e.get(k, "")) for k in ("request_id", "error", "detail")] for e in shown.result.errors]
    return [
        ("table", Table(["Reason", "Count"], [[str(reason), Cell(count, "count")] for reason, count in reasons])),
        ("text", f"First {MAX_ERRORS_LISTED} errors:"),
        ("table", Table(["Request id", "Error", "Detail"], examples[:MAX_ERRORS_LISTED])),
    ]


def _missing_list(r: RunResult) -> list[str]:
    listed = list(r.missing[:MAX_MISSING_LISTED])
    if len(r.missing) > MAX_MISSING_LISTED:
        listed.append(f"... and {len(r.missing) - MAX_MISSING_LISTED} more (see report.json)")
    return listed


# --------------------------------------------------------------------------- the page
def _image(name: str) -> Block:
    return ("image", (PLOTS[name].file, PLOTS[name].alt))


def _title(r: RunResult) -> str:
    return f"Streaming evaluation of {r.run.dataset or 'fashion_mnist'}: {fmt(r.run.started_at, 'text')}"


def report_sections(shown: Shown, gallery: bool = False, parts: Sequence[ReportPart] = ()) -> list[Section]:
    """The report's content, shared by the Markdown and HTML pages so both say the same thing.

    `parts` (streamer/robustness_report.py: robustness, slices) come after the summary and the comparison.
    """
    r = shown.result
    sections: list[Section] = [
        ("Summary", [("table", _summary_table(shown))]),
        ("Per-class metrics", _per_class_blocks(shown)),
        ("Confusion matrix", [_image("confusion"), ("table", _confusion_table(shown))]),
        ("Calibration: is the confidence true?", _calibration_blocks(shown)),
        ("Latency", [_image("latency")]),
        ("Throughput", [_image("throughput")]),
        (
            "Server-side breakdown",
            [
                ("table", _server_table(shown)),
                ("text", f"Mean batch size: {fmt(shown.figures['server']['mean_batch_size'])}"),
                _image("batch_sizes"),
            ],
        ),
    ]
    if shown.comparison is not None:
        blocks = comparison_blocks(shown.comparison)
        if gallery:
            blocks.append(("image", (GALLERY_PNG, "Images where the two models disagree")))
        sections.insert(1, ("Model A against model B, on the same requests", blocks))
    after = 2 if shown.comparison is not None else 1
    sections[after:after] = [section for part in parts for section in part.sections]
    if r.errors:
        sections.append(("Errors", _errors_blocks(shown)))
    if r.missing:
        text = f"{len(r.missing)} request(s) were never answered (first {MAX_MISSING_LISTED} listed):"
        sections.append(("Missing requests", [("text", text), ("list", _missing_list(r))]))
    if r.run.versions:
        versions = Table(["Package", "Version"], [[str(k), str(v)] for k, v in sorted(r.run.versions.items())])
        sections.append(("Environment", [("table", versions)]))
    return sections


def write_report(
    result: RunResult,
    out_dir: str | Path,
    images: np.ndarray | None = None,
    compared: RunResult | None = None,
    shown: Shown | None = None,
    parts: Sequence[ReportPart] = (),
) -> Path:
    """Write report.json, the PNG plots, report.md and report.html into ``out_dir``; returns it as a Path.

    With a second model's result (``compared``, on the same requests) the report puts them side by
    side, and with the run's ``images`` it adds a gallery of the images where they disagree. ``shown``
    (Shown.of the same results) saves computing the figures and their intervals again; without it they
    are computed at configs/stream.py's settings. Each of ``parts`` adds its sections, its PNGs and its
    figures (in report.json under its name).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = shown or Shown.of(result, compared, interval_settings())
    cmp = shown.comparison
    runs, figures = ([cmp.a, cmp.b], [cmp.fa, cmp.fb]) if cmp else ([result], [shown.figures])
    figures = [{**figures[0], **{part.name: part.figures for part in parts}}, *figures[1:]]
    run_json.save(out_dir / REPORT_JSON, runs, figures, cmp.to_json() if cmp else None)
    for part in parts:
        part.write_plots(out_dir)
    gallery = cmp is not None and images is not None
    if gallery:
        save_figure(gallery_figure(cmp, images), out_dir / GALLERY_PNG)
    for plot in PLOTS.values():
        save_figure(plot.build(shown), out_dir / plot.file)
    sections, title = report_sections(shown, gallery, parts), _title(result)
    (out_dir / REPORT_MD).write_text(render_page(title, sections, "markdown"), encoding="utf-8")
    inline = lambda name: "data:image/png;base64," + base64.b64encode((out_dir / name).read_bytes()).decode("ascii")  # noqa: E731
    (out_dir / REPORT_HTML).write_text(render_page(title, sections, "html", inline), encoding="utf-8")
    return out_dir


def render_terminal(
    result: RunResult, out_dir: str | Path | None = None, compared: RunResult | None = None, shown: Shown | None = None
) -> str:
    """A ~20-line console summary of the run, readable at a glance; mentions where the report lives."""
    shown = shown or Shown.of(result, compared, interval_settings())
    r, f = result, shown.figures
    run, counts, throughput, server = r.run, f["counts"], f["throughput"], f["server"]
    reasons = f["error_reasons"]
    lines = [
        "=" * 78,
        _title(r),
        "=" * 78,
        f"  run         {fmt(run.started_at, 'text')} -> {fmt(run.finished_at, 'text')}"
        f"  (wall {fmt(run.wall_s, 'seconds')})",
        f"  setup       {fmt(run.server_mode, 'text')} server, {fmt(run.replicas)} replica(s), "
        f"{fmt(run.streams)} stream(s), broker {fmt(run.broker, 'text')}",
        f"  machine     {describe_machine(run.machine)}",
        f"  warm-up     {_warm_up_text(r)}",
        f"  model       {model_text(r)}",
        f"  images      sent {counts['sent']}   answered {counts['answered']}   missing {counts['missing']}",
        f"              duplicates {counts['duplicates']}   errors {counts['errors']}"
        f"   dead-lettered {counts['dead_lettered']}   stray {counts['stray']}",
        f"  accuracy    {fmt(f['accuracy'], 'percent', interval=interval_at(f, 'accuracy'))}  ({counts['correct']} correct)",
    ]
    if (detectable := detectable_text(f)) is not None:
        lines.append(f"  how sure    {detectable}")
    lines += [
        f"  latency     {latency_text(f)}",
        f"  throughput  {fmt(throughput['img_per_s'], 'rate')}"
        f"   publish rate {fmt(run.rate_achieved)} / target {fmt(run.rate_target)} img/s",
        f"  server      queue p50 {fmt(server['queue_ms']['p50'], 'ms')}   compute p50 "
        f"{fmt(server['compute_ms']['p50'], 'ms')}   mean batch {fmt(server['mean_batch_size'])}",
        f"  ordering    {r.ordering.violations} violation(s)",
        "  errors      " + (", ".join(f"{reason} x{count}" for reason, count in reasons.items()) or "none"),
        f"  calibration {calibration_text(f)}",
    ]
    weakest = [row for row in f["per_class"] if row["accuracy"] is not None]
    if weakest:
        worst = min(weakest, key=lambda row: row["accuracy"])
        c = f["per_class"].index(worst)
        accuracy = fmt(worst["accuracy"], "percent", interval=interval_at(f, "per_class", c, "recall"))
        lines.append(f"  weakest     {worst['class']} ({accuracy} of {worst['support']})")
    if r.offline is not None:
        lines.append(f"  offline     {_offline_text(r)}")
    if shown.comparison is not None:
        lines.append(render(comparison_tables(shown.comparison)["overview"], "terminal"))
        lines += ["  " + text for text in comparison_text(shown.comparison, method=False)]
    if out_dir is not None:
        out_dir = Path(out_dir)
        lines.append(f"  report      {out_dir / REPORT_MD}  |  {out_dir / REPORT_HTML}")
    lines.append("=" * 78)
    return "\n".join(lines)


# --------------------------------------------------------------------------- saved reports
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


def show_report(
    path: str | Path | None = None, reports_dir: str | Path = "reports", uncertainty: Uncertainty | None = None
) -> str:
    """Terminal summary of a saved run: ``path`` (folder or report.json) or else the newest in ``reports_dir``,
    with intervals at ``uncertainty`` (default: configs/stream.py's).

    Raises results.run.ReportError (one line) for a report.json this version cannot read.
    """
    from streamer.robustness_report import robustness_part

    report_json = _resolve_report_json(path, reports_dir)
    runs = run_json.load(report_json)
    b = runs[1] if len(runs) > 1 else None
    text = render_terminal(runs[0], report_json.parent, b, Shown.of(runs[0], b, uncertainty or interval_settings()))
    robust = robustness_part(*runs)  # a robustness run's lines, from its saved predictions
    return text + "\n" + "\n".join(robust.terminal) if robust else text


def diff_reports(
    path_a: str | Path, path_b: str | Path, reports_dir: str | Path = "reports", uncertainty: Uncertainty | None = None
) -> tuple[str, Path]:
    """Compare two saved runs (any days apart): the comparison of two models in one run, applied to
    the first model of each, with every difference's interval (paired by image identity when both
    answered the same images, unpaired otherwise; it says which). Returns the text (printed by
    `python -m streamer report --diff A B`) and the folder where diff.md, diff.html and diff.json were written.
    """
    paths = [_resolve_report_json(p, reports_dir) for p in (path_a, path_b)]
    cmp = compare(
        run_json.load(paths[0])[0], run_json.load(paths[1])[0], uncertainty=uncertainty or interval_settings()
    )
    blocks = comparison_blocks(cmp)
    sections: list[Section] = [("Overview", blocks[:-1]), ("Per class", blocks[-1:])]
    # Beside run A's folder (reports/<run>/ -> reports/diff-<time>/), wherever that folder lives.
    out_dir = paths[0].parent.parent / f"diff-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, form in (("diff.md", "markdown"), ("diff.html", "html")):
        (out_dir / name).write_text(render_page("Run A against run B", sections, form), encoding="utf-8")
    tables = {name: table.records() for name, table in comparison_tables(cmp).items()}
    diff = {"runs": [str(p) for p in paths], **tables, "comparison": cmp.to_json()}
    (out_dir / "diff.json").write_text(json.dumps(diff, indent=1), encoding="utf-8")
    text = render_page("Run A against run B", sections, "terminal")
    return f"{text}\n\n  written to {out_dir / 'diff.md'}, diff.html and diff.json", out_dir

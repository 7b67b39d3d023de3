"""A finished run as a report folder a person can read, and the saved-report commands (show, latest, diff).

``write_report`` writes, from the run's result (results/run.py) and its figures (results/metrics.py):

* ``report.json``: the result and its figures, so the run can be shown or compared later;
* the plots of streamer/figures.py (PNG);
* ``report.md``: tables plus relative image links, so it renders on a code host;
* ``report.html``: one self-contained page (inline CSS, plots as base64 data URIs) to open offline.

Every table goes through results/tables.py; a comparison of two models (or of two saved runs) is
results/compare.py's. Missing values (e.g. latencies of a run where nothing was answered) read "n/a".
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from results import run as run_json
from results.compare import compare, comparison_blocks, comparison_tables, model_text, verdict
from results.machine import describe as describe_machine
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
        ["Accuracy", f"{fmt(f['accuracy'], 'percent')} ({counts['correct']} correct)"],
        ["Publish rate target / achieved", f"{fmt(run.rate_target)} / {fmt(run.rate_achieved)} img/s"],
        [
            "Throughput (results)",
            f"{fmt(throughput['img_per_s'], 'rate')} over {fmt(throughput['first_publish_to_last_result_s'], 'seconds', 2)}",
        ],
    ]
    rows += [[f"Latency {key}", Cell(latency[key], "ms")] for key in PERCENTILE_KEYS]
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
    return Table(["Metric", "Value"], rows)


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


def _per_class_table(shown: Shown) -> Table:
    rows = [
        [
            row["class"],
            Cell(row["support"], "count"),
            *cells("number", *(row[k] for k in ("accuracy", "precision", "recall", "f1")), digits=3),
        ]
        for row in shown.figures["per_class"]
    ]
    return Table(["Class", "Support", "Accuracy", "Precision", "Recall", "F1"], rows)


def _confusion_table(shown: Shown) -> Table:
    names = list(shown.result.class_names)
    rows = [[name, *cells("count", *row)] for name, row in zip(names, shown.figures["confusion"], strict=True)]
    return Table(["True \\ Predicted", *names], rows)


def _calibration_table(shown: Shown) -> Table:
    """Is the confidence true? One column per model."""
    models = shown.models()
    header = [f"Calibration ({len(models[0][2]['calibration']['bins'])} equal-width bins)"]
    header += [
        f"{'model' if name == 'model' else 'model ' + name} {r.model.identity or ''}".strip() for name, r, _ in models
    ]
    cals = [figures["calibration"] for _, _, figures in models]
    return Table(
        header,
        [
            ["Expected calibration error (ECE)", *cells("percent", *(c["ece"] for c in cals))],
            ["Largest bin gap |confidence - accuracy|", *cells("percent", *(c["max_gap"] for c in cals))],
            ["Mean confidence", *cells("percent", *(c["mean_confidence"] for c in cals))],
            ["Accuracy", *cells("percent", *(c["accuracy"] for c in cals))],
            ["Verdict", *(_confidence_verdict(c) for c in cals)],
        ],
    )


def _confidence_verdict(cal: dict) -> str:
    over = cal.get("overconfidence")
    if over is None:
        return "n/a"
    if abs(over) < 0.005:
        return "confidence matches accuracy (within 0.5 points)"
    return f"{'over' if over > 0 else 'under'}-confident by {abs(over) * 100:.2f} points"


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
        ("Per-class metrics", [("table", _per_class_table(shown))]),
        ("Confusion matrix", [_image("confusion"), ("table", _confusion_table(shown))]),
        ("Calibration: is the confidence true?", [("table", _calibration_table(shown)), _image("reliability")]),
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
    parts: Sequence[ReportPart] = (),
) -> Path:
    """Write report.json, the PNG plots, report.md and report.html into ``out_dir``; returns it as a Path.

    With a second model's result (``compared``, on the same requests) the report puts them side by
    side, and with the run's ``images`` it adds a gallery of the images where they disagree. Each of
    ``parts`` adds its sections, its PNGs and its figures (in report.json under its name).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = Shown.of(result, compared)
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


def render_terminal(result: RunResult, out_dir: str | Path | None = None, compared: RunResult | None = None) -> str:
    """A ~20-line console summary of the run, readable at a glance; mentions where the report lives."""
    shown = Shown.of(result, compared)
    r, f = result, shown.figures
    run, counts, latency, throughput, server = r.run, f["counts"], f["latency_ms"], f["throughput"], f["server"]
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
        f"  accuracy    {fmt(f['accuracy'], 'percent')}  ({counts['correct']} correct)",
        f"  latency     p50 {fmt(latency['p50'], 'ms')}   p90 {fmt(latency['p90'], 'ms')}"
        f"   p99 {fmt(latency['p99'], 'ms')}   max {fmt(latency['max'], 'ms')}",
        f"  throughput  {fmt(throughput['img_per_s'], 'rate')}"
        f"   publish rate {fmt(run.rate_achieved)} / target {fmt(run.rate_target)} img/s",
        f"  server      queue p50 {fmt(server['queue_ms']['p50'], 'ms')}   compute p50 "
        f"{fmt(server['compute_ms']['p50'], 'ms')}   mean batch {fmt(server['mean_batch_size'])}",
        f"  ordering    {r.ordering.violations} violation(s)",
        "  errors      " + (", ".join(f"{reason} x{count}" for reason, count in reasons.items()) or "none"),
    ]
    cal = f["calibration"]
    lines.append(
        f"  calibration ECE {fmt(cal['ece'], 'percent')}, mean confidence {fmt(cal['mean_confidence'], 'percent')} "
        f"vs accuracy {fmt(cal['accuracy'], 'percent')}: {_confidence_verdict(cal)}"
    )
    weakest = [row for row in f["per_class"] if row["accuracy"] is not None]
    if weakest:
        worst = min(weakest, key=lambda row: row["accuracy"])
        lines.append(f"  weakest     {worst['class']} ({fmt(worst['accuracy'], 'percent')} of {worst['support']})")
    if r.offline is not None:
        lines.append(f"  offline     {_offline_text(r)}")
    if shown.comparison is not None:
        lines += [render(comparison_tables(shown.comparison)["overview"], "terminal"), "  " + verdict(shown.comparison)]
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


def show_report(path: str | Path | None = None, reports_dir: str | Path = "reports") -> str:
    """Terminal summary of a saved run: ``path`` (folder or report.json) or else the newest in ``reports_dir``.

    Raises results.run.ReportError (one line) for a report.json this version cannot read.
    """
    from streamer.robustness_report import robustness_part

    report_json = _resolve_report_json(path, reports_dir)
    runs = run_json.load(report_json)
    text = render_terminal(runs[0], report_json.parent, runs[1] if len(runs) > 1 else None)
    robust = robustness_part(*runs)  # a robustness run's lines, from its saved predictions
    return text + "\n" + "\n".join(robust.terminal) if robust else text


def diff_reports(path_a: str | Path, path_b: str | Path, reports_dir: str | Path = "reports") -> tuple[str, Path]:
    """Compare two saved runs (any days apart): the comparison of two models in one run, applied to
    the first model of each. Returns the text (printed by `python -m streamer report --diff A B`) and
    the folder where diff.md and diff.json were written.
    """
    paths = [_resolve_report_json(p, reports_dir) for p in (path_a, path_b)]
    cmp = compare(run_json.load(paths[0])[0], run_json.load(paths[1])[0])
    blocks = comparison_blocks(cmp)
    sections: list[Section] = [("Overview", blocks[:-1]), ("Per class", blocks[-1:])]
    # Beside run A's folder (reports/<run>/ -> reports/diff-<time>/), wherever that folder lives.
    out_dir = paths[0].parent.parent / f"diff-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diff.md").write_text(render_page("Run A against run B", sections, "markdown"), encoding="utf-8")
    tables = {name: table.records() for name, table in comparison_tables(cmp).items()}
    diff = {"runs": [str(p) for p in paths], **tables, "comparison": cmp.to_json()}
    (out_dir / "diff.json").write_text(json.dumps(diff, indent=1), encoding="utf-8")
    text = render_page("Run A against run B", sections, "terminal")
    return f"{text}\n\n  written to {out_dir / 'diff.md'} and diff.json", out_dir

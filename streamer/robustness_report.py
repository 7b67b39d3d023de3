"""The report's robustness and slice sections: a robustness run's figures per corruption x severity (and, with a
second model, its Corruption Error against model A), and any run's figures per slice of per-image metadata.

Each section is a ReportPart: its figures (report.json, under its name), its blocks (report.md / report.html,
through results/tables.py), its PNGs and its terminal lines. The figures are results/robustness.py's and
results/slices.py's; the plots are train/robustness_plots.py's (heatmap, gallery) and one of slices here.
Every figure is printed with its 95% interval; a cell or slice whose interval is too wide to judge says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from results import metrics
from results.robustness import (
    CLEAN,
    cell_comparison,
    corruption_errors,
    is_robustness_run,
    outcomes_of,
    parse_cell_id,
    robustness_figures,
)
from results.run import RunResult
from results.slices import JUDGED_HALF_WIDTH, NOT_IN_CSV, compare_slices, slice_figures
from results.tables import Block, Cell, Section, Table
from streamer.figures import plt, save_figure
from train.robustness_plots import plot_gallery, plot_heatmap

HEATMAP_PNG, HEATMAP_B_PNG, GALLERY_PNG, SLICES_PNG = "heatmap.png", "heatmap-b.png", "gallery.png", "slices.png"
TOO_WIDE = f"too few images to judge (interval wider than ±{100 * JUDGED_HALF_WIDTH:.0f} points)"


@dataclasses.dataclass
class ReportPart:
    """One section of the report, ready to write."""

    name: str  # its key in report.json
    figures: dict
    sections: list[Section]
    plots: dict[str, Callable[[Path], object]]  # file name -> writes it
    terminal: list[str]

    def write_plots(self, out_dir: Path) -> list[Path]:
        return [write(out_dir / name) or out_dir / name for name, write in self.plots.items()]


# ------------------------------------------------------------------ formatting
def pct(value: float | None, interval=None, digits: int = 1) -> str:
    """'54.0% [40.4, 67.0]': a proportion and its interval, in percent."""
    if value is None:
        return "n/a"
    text = f"{100 * value:.{digits}f}%"
    if interval is not None:
        text += f" [{100 * interval[0]:.{digits}f}, {100 * interval[1]:.{digits}f}]"
    return text


def pts(value: float | None, interval=None, digits: int = 1) -> str:
    """'+3.2 pts [+1.0, +5.4]': a difference of proportions and its interval, in points."""
    if value is None:
        return "n/a"
    signed = lambda x: f"{round(100 * x, digits) + 0.0:+.{digits}f}"  # noqa: E731  (+ 0.0: no "-0.0")
    text = f"{signed(value)} pts"
    if interval is not None:
        text += f" [{signed(interval[0])}, {signed(interval[1])}]"
    return text


def _judged_note(entry: dict) -> str:
    return "" if entry.get("judged", True) else TOO_WIDE


def _difference_note(row: dict) -> str:
    """A difference shown (Holm-corrected) is a verdict however wide its interval; otherwise a wide interval
    means the images were too few to tell, a narrow one that there is no difference of that size."""
    if row["significant"]:
        return f"model {'B' if row['difference'] > 0 else 'A'} better (Holm p {row['p_holm']:.2g})"
    lo, hi = row["difference_interval"]
    return TOO_WIDE if (hi - lo) / 2 > JUDGED_HALF_WIDTH else f"no difference shown (Holm p {row['p_holm']:.2g})"


# ------------------------------------------------------------------ robustness
def robustness_part(
    a: RunResult,
    b: RunResult | None = None,
    gallery: tuple[np.ndarray, Mapping[tuple[str, int], np.ndarray]] | None = None,
    worst: int = 5,
) -> ReportPart | None:
    """The robustness section of a run whose image ids name cells (None for any other run).

    With `b`, model A is the reference: B's CE per corruption, mCE and relative mCE, and every cell compared.
    `gallery` is the first source image as the server saw it and its image in each cell.
    """
    if not is_robustness_run(a):
        return None
    outs = outcomes_of(a, b) if b is not None else outcomes_of(a)
    if outs is None or outs[0].sources == 0:
        return None
    settings = a.run.robustness or {}
    names = list(dict.fromkeys(str(c) for c in outs[0].outcomes.corruption if c != CLEAN))
    families = {**{n: "?" for n in names}, **settings.get("families", {})}
    fa = robustness_figures(outs[0].outcomes, families, worst=worst)
    figures: dict = {"settings": settings, "sources": outs[0].sources, "incomplete_sources": outs[0].incomplete_sources}
    figures["model"] = fa
    fb = errors = compared = None
    if b is not None:
        fb = robustness_figures(outs[1].outcomes, families, worst=worst)
        errors = corruption_errors(outs[1].outcomes, outs[0].outcomes)
        compared = cell_comparison(outs[0].outcomes, outs[1].outcomes)
        figures |= {"b": fb, "corruption_errors_of_b": errors, "cells_b_against_a": compared}

    intro = _intro(a, settings, outs[0].sources, outs[0].incomplete_sources, b is not None)
    blocks: list[Block] = [("text", intro), ("image", (HEATMAP_PNG, "Accuracy per corruption and severity"))]
    blocks += [("table", _grid_table(fa)), ("text", _grid_note(fa))]
    blocks += [("table", _family_table(fa)), ("table", _worst_table(fa)), ("table", _cells_table(fa))]
    if gallery is not None:
        blocks.append(("image", (GALLERY_PNG, "One source image under every corruption and severity")))
    sections: list[Section] = [("Robustness: where does the model break?", blocks)]
    if b is not None:
        mce = (
            f"Model A ({a.model.identity}) is the reference. mCE of B: {pct(errors['mce'], errors['mce_interval'])}; "
            f"relative mCE {pct(errors['relative_mce'], errors['relative_mce_interval'])} (below 100%: B errs, or "
            "loses of its clean accuracy, less than A under corruption)."
        )
        undefined = (
            [f"CE undefined (A makes no error): {', '.join(errors['undefined'])}"] if errors["undefined"] else []
        )
        if errors["relative_undefined"]:
            undefined.append(f"relative CE undefined (A loses nothing): {', '.join(errors['relative_undefined'])}")
        b_blocks: list[Block] = [("text", mce), *[("text", u) for u in undefined], ("table", _ce_table(errors))]
        b_blocks += [("image", (HEATMAP_B_PNG, "Model B: accuracy per corruption and severity"))]
        b_blocks += [("text", _compared_note(compared)), ("table", _compared_table(compared))]
        sections.append(("Robustness of model B against model A", b_blocks))

    plots: dict[str, Callable[[Path], object]] = {}
    n = fa["per_cell"]
    title = lambda name, r: f"{name} {r.model.identity}: accuracy per corruption and severity ({n} images per cell)"  # noqa: E731
    plots[HEATMAP_PNG] = lambda path: plot_heatmap(path, fa, title("model A" if b is not None else "model", a))
    if fb is not None:
        plots[HEATMAP_B_PNG] = lambda path: plot_heatmap(path, fb, title("model B", b))
    if gallery is not None:
        clean, examples = gallery
        seen = " as the server decoded it" if a.run.content_type == "png" else ""
        plots[GALLERY_PNG] = lambda path: plot_gallery(
            path, clean, examples, families, f"one source image{seen} under every corruption and severity"
        )
    return ReportPart("robustness", figures, sections, plots, _robustness_terminal(fa, errors, compared, settings))


def _intro(a: RunResult, settings: dict, sources: int, incomplete: int, two: bool) -> str:
    gen = settings.get("generation_s")
    made = f" Generated before the timed stream in {gen} s" if gen is not None else ""
    if settings.get("decode_s") is not None:
        made += (
            f"; decoded as the server does (PNG, load_image) in {settings['decode_s']} s, which inverted "
            f"{settings.get('inverted', 0)} of the {settings.get('requests')} images"
        )
    left_out = (
        f" {incomplete} source image(s) were left out: some cell of theirs got no answer{' from both models' if two else ''}."
        if incomplete
        else ""
    )
    return (
        f"{len(settings.get('corruptions', []))} corruptions x {len(settings.get('severities', []))} severities on the "
        f"same {sources} source images (seed {settings.get('seed', 'n/a')}), streamed with the clean images through the "
        f"same path (content type {a.run.content_type or 'raw'}); each request's cell is known from its id only.{made}."
        f"{left_out} Intervals are 95%: Wilson for a cell, Newcombe's paired interval for its drop against clean on "
        "the same images, a bootstrap over source images for ECE and the means."
    )


def _grid_table(f: dict) -> Table:
    severities = sorted({c["severity"] for c in f["cells"]})
    grid = {(c["corruption"], c["severity"]): c for c in f["cells"]}
    header = [
        "Corruption (family)",
        "clean",
        *[f"sev {s}" for s in severities],
        "mean",
        "drop (paired)",
        "ECE (pooled)",
    ]
    clean = f["clean"]
    rows = []
    for name, row in f["corruptions"].items():
        cells = [pct(grid[(name, s)]["accuracy"], grid[(name, s)]["interval"]) for s in severities]
        rows.append(
            [
                f"{name} ({row['family']})",
                pct(clean["accuracy"]),
                *cells,
                pct(row["accuracy"], row["interval"]),
                pts(row["drop"], row["drop_interval"]),
                pct(row["ece"], row["ece_interval"]),
            ]
        )
    return Table(header, rows)


def _grid_note(f: dict) -> str:
    clean = f["clean"]
    widest = max(((c["interval"][1] - c["interval"][0]) / 2 for c in f["cells"]), default=0.0)
    small = [f"{c['corruption']} {c['severity']}" for c in f["cells"] if not c["judged"]]
    note = (
        f"Clean, on the same {f['per_cell']} images: {pct(clean['accuracy'], clean['interval'], 2)}, ECE "
        f"{pct(clean['ece'], clean['ece_interval'], 2)}. The widest cell interval is ±{100 * widest:.1f} points. "
        "The mean weighs every severity alike; the drop is clean minus the mean, paired on the same images; ECE "
        "is pooled over the severities (15 bins; biased upward on few images, so compare it with the clean cell's)."
    )
    if small:
        note += f" {len(small)} cell(s) have {TOO_WIDE}: {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}."
    return note


def _family_table(f: dict) -> Table:
    rows = [
        [
            family,
            Cell(row["cells"], "count"),
            pct(row["accuracy"], row["interval"]),
            pts(row["drop"], row["drop_interval"]),
        ]
        for family, row in [*f["families"].items(), ("all cells", f["mean_corrupted"])]
    ]
    return Table(["Family", "Cells", "Mean corrupted accuracy", "Drop against clean (paired)"], rows)


def _worst_table(f: dict) -> Table:
    rows = [
        [
            f"{k}. {c['corruption']} severity {c['severity']}",
            pct(c["accuracy"], c["interval"]),
            pts(c["drop"], c["drop_interval"]),
            pct(c["ece"], c["ece_interval"]),
            _judged_note(c),
        ]
        for k, c in enumerate(f["worst"], start=1)
    ]
    return Table([f"The {len(rows)} worst cells", "Accuracy", "Drop against clean (paired)", "ECE", ""], rows)


def _cells_table(f: dict) -> Table:
    rows = [
        [
            "clean",
            "0",
            Cell(f["clean"]["n"], "count"),
            pct(f["clean"]["accuracy"], f["clean"]["interval"]),
            "",
            pct(f["clean"]["ece"], f["clean"]["ece_interval"]),
            _judged_note(f["clean"]),
        ]
    ]
    rows += [
        [
            c["corruption"],
            str(c["severity"]),
            Cell(c["n"], "count"),
            pct(c["accuracy"], c["interval"]),
            pts(c["drop"], c["drop_interval"]),
            pct(c["ece"], c["ece_interval"]),
            _judged_note(c),
        ]
        for c in f["cells"]
    ]
    return Table(["Cell", "Severity", "Images", "Accuracy", "Drop against clean (paired)", "ECE", ""], rows)


def _ce_table(errors: dict) -> Table:
    rows = [
        [
            name,
            pct(row["ce"], row["ce_interval"]),
            pct(row["relative_ce"], row["relative_ce_interval"]),
            f"{pct(row['model_error'])} / {pct(row['reference_error'])}",
        ]
        for name, row in errors["corruptions"].items()
    ]
    rows.append(
        [
            "mean (mCE, relative mCE)",
            pct(errors["mce"], errors["mce_interval"]),
            pct(errors["relative_mce"], errors["relative_mce_interval"]),
            f"clean {pct(errors['clean_error']['model'])} / {pct(errors['clean_error']['reference'])}",
        ]
    )
    return Table(["Corruption", "CE of B (A = 100%)", "Relative CE of B", "Mean error B / A"], rows)


def _compared_note(rows: list[dict]) -> str:
    better = {"A": 0, "B": 0}
    for row in rows:
        if row["significant"]:
            better["B" if row["difference"] > 0 else "A"] += 1
    return (
        f"Every cell, B against A on the same images: B - A with Newcombe's paired interval and the exact McNemar "
        f"test, Holm-corrected over the {len(rows)} cells. B is better in {better['B']} cell(s), A in {better['A']}; "
        "in the rest no difference is shown at this sample size."
    )


def _paired_table(first: str, names: list[str], rows: list[dict]) -> Table:
    """B against A, one row per cell or slice value (named by `names`), on the same images."""
    return Table(
        [first, "Images", "Accuracy A", "Accuracy B", "B - A (paired)", "McNemar p", "Verdict"],
        [
            [
                name,
                Cell(row["n"], "count"),
                pct(row["accuracy_a"]),
                pct(row["accuracy_b"]),
                pts(row["difference"], row["difference_interval"]),
                Cell(row["p_value"], "p_value"),
                _difference_note(row),
            ]
            for name, row in zip(names, rows)
        ],
    )


def _compared_table(rows: list[dict]) -> Table:
    names = [f"{row['corruption']} {row['severity']}" if row["corruption"] != CLEAN else "clean" for row in rows]
    return _paired_table("Cell", names, rows)


def _robustness_terminal(f: dict, errors: dict | None, compared: list[dict] | None, settings: dict) -> list[str]:
    clean, mean = f["clean"], f["mean_corrupted"]
    lines = [
        f"  robustness  {len(f['corruptions'])} corruptions x {len(settings.get('severities', [])) or '?'} severities x "
        f"{f['per_cell']} images; generated in {settings.get('generation_s', 'n/a')} s before the stream",
        f"              clean {pct(clean['accuracy'], clean['interval'], 2)}   mean corrupted "
        f"{pct(mean['accuracy'], mean['interval'], 2)}   drop {pts(mean['drop'], mean['drop_interval'], 2)} (paired)",
    ]
    families = "   ".join(f"{name} {pct(row['accuracy'], row['interval'])}" for name, row in f["families"].items())
    lines.append(f"  families    {families}")
    for k, c in enumerate(f["worst"], start=1):
        lines.append(
            f"  worst {k}     {c['corruption']} {c['severity']}: {pct(c['accuracy'], c['interval'])}, "
            f"ECE {pct(c['ece'], c['ece_interval'])}{'  ' + TOO_WIDE if not c['judged'] else ''}"
        )
    if errors is not None:
        lines.append(
            f"  B vs A      mCE {pct(errors['mce'], errors['mce_interval'])}, relative mCE "
            f"{pct(errors['relative_mce'], errors['relative_mce_interval'])} (A = 100%); "
            f"B better in {sum(r['significant'] and r['difference'] > 0 for r in compared)}, A in "
            f"{sum(r['significant'] and r['difference'] < 0 for r in compared)} of {len(compared)} cells (Holm)"
        )
    return lines


# ------------------------------------------------------------------ slices
def slice_columns(r: RunResult, csv_values: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, list[str]]:
    """Per answered request, its value in each slice column: a robustness run's severity (from its ids),
    then the CSV's columns, joined by the (source) image's id.

    A robustness run is sliced by corruption and severity: its cells, and their means per corruption and per
    family, are the robustness section's (with intervals that use the pairing of the cells). What is left for
    this section is the severity pooled over the corruptions, and the CSV's columns.
    """
    ids = r.answers.image
    cells = [parse_cell_id(i) for i in ids] if is_robustness_run(r) else None
    columns: dict[str, list[str]] = {}
    if cells is not None:
        columns["severity"] = [str(s) for _, _, s in cells]
    sources = [c[0] for c in cells] if cells is not None else list(ids)
    for column, values in (csv_values or {}).items():
        columns[column] = [values.get(s, NOT_IN_CSV) for s in sources]
    return columns


def slices_part(
    a: RunResult, b: RunResult | None = None, csv_values: Mapping[str, Mapping[str, str]] | None = None
) -> ReportPart | None:
    """Per-slice figures of model A (and B against A on the same requests); None when the run has no slices."""
    columns = slice_columns(a, csv_values)
    if not columns or not len(a.answers):
        return None
    figures = {"columns": slice_figures(metrics.correct(a), a.answers.confidence, columns)}
    blocks: list[Block] = [
        (
            "text",
            "Figures per slice of per-image metadata"
            + (f" ({a.run.slices['file']})" if a.run.slices else "")
            + ": each column's slices partition the answered requests, so their images add up to the run's "
            f"{len(a.answers)}. Accuracy with its 95% Wilson interval, ECE with a bootstrap interval.",
        ),
        ("image", (SLICES_PNG, "Accuracy per slice")),
    ]
    for column, rows in figures["columns"].items():
        blocks.append(("table", _slice_table(column, rows)))
    if b is not None:
        _, ka, kb = np.intersect1d(a.answers.index, b.answers.index, return_indices=True)  # the same requests
        paired = {column: [values[k] for k in ka] for column, values in columns.items()}
        figures["b_against_a"] = compare_slices(metrics.correct(a)[ka], metrics.correct(b)[kb], paired)
        for column, rows in figures["b_against_a"].items():
            blocks.append(("table", _slice_compared_table(column, rows)))
    terminal = [
        f"  slices      {column}: "
        + ", ".join(f"{row['value']} {pct(row['accuracy'], row['interval'])} (n {row['n']})" for row in rows[:6])
        + (" ..." if len(rows) > 6 else "")
        for column, rows in figures["columns"].items()
    ]
    plots = {SLICES_PNG: lambda path: plot_slices(path, figures["columns"])}
    return ReportPart("slices", figures, [("Slices", blocks)], plots, terminal)


def _slice_table(column: str, rows: list[dict]) -> Table:
    body = [
        [
            row["value"],
            Cell(row["n"], "count"),
            pct(row["accuracy"], row["interval"]),
            pct(row["ece"], row["ece_interval"]),
            _judged_note(row),
        ]
        for row in rows
    ]
    body.append(["all", Cell(sum(row["n"] for row in rows), "count"), "", "", ""])
    return Table([f"Slice: {column}", "Images", "Accuracy", "ECE", ""], body)


def _slice_compared_table(column: str, rows: list[dict]) -> Table:
    return _paired_table(f"B against A by {column}", [row["value"] for row in rows], rows)


def plot_slices(path: Path, columns: dict[str, list[dict]]) -> Path:
    """One panel per slice column: each slice's accuracy with its 95% interval, and its image count."""
    panels = list(columns.items())
    heights = [max(len(rows), 1) for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 0.32 * sum(heights) + 1.1 * len(panels)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for ax, (column, rows) in zip(axes[:, 0], panels):
        y = np.arange(len(rows))[::-1]
        acc = np.array([100 * (row["accuracy"] or 0) for row in rows])
        lo = np.array([100 * row["interval"][0] for row in rows])
        hi = np.array([100 * row["interval"][1] for row in rows])
        colors = ["tab:blue" if row["judged"] else "lightgray" for row in rows]
        ax.barh(y, acc, color=colors, height=0.6)
        ax.errorbar(acc, y, xerr=[acc - lo, hi - acc], fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_yticks(y, [f"{row['value']} (n {row['n']})" for row in rows], fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_title(f"accuracy by {column} (95% Wilson intervals; gray: too few images to judge)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("accuracy (%)")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)

"""The one table model, and the one renderer of it: terminal text, Markdown and HTML (by tabulate).

A table is a header and rows of cells; a cell is a value and its kind (count, percent, ms,
p-value, ...), and its kind alone says how it is written. Columns of numbers are right-aligned.
A page is a title and sections of blocks (tables, text, lists, images), rendered the same way.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from tabulate import tabulate

NA = "n/a"

# kind -> how a (not missing) value is written
FORMATS: dict[str, Callable[[Any, int], str]] = {
    "text": lambda v, d: str(v),
    "count": lambda v, d: f"{v}",
    "number": lambda v, d: f"{v:.{d}f}" if isinstance(v, float) else f"{v}",
    "signed": lambda v, d: f"{v:+.{d}f}",  # a difference of two numbers
    "percent": lambda v, d: f"{100.0 * v:.{d}f}%",
    "pts": lambda v, d: f"{100 * v:+.{d}f} pts",  # a difference of two percentages
    "ms": lambda v, d: f"{v:.{d}f} ms",
    "signed_ms": lambda v, d: f"{v:+.{d}f} ms",
    "seconds": lambda v, d: f"{v:.{d}f} s",
    "rate": lambda v, d: f"{v:.{d}f} img/s",
    "signed_rate": lambda v, d: f"{v:+.{d}f} img/s",
    "p_value": lambda v, d: f"{v:.{d}g}",
}
DIGITS = {"number": 1, "percent": 2, "pts": 2, "ms": 1, "signed_ms": 1, "seconds": 1, "rate": 1, "signed_rate": 1}
DIGITS["p_value"] = 3
# kind -> how an interval's bounds are written after the value, in its unit: 94.51% [94.05, 94.94]
BOUNDS: dict[str, Callable[[Any, int], str]] = {
    "number": lambda v, d: f"{v:.{d}f}",
    "signed": lambda v, d: f"{v:+.{d}f}",
    "percent": lambda v, d: f"{100.0 * v:.{d}f}",
    "pts": lambda v, d: f"{100 * v:+.{d}f}",
    "ms": lambda v, d: f"{v:.{d}f}",
    "signed_ms": lambda v, d: f"{v:+.{d}f}",
}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, kind: str = "number", digits: int | None = None, interval: Any = None) -> str:
    """A value as its kind is written; None and NaN are "n/a". ``interval`` (lo, hi), or a dict with
    "lo" and "hi" as report.json holds one, is written after it in brackets when both bounds are known."""
    if _missing(value):
        return NA
    d = DIGITS.get(kind, 0) if digits is None else digits
    text = FORMATS[kind](value, d)
    if isinstance(interval, dict):
        interval = (interval.get("lo"), interval.get("hi"))
    if interval is None or any(_missing(bound) for bound in interval):
        return text
    lo, hi = (BOUNDS[kind](bound, d) for bound in interval)
    return f"{text} [{lo}, {hi}]"


@dataclasses.dataclass(frozen=True)
class Cell:
    value: Any
    kind: str = "text"
    digits: int | None = None
    interval: Any = None  # (lo, hi) or a report.json interval dict: written as "value [lo, hi]"

    def __str__(self) -> str:
        return fmt(self.value, self.kind, self.digits, self.interval)


def cells(kind: str, *values: Any, digits: int | None = None) -> list[Cell]:
    return [Cell(v, kind, digits) for v in values]


def estimate(interval: dict | None, kind: str, digits: int | None = None) -> Cell:
    """A cell of an interval as report.json holds it ({"estimate", "lo", "hi", ...}; None: n/a)."""
    if interval is None:
        return Cell(None, kind, digits)
    return Cell(interval["estimate"], kind, digits, interval)


@dataclasses.dataclass
class Table:
    """A header and rows; a row's first cell names it. Plain strings in a row are text cells."""

    header: list[str]
    rows: list[list[Cell | str]]

    def texts(self) -> list[list[str]]:
        return [[str(cell) for cell in row] for row in self.rows]

    def numeric(self) -> list[bool]:
        """Which columns hold only numbers (the first names the row)."""
        kinds = [[cell.kind if isinstance(cell, Cell) else "text" for cell in row] for row in self.rows]
        return [i > 0 and all(row[i] != "text" for row in kinds) for i in range(len(self.header))]

    def records(self) -> list[dict]:
        """The rows as {column: text} (for JSON)."""
        return [dict(zip(self.header, row)) for row in self.texts()]


def render(table: Table, form: str) -> str:
    """``form`` is "terminal", "markdown" or "html"."""
    if not table.rows:
        return {"terminal": "  none", "markdown": "_none_", "html": "<p><em>none</em></p>"}[form]
    header, rows = table.header, table.texts()
    if form == "markdown":
        escape = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        header, rows = [escape(h) for h in header], [[escape(c) for c in row] for row in rows]
    align = ["right" if numeric else "left" for numeric in table.numeric()]
    style = {"terminal": "simple", "markdown": "pipe", "html": "html"}[form]
    text = tabulate(rows, header, tablefmt=style, colalign=align, disable_numparse=True)
    return "\n".join("  " + line for line in text.splitlines()) if form == "terminal" else str(text)


# ------------------------------------------------------------------ pages
# A block is (kind, payload): ("table", Table), ("text", str), ("list", [str]), ("image", (file, alt)).
Block = tuple[str, Any]
Section = tuple[str, list[Block]]


def render_block(block: Block, form: str, image_src: Callable[[str], str] = str) -> str:
    kind, payload = block
    if kind == "table":
        return render(payload, form)
    if kind == "image":
        file_name, alt = payload
        if form == "html":
            return f'<img src="{image_src(file_name)}" alt="{html.escape(alt)}">'
        return f"![{alt}]({file_name})" if form == "markdown" else f"  {alt}: {file_name}"
    if kind == "list":
        if form == "html":
            return "<ul>" + "".join(f"<li><code>{html.escape(item)}</code></li>" for item in payload) + "</ul>"
        return "\n".join(f"- `{item}`" if form == "markdown" else f"  - {item}" for item in payload)
    return (
        f"<p>{html.escape(str(payload))}</p>"
        if form == "html"
        else str(payload)
        if form == "markdown"
        else f"  {payload}"
    )


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .7em; font-variant-numeric: tabular-nums; }
th { background: #f4f6f8; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
code { background: #f4f4f4; padding: 0 .3em; }
"""


def render_page(title: str, sections: Sequence[Section], form: str, image_src: Callable[[str], str] = str) -> str:
    """A whole page: Markdown (relative image links), one self-contained HTML file, or terminal text."""
    if form == "html":
        parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>']
        parts.append(f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
        for heading, blocks in sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts += [render_block(block, form, image_src) for block in blocks]
        parts.append("</body></html>\n")
        return "\n".join(parts)
    if form == "markdown":
        parts = [f"# {title}"]
        for heading, blocks in sections:
            parts += [f"## {heading}"] + [render_block(block, form) for block in blocks]
        return "\n\n".join(parts) + "\n"
    parts = [title]
    for heading, blocks in sections:
        parts += [heading] + [render_block(block, form) for block in blocks]
    return "\n\n".join(parts)

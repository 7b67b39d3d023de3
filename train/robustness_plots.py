"""Robustness PNGs: the accuracy heatmap (corruption x severity) and the gallery (one example per cell)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(path: str | Path, figures: dict, title: str = "") -> Path:
    """Accuracy per corruption (rows) x severity (columns), with the clean accuracy (on the same images) and
    each row's mean beside it; each cell is annotated with its accuracy in percent and, below it, its 95%
    interval. A cell whose interval is too wide to judge (figures' "judged") is written in italics."""
    plt = _pyplot()
    names = list(figures["corruptions"])
    severities = sorted({c["severity"] for c in figures["cells"]})
    cols = len(severities) + 2
    grid = np.full((len(names), cols), np.nan)
    intervals: dict[tuple[int, int], list] = {}
    unjudged: set[tuple[int, int]] = set()
    for i, name in enumerate(names):
        row = figures["corruptions"][name]
        grid[i, 0], grid[i, -1] = figures["clean"]["accuracy"], row["accuracy"]
        intervals[(i, 0)], intervals[(i, cols - 1)] = figures["clean"].get("interval"), row.get("interval")
    for cell in figures["cells"]:
        i, j = names.index(cell["corruption"]), 1 + severities.index(cell["severity"])
        grid[i, j], intervals[(i, j)] = cell["accuracy"], cell.get("interval")
        if not cell.get("judged", True):
            unjudged.add((i, j))
    fig, ax = plt.subplots(figsize=(1.0 * cols + 3.2, 0.5 * len(names) + 1.7))
    image = ax.imshow(100 * grid, cmap="RdYlGn", vmin=0.0, vmax=100.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isnan(value):
            continue
        style = {"style": "italic"} if (i, j) in unjudged else {}
        ax.text(j, i - 0.12, f"{100 * value:.1f}", ha="center", va="center", fontsize=8, **style)
        if intervals.get((i, j)):
            lo, hi = intervals[(i, j)]
            ax.text(j, i + 0.22, f"{100 * lo:.0f}-{100 * hi:.0f}", ha="center", va="center", fontsize=5.5, **style)
    ax.axvline(0.5, color="black", lw=1.5)
    ax.axvline(len(severities) + 0.5, color="black", lw=1.5)
    ax.set_xticks(range(cols), ["clean", *[f"sev {s}" for s in severities], "mean"])
    ax.set_yticks(range(len(names)), [f"{n} ({figures['corruptions'][n]['family']})" for n in names])
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy (%)")
    n = figures["per_cell"]
    title = title or f"accuracy per corruption and severity ({n} images per cell, same images in each)"
    note = "small numbers: 95% interval" + ("; italics: too few images to judge" if unjudged else "")
    ax.set_title("\n".join(textwrap.wrap(title, 70) + [note]), pad=24, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gallery(
    path: str | Path,
    clean: np.ndarray,
    examples: Mapping[tuple[str, int], np.ndarray],
    families: Mapping[str, str],
    title: str = "",
) -> Path:
    """One source image (left column) and what each corruption (rows) does to it at each severity (columns)."""
    plt = _pyplot()
    names = list(dict.fromkeys(c for c, _ in examples))
    severities: Sequence[int] = sorted({s for _, s in examples})
    cols = 1 + len(severities)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.05 * cols + 1.6, 1.05 * len(names) + 0.6), squeeze=False)

    def show(ax, img: np.ndarray) -> None:
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for i, name in enumerate(names):
        show(axes[i, 0], clean)
        axes[i, 0].set_ylabel(f"{name}\n({families[name]})", rotation=0, ha="right", va="center", fontsize=8)
        for j, s in enumerate(severities, start=1):
            show(axes[i, j], examples[(name, s)])
    for j, label in enumerate(["clean", *[f"sev {s}" for s in severities]]):
        axes[0, j].set_title(label, fontsize=9)
    fig.suptitle(title or "one source image under every corruption and severity", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # 0.3 inch for the title above the columns
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Robustness PNGs: the accuracy heatmap (corruption x severity) and the gallery (one example per cell)."""

from __future__ import annotations

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
    each row's mean beside it; each cell is annotated with its accuracy in percent."""
    plt = _pyplot()
    names = list(figures["corruptions"])
    severities = sorted({c["severity"] for c in figures["cells"]})
    grid = np.full((len(names), len(severities)), np.nan)
    for cell in figures["cells"]:
        grid[names.index(cell["corruption"]), severities.index(cell["severity"])] = cell["accuracy"]
    clean = figures["clean"]["accuracy"]
    means = np.array([figures["corruptions"][n]["accuracy"] for n in names])
    full = np.column_stack([np.full(len(names), clean), grid, means])
    fig, ax = plt.subplots(figsize=(1.0 * full.shape[1] + 3.2, 0.42 * len(names) + 1.6))
    image = ax.imshow(100 * full, cmap="RdYlGn", vmin=0.0, vmax=100.0, aspect="auto")
    for (i, j), value in np.ndenumerate(full):
        if not np.isnan(value):
            ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=8)
    ax.axvline(0.5, color="black", lw=1.5)
    ax.axvline(len(severities) + 0.5, color="black", lw=1.5)
    ax.set_xticks(range(full.shape[1]), ["clean", *[f"sev {s}" for s in severities], "mean"])
    ax.set_yticks(range(len(names)), [f"{n} ({figures['corruptions'][n]['family']})" for n in names])
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy (%)")
    n = figures["per_cell"]
    ax.set_title(title or f"accuracy per corruption and severity ({n} images per cell, same images in each)", pad=28)
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

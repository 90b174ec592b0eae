"""Figures of attention patterns: class shares of kept and pruned heads (stacked bars), example
maps per class, and a labelling sheet of numbered thumbnails."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ticketlab.analysis.attention_patterns import ShareRow
from ticketlab.data.attention_maps import PATTERN_CLASSES
from ticketlab.io import atomic_write

CLASS_COLOURS = {
    "vertical": "tab:blue",
    "diagonal": "tab:orange",
    "vertical+diagonal": "tab:green",
    "block": "tab:purple",
    "heterogeneous": "tab:gray",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(figure)
    return Path(path)


def plot_pattern_shares(
    rows: Sequence[ShareRow],
    path: str | os.PathLike,
    *,
    title: str = "attention patterns of kept and pruned heads",
) -> Path:
    """One stacked bar per ticket and group (kept / pruned), segments the mean class shares."""
    plt = _pyplot()
    classes = [c for c in PATTERN_CLASSES if any(not math.isnan(r.mean.get(c, math.nan)) for r in rows)]
    figure, axis = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2.5), 4.4))
    labels = [r.ticket if r.group == "all" else f"{r.ticket}\n{r.group}" for r in rows]
    bottom = np.zeros(len(rows))
    for pattern in classes:
        values = np.array(
            [0.0 if math.isnan(r.mean.get(pattern, 0.0)) else r.mean.get(pattern, 0.0) for r in rows]
        )
        axis.bar(labels, 100 * values, bottom=100 * bottom, label=pattern, color=CLASS_COLOURS.get(pattern))
        bottom += values
    axis.set_ylabel("share of heads (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.tick_params(axis="x", labelsize=8)
    plt.setp(axis.get_xticklabels(), rotation=30, ha="right")  # ticket names are long
    axis.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(figure, path)


def plot_example_maps(
    examples: Mapping[str, Sequence[tuple[str, np.ndarray]]], path: str | os.PathLike, *, columns: int = 4
) -> Path:
    """A grid: one row per class, up to ``columns`` maps (title, array) in each."""
    plt = _pyplot()
    classes = [c for c in examples if examples[c]]
    rows = max(1, len(classes))
    figure, axes = plt.subplots(rows, columns, figsize=(1.7 * columns + 1.0, 1.8 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for r, pattern in enumerate(classes):
        for c, (title, array) in enumerate(list(examples[pattern])[:columns]):
            axis = axes[r, c]
            axis.imshow(array, cmap="viridis", interpolation="nearest")
            axis.set_title(title, fontsize=7)
            if c == 0:
                axis.text(
                    -0.15,
                    0.5,
                    pattern,
                    transform=axis.transAxes,
                    rotation=90,
                    va="center",
                    ha="right",
                    fontsize=9,
                )
    return _save(figure, path)


def plot_label_sheet(
    names: Sequence[str], maps: Sequence[np.ndarray], path: str | os.PathLike, *, columns: int = 8
) -> Path:
    """Thumbnails of ``maps``, each titled with its name, for labelling by eye."""
    plt = _pyplot()
    rows = max(1, math.ceil(len(maps) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.6 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for i, (name, array) in enumerate(zip(names, maps)):
        axis = axes[i // columns, i % columns]
        axis.imshow(array, cmap="viridis", interpolation="nearest")
        axis.set_title(name, fontsize=7)
    return _save(figure, path, dpi=80)

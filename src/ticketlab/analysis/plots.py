"""Plots as PNG files: score against sparsity, mask overlap heat-maps, per-layer sparsity profiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ticketlab.analysis.aggregate import FULL_MODEL, Cell  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_score_vs_sparsity(cells: Sequence[Cell], task: str, path: str | Path, scale: float = 100.0) -> Path:
    """One line per method with error bars (std over seeds) and the full model's mean ± std as a band,
    against the weights each ticket pruned: a structured ticket's level is a fraction of heads, so it
    is placed at the fraction of weights its runs recorded (unstructured ones sit at their sparsity)."""
    task_cells = [c for c in cells if c.task == task]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    full = next((c for c in task_cells if c.method == FULL_MODEL), None)
    if full is not None:
        ax.axhspan(
            (full.mean - full.std) * scale,
            (full.mean + full.std) * scale,
            color="0.85",
            label="full model ± std",
        )
        ax.axhline(full.mean * scale, color="0.4", lw=1)
    for method in sorted({c.method for c in task_cells if c.method != FULL_MODEL}):
        row = sorted((c for c in task_cells if c.method == method), key=lambda c: c.sparsity)
        ax.errorbar(
            [100 * (c.weight_sparsity if c.weight_sparsity is not None else c.sparsity) for c in row],
            [c.mean * scale for c in row],
            yerr=[c.std * scale for c in row],
            marker="o",
            capsize=3,
            label=method,
        )
    metric = task_cells[0].metric if task_cells else ""
    ax.set_xlabel("weights pruned (% of the ticket's scope, as its runs recorded)")
    ax.set_ylabel(f"dev {metric} (x{scale:g})")
    ax.set_title(f"{task}: tickets by method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_overlap_heatmap(names: Sequence[str], matrix: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Pairwise Jaccard (or any symmetric score) between masks."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 1.0 + 0.6 * len(names)), dpi=120)
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] < 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title or "overlap of kept weights (Jaccard)")
    return _save(fig, path)


def plot_layer_profile(profiles: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Sparsity per encoder layer, one line per mask."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^DvPX*"
    for i, (name, per_layer) in enumerate(profiles.items()):
        layers = sorted(int(k) for k in per_layer if k.isdigit())
        # Colour and marker both cycle (10 x 8 distinct pairs): no two lines look alike, and a line
        # hidden under another of the same profile (matched random under OMP) still shows its marker.
        style = {
            "color": colours[i % len(colours)],
            "marker": markers[(i // len(colours) + i) % len(markers)],
        }
        ax.plot(layers, [100 * per_layer[str(k)] for k in layers], label=name, alpha=0.85, **style)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("sparsity (%)")
    ax.set_title("per-layer sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_vs_score(
    points: Sequence,
    task: str,
    loss: str,
    path: str | Path,
    subtitle: str = "",
    full: Cell | None = None,
    scale: float = 100.0,
) -> Path:
    """TAMT's figure: downstream score (mean over seeds, bars: std) against a pre-training loss
    (``loss`` = ``kd_loss`` or ``mlm_loss``), one colour per method, each point labelled with its
    sparsity; the full model's score as a line."""
    mine = [p for p in points if p.task == task and getattr(p, loss) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if full is not None:
        ax.axhline(full.mean * scale, color="0.4", lw=1, ls="--", label="full model")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(sorted({p.method for p in mine})):
        row = [p for p in mine if p.method == method]
        ax.errorbar(
            [getattr(p, loss) for p in row],
            [p.score * scale for p in row],
            yerr=[p.score_std * scale for p in row],
            fmt="o",
            capsize=3,
            color=colours[i % len(colours)],
            label=method,
        )
        for p in row:
            ax.annotate(
                f"{p.sparsity:.0%}",
                (getattr(p, loss), p.score * scale),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    kind = f" ({mine[0].kd_kind})" if mine and loss == "kd_loss" else ""
    name = "distillation loss" if loss == "kd_loss" else "MLM loss"
    metric = mine[0].metric if mine else ""
    ax.set_xlabel(f"{name}{kind} on held-out text")
    ax.set_ylabel(f"dev {metric} (x{scale:g}, mean over seeds)")
    ax.set_title(f"{task}: downstream score vs {name}\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

"""The super-ticket phase transition: dev score against weights remaining for winning, random and
losing structured tickets, and which winning level is the super ticket.

Input records are plain mappings (one per fine-tuned ticket), as a results store would hold them:
``{"kind": "winning"|"random"|"losing", "level": 0.3, "weights_remaining": 0.82, "metric": 0.86,
"seed": 0}``. Levels are aggregated over seeds (mean and sample standard deviation).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write

KIND_STYLES = {"winning": ("tab:green", "o"), "random": ("tab:blue", "s"), "losing": ("tab:red", "v")}


@dataclass(frozen=True)
class PhasePoint:
    """One (kind, level) over its seeds."""

    kind: str
    level: float
    weights_remaining: float
    mean: float
    std: float  # sample standard deviation over seeds (0 with one seed)
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_phase_transition(records: Iterable[Mapping[str, Any]]) -> list[PhasePoint]:
    """Mean and standard deviation of the metric per kind and level, sorted by kind then level."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        missing = {"kind", "level", "weights_remaining", "metric"} - set(record)
        if missing:
            raise TicketlabError(
                f"a phase-transition record lacks {', '.join(sorted(missing))}: {dict(record)}"
            )
        groups[str(record["kind"]), float(record["level"])].append(record)
    if not groups:
        raise TicketlabError("no results to summarise")
    points = []
    for (kind, level), group in sorted(groups.items()):
        metrics = np.array([float(r["metric"]) for r in group])
        remaining = {round(float(r["weights_remaining"]), 9) for r in group}
        if len(remaining) > 1:
            raise TicketlabError(
                f"{kind} level {level}: seeds disagree on the weights remaining ({sorted(remaining)})"
            )
        std = float(metrics.std(ddof=1)) if metrics.size > 1 else 0.0
        points.append(PhasePoint(kind, level, remaining.pop(), float(metrics.mean()), std, int(metrics.size)))
    return points


def super_ticket(points: Sequence[PhasePoint]) -> PhasePoint:
    """The winning level with the best mean score (ties: the one with fewer weights)."""
    winning = [p for p in points if p.kind == "winning"]
    if not winning:
        raise TicketlabError("no winning tickets among the results")
    return max(winning, key=lambda p: (p.mean, -p.weights_remaining))


def plot_phase_transition(
    points: Sequence[PhasePoint],
    path: str | os.PathLike,
    *,
    metric_name: str = "dev score",
    full_score: tuple[float, float] | None = None,
    title: str = "structured tickets: phase transition",
) -> Path:
    """A PNG of score against weights remaining, one line per kind (error bars: std over seeds);
    ``full_score`` = (mean, std) of the full model draws a band; the super ticket is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    kinds = sorted(
        {p.kind for p in points}, key=lambda k: list(KIND_STYLES).index(k) if k in KIND_STYLES else 99
    )
    for kind in kinds:
        series = sorted((p for p in points if p.kind == kind), key=lambda p: -p.weights_remaining)
        color, marker = KIND_STYLES.get(kind, ("tab:gray", "x"))
        axis.errorbar(
            [100 * p.weights_remaining for p in series],
            [p.mean for p in series],
            yerr=[p.std for p in series],
            label=kind,
            color=color,
            marker=marker,
            capsize=3,
        )
    if full_score is not None:
        mean, std = full_score
        axis.axhline(mean, color="black", linestyle="--", linewidth=1, label="full model")
        axis.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    if any(p.kind == "winning" for p in points):
        best = super_ticket(points)
        axis.scatter(
            [100 * best.weights_remaining],
            [best.mean],
            s=220,
            marker="*",
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"super ticket (p={best.level:g})",
        )
    axis.invert_xaxis()  # more pruning to the right
    axis.set_xlabel("weights remaining in the encoder (%)")
    axis.set_ylabel(metric_name)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(figure)
    return Path(path)

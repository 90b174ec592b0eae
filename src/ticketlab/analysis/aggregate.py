"""From many fine-tuning results to the papers' tables: mean +- std per cell, and which tickets match.

A **matching** ticket (BERT-Tickets) has a mean dev score within one standard deviation of the full
model's mean over the same seeds: ``mean_ticket >= mean_full - std_full``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

FULL_MODEL = "full"
# Metrics where lower is better (a held-out loss): a ticket matches when its mean is at most the
# full model's mean plus one standard deviation.
LOWER_IS_BETTER = frozenset({"mlm_loss"})
# Correlation metrics score 0 for a model that predicts a constant (or at random): a full model whose
# score is within one std of 0 has not learned the task, and "matching" it says nothing.
CHANCE_LEVEL = {"matthews": 0.0, "pearson": 0.0, "spearman": 0.0}


def display_scale(metric: str) -> float:
    """Scores in [0, 1] are shown x100, as the papers do; losses as they are."""
    return 1.0 if metric in LOWER_IS_BETTER else 100.0


def full_model_at_chance(full: Cell) -> bool:
    """Whether the full model's score is within one std (or 0.05) of its metric's chance level."""
    chance = CHANCE_LEVEL.get(full.metric)
    return chance is not None and full.mean - max(full.std, 0.05) <= chance


@dataclass(frozen=True)
class ResultRecord:
    """One fine-tuning result: a ticket (method at a sparsity) on a task with one seed."""

    task: str
    method: str  # "full" for the dense reference
    sparsity: float
    seed: int
    metric: str
    value: float
    source: str = ""


@dataclass
class Cell:
    """The seeds of one (task, method, sparsity) cell."""

    task: str
    method: str
    sparsity: float
    metric: str
    values: list[float] = field(default_factory=list)
    matching: bool | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    def to_dict(self) -> dict:
        """The cell as JSON-able data (the grid's and the report's ``cells`` entries)."""
        return {
            "task": self.task,
            "method": self.method,
            "sparsity": self.sparsity,
            "metric": self.metric,
            "mean": self.mean,
            "std": self.std,
            "n": len(self.values),
            "values": list(self.values),
            "matching": self.matching,
        }

    @property
    def std(self) -> float:
        # Sample standard deviation (ddof=1), as over seeds; 0 for a single seed.
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


def aggregate(records: Iterable[ResultRecord]) -> list[Cell]:
    """Group records into cells and mark each ticket's cell as matching its task's full model or not."""
    cells: dict[tuple, Cell] = {}
    for record in records:
        key = (record.task, record.method, round(record.sparsity, 6), record.metric)
        cell = cells.setdefault(
            key, Cell(record.task, record.method, round(record.sparsity, 6), record.metric)
        )
        cell.values.append(record.value)
    full = {(c.task, c.metric): c for c in cells.values() if c.method == FULL_MODEL}
    for cell in cells.values():
        reference = full.get((cell.task, cell.metric))
        if cell.method != FULL_MODEL and reference is not None:
            if cell.metric in LOWER_IS_BETTER:
                cell.matching = cell.mean <= reference.mean + reference.std
            else:
                cell.matching = cell.mean >= reference.mean - reference.std
    return sorted(cells.values(), key=lambda c: (c.task, c.method != FULL_MODEL, c.method, c.sparsity))


def highest_matching_sparsity(cells: Iterable[Cell]) -> dict[tuple[str, str], float | None]:
    """Per (task, method): the highest sparsity whose ticket matches (BERT-Tickets' headline number)."""
    best: dict[tuple[str, str], float | None] = defaultdict(lambda: None)
    for cell in cells:
        if cell.method == FULL_MODEL:
            continue
        key = (cell.task, cell.method)
        best.setdefault(key, None)
        if cell.matching and (best[key] is None or cell.sparsity > best[key]):
            best[key] = cell.sparsity
    return dict(best)


def _fmt(cell: Cell, scale: float) -> str:
    text = f"{cell.mean * scale:.2f} ± {cell.std * scale:.2f}"
    if cell.matching:
        text += " ✓"
    return text


def markdown_table(cells: list[Cell], scale: float | None = None) -> str:
    """Method x sparsity per task (mean ± std over seeds, ✓ = matching).

    ``scale`` multiplies every value; by default scores are shown x100 and losses as they are.
    """
    out = []
    for task in sorted({c.task for c in cells}):
        task_cells = [c for c in cells if c.task == task]
        sparsities = sorted({c.sparsity for c in task_cells if c.method != FULL_MODEL})
        methods = sorted({c.method for c in task_cells if c.method != FULL_MODEL})
        metric = task_cells[0].metric
        task_scale = display_scale(metric) if scale is None else scale
        full = next((c for c in task_cells if c.method == FULL_MODEL), None)
        shown = f", x{task_scale:g}" if task_scale != 1 else ""
        out.append(f"### {task} ({metric}{shown}, mean ± std over seeds, ✓ = matching)\n")
        if full is not None:
            out.append(f"Full model: {_fmt(full, task_scale)} (n={len(full.values)})\n")
            if full_model_at_chance(full):
                out.append(
                    f"**Caveat:** the full model's {metric} is at chance level ({CHANCE_LEVEL[metric]:g}): "
                    "it has not learned the task with this recipe, so *matching* it means nothing here.\n"
                )
        header = "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
        out += [header, "|" + "---|" * (len(sparsities) + 1)]
        for method in methods:
            row = {c.sparsity: c for c in task_cells if c.method == method}
            out.append(
                f"| {method} | "
                + " | ".join(_fmt(row[s], task_scale) if s in row else "" for s in sparsities)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def csv_table(cells: list[Cell]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "method", "sparsity", "metric", "mean", "std", "n", "matching", "values"])
    for c in cells:
        writer.writerow(
            [
                c.task,
                c.method,
                c.sparsity,
                c.metric,
                c.mean,
                c.std,
                len(c.values),
                "" if c.matching is None else c.matching,
                " ".join(f"{v:.6g}" for v in c.values),
            ]
        )
    return buffer.getvalue()

"""From many fine-tuning results to the papers' tables: mean +- std per cell, and which tickets match.

A **matching** ticket (BERT-Tickets) has a mean dev score within one standard deviation of the full
model's mean over the same seeds: ``mean_ticket >= mean_full - std_full``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.errors import TicketlabError

FULL_MODEL = "full"
# Metrics where lower is better (a held-out loss): a ticket matches when its mean is at most the
# full model's mean plus one standard deviation.
LOWER_IS_BETTER = frozenset({"mlm_loss"})
# Correlation metrics score 0 for a model that predicts a constant (or at random): a full model whose
# score is within one std of 0 has not learned the task, and "matching" it says nothing.
CHANCE_LEVEL = {"matthews": 0.0, "pearson": 0.0, "spearman": 0.0}


# Fine-tuning settings that do not change what is trained: results that differ only in these (and
# the seed, and which file holds the mask) are replicates of one experiment.
NOT_THE_RECIPE = (
    "seed",
    "mask",
    "allow_fingerprint_mismatch",
    "save_model",
    "predict_test",
    "log_every",
    "eval_batch_size",
)


def replicate_key(spec: Mapping[str, Any] | None) -> str:
    """A short hash of a fine-tuning spec without its seed (``NOT_THE_RECIPE``): results with the
    same key are replicates and pool into one cell; another recipe is another row. "" when the
    spec is unknown."""
    if not spec:
        return ""
    payload = {k: v for k, v in spec.items() if k not in NOT_THE_RECIPE}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


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
    scope: str | None = None  # the ticket's scope and scheme (None for the full model)
    scheme: str | None = None
    recipe: str = ""  # replicate_key of its fine-tuning spec
    # The fraction of the scope's weights its mask pruned, as the run recorded it: the sparsity
    # itself for unstructured tickets; for structured ones (whose level is a fraction of heads),
    # what their heads and FFN layers hold.
    weight_sparsity: float | None = None


@dataclass
class Cell:
    """The seeds of one ticket (task, method, sparsity, scope, scheme) under one recipe."""

    task: str
    method: str
    sparsity: float
    metric: str
    values: list[float] = field(default_factory=list)
    matching: bool | None = None
    scope: str | None = None
    scheme: str | None = None
    recipe: str = ""
    seeds: list[int] = field(default_factory=list)
    weight_sparsities: list[float | None] = field(default_factory=list)

    @property
    def weight_sparsity(self) -> float | None:
        """The mean fraction of weights pruned over its seeds (None when a run did not record it)."""
        known = [w for w in self.weight_sparsities if w is not None]
        return float(np.mean(known)) if known and len(known) == len(self.weight_sparsities) else None

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
            "seeds": list(self.seeds),
            "matching": self.matching,
            "scope": self.scope,
            "scheme": self.scheme,
            "recipe": self.recipe,
            "weight_sparsity": self.weight_sparsity,
        }

    @property
    def std(self) -> float:
        # Sample standard deviation (ddof=1), as over seeds; 0 for a single seed.
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


def aggregate(records: Iterable[ResultRecord]) -> list[Cell]:
    """Group records into cells of true replicates (the same ticket and recipe, another seed) and
    mark each ticket's cell as matching the full model of its task and recipe, or not.

    A record given twice (the same result file, e.g. a grid and its IMP run both named) counts
    once; two different results of one cell with the same seed are refused.
    """
    cells: dict[tuple, Cell] = {}
    sources: dict[tuple, str] = {}
    for record in records:
        key = (
            record.task,
            record.method,
            round(record.sparsity, 6),
            record.metric,
            record.scope,
            record.scheme,
            record.recipe,
        )
        source = _same_file(record.source)
        seen = sources.get((*key, record.seed))
        if seen is not None:
            if seen == source:
                continue
            raise TicketlabError(
                f"two results of {record.task} {record.method} at {record.sparsity:.0%} with seed "
                f"{record.seed} and the same recipe ({seen} and {source}): a seed is one replicate; "
                "give each run once"
            )
        sources[(*key, record.seed)] = source
        cell = cells.setdefault(
            key,
            Cell(
                record.task,
                record.method,
                round(record.sparsity, 6),
                record.metric,
                scope=record.scope,
                scheme=record.scheme,
                recipe=record.recipe,
            ),
        )
        cell.values.append(record.value)
        cell.seeds.append(record.seed)
        cell.weight_sparsities.append(record.weight_sparsity)
    full = {(c.task, c.metric, c.recipe): c for c in cells.values() if c.method == FULL_MODEL}
    for cell in cells.values():
        reference = full.get((cell.task, cell.metric, cell.recipe))
        if cell.method != FULL_MODEL and reference is not None:
            if cell.metric in LOWER_IS_BETTER:
                cell.matching = cell.mean <= reference.mean + reference.std
            else:
                cell.matching = cell.mean >= reference.mean - reference.std
    return sorted(
        cells.values(),
        key=lambda c: (
            c.task,
            c.recipe,
            c.method != FULL_MODEL,
            c.method,
            c.scope or "",
            c.scheme or "",
            c.sparsity,
        ),
    )


def _same_file(source: str) -> str:
    """A record's source as one name per result: a run folder and its results.json are the same."""
    if not source:
        return source
    path = Path(source)
    return str((path if path.name.endswith(".json") else path / "results.json").resolve())


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


def _protocol(cell: Cell) -> str:
    return f"{cell.scope or '?'}/{cell.scheme or '?'}"


def markdown_table(cells: list[Cell], scale: float | None = None) -> str:
    """Method x sparsity per task (mean ± std over seeds, ✓ = matching).

    Each recipe of a task is a table of its own (results of different recipes never pool), and the
    tickets' scope and scheme are stated: in the heading when they share one, per row when not.
    ``scale`` multiplies every value; by default scores are shown x100 and losses as they are.
    """
    out = []
    for task in sorted({c.task for c in cells}):
        recipes = sorted({c.recipe for c in cells if c.task == task})
        for recipe in recipes:
            out += _task_table(
                [c for c in cells if c.task == task and c.recipe == recipe],
                task,
                recipe if len(recipes) > 1 else "",
                scale,
            )
    return "\n".join(out)


def _task_table(task_cells: list[Cell], task: str, recipe: str, scale: float | None) -> list[str]:
    out = []
    tickets = [c for c in task_cells if c.method != FULL_MODEL]
    sparsities = sorted({c.sparsity for c in tickets})
    protocols = sorted({_protocol(c) for c in tickets})
    per_row = len(protocols) > 1
    rows = sorted({(c.method, _protocol(c) if per_row else "") for c in tickets})
    metric = task_cells[0].metric
    task_scale = display_scale(metric) if scale is None else scale
    full = next((c for c in task_cells if c.method == FULL_MODEL), None)
    shown = f", x{task_scale:g}" if task_scale != 1 else ""
    which = f", recipe {recipe}" if recipe else ""
    out.append(f"### {task} ({metric}{shown}, mean ± std over seeds, ✓ = matching{which})\n")
    if len(protocols) == 1:
        scope, scheme = protocols[0].split("/")
        out.append(f"Tickets: scope {scope}, scheme {scheme}.\n")
    if full is not None:
        out.append(f"Full model: {_fmt(full, task_scale)} (n={len(full.values)})\n")
        if full_model_at_chance(full):
            out.append(
                f"**Caveat:** the full model's {metric} is at chance level ({CHANCE_LEVEL[metric]:g}): "
                "it has not learned the task with this recipe, so *matching* it means nothing here.\n"
            )
    header = "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    out += [header, "|" + "---|" * (len(sparsities) + 1)]
    for method, protocol in rows:
        row = {
            c.sparsity: c for c in tickets if c.method == method and (not per_row or _protocol(c) == protocol)
        }
        label = f"{method} ({protocol})" if per_row else method
        out.append(
            f"| {label} | "
            + " | ".join(_fmt(row[s], task_scale) if s in row else "" for s in sparsities)
            + " |"
        )
    out.append("")
    return out


def csv_table(cells: list[Cell]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "task",
            "method",
            "sparsity",
            "scope",
            "scheme",
            "recipe",
            "metric",
            "mean",
            "std",
            "n",
            "matching",
            "values",
        ]
    )
    for c in cells:
        writer.writerow(
            [
                c.task,
                c.method,
                c.sparsity,
                c.scope or "",
                c.scheme or "",
                c.recipe,
                c.metric,
                c.mean,
                c.std,
                len(c.values),
                "" if c.matching is None else c.matching,
                " ".join(f"{v:.6g}" for v in c.values),
            ]
        )
    return buffer.getvalue()

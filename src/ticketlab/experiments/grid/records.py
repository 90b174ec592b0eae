"""The grid's finished results, read back as records for tables, plots and the summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.analysis.aggregate import ResultRecord
from ticketlab.analysis.pretrain_correlation import TicketLoss
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.plan import (
    pretrain_loss_path,
    result_cells,
    ticket_cells,
    ticket_path,
)
from ticketlab.experiments.grid.spec import (
    NO_PRETRAIN_LOSS,
    GridSpec,
)
from ticketlab.io import read_json

log = logging.getLogger(__name__)


def collect_records(
    spec: GridSpec, root: Path, main_metric: Callable[[str, dict], tuple[str, float]]
) -> list[ResultRecord]:
    """Every finished result of the grid as records (cells and all of IMP's levels)."""
    records = []
    for cell in result_cells(spec):
        if cell.method == "imp":  # IMP's levels are the cells, fine-tuned inside the IMP run
            path = ticket_path(spec, root, cell).parent / "results.json"
        else:
            path = root / "cells" / cell.task / cell.name / "results.json"
        if path.exists():
            metric, value = main_metric(cell.task, read_json(path))
            records.append(
                ResultRecord(cell.task, cell.method, cell.sparsity, cell.seed, metric, value, str(path))
            )
    return records


def collect_pretrain_losses(spec: GridSpec, root: Path) -> list[TicketLoss]:
    """The measured pre-training losses of the mask of every result (controls excluded)."""
    losses = []
    for cell in ticket_cells(spec):
        if cell.method in NO_PRETRAIN_LOSS:
            continue
        path = pretrain_loss_path(ticket_path(spec, root, cell))
        if path.exists():
            measured = read_json(path)
            losses.append(
                TicketLoss(
                    cell.task,
                    cell.method,
                    cell.sparsity,
                    cell.seed,
                    kd_loss=float(measured["kd_loss"]),
                    kd_kind=measured["kd_loss_kind"],
                    mlm_loss=measured.get("mlm_loss"),
                    mlm_reason=measured.get("mlm_loss_reason"),
                )
            )
    return losses


# A correlation over constant predictions is undefined (scipy gives NaN, stored as null). A ticket
# that collapsed to one output carries no signal, so tables count it as 0, as scikit-learn's MCC
# already does for that case; results.json keeps the null.
UNDEFINED_AS_ZERO = ("pearson", "spearman", "matthews")


def main_metric_of(task: str, results: dict[str, Any]) -> tuple[str, float]:
    """The task's main metric and its best dev value (as the papers report) from a results.json."""
    metric = results.get("main_metric")
    best = results.get("best") or {}
    if metric not in best:
        raise TicketlabError(f"results for {task} have no best value of their main metric {metric!r}")
    value = best[metric]
    if value is None or value != value:  # null in JSON, or NaN
        if metric not in UNDEFINED_AS_ZERO:
            raise TicketlabError(f"results for {task} have an undefined {metric}")
        log.warning("%s: %s undefined (constant predictions); counted as 0", task, metric)
        return metric, 0.0
    return metric, float(value)

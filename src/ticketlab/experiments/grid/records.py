"""The grid's finished results, read back as records for tables, plots and the summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.analysis.aggregate import ResultRecord, replicate_key
from ticketlab.analysis.pretrain_correlation import TicketLoss
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import pretrain_loss_path, pretrain_loss_place
from ticketlab.experiments.grid.methods import method_of
from ticketlab.experiments.grid.plan import result_cells, ticket_cells, ticket_path
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.experiments.grid.step_store import uses_store
from ticketlab.io import read_json

log = logging.getLogger(__name__)


def record_of(
    path: Path,
    task: str,
    method: str,
    sparsity: float,
    seed: int,
    main_metric: Callable[[str, dict], tuple[str, float]],
    root: Path | None = None,
) -> ResultRecord:
    """The record of one fine-tuning run's results.json: its main metric, the ticket's scope and
    scheme, and its recipe (from the spec.json beside it), so that only replicates pool. A result
    taken over from another run (``reused_from``, relative to ``root``) is named by that run."""
    results = read_json(path)
    metric, value = main_metric(task, results)
    spec_file = path.parent / "spec.json"
    spec = read_json(spec_file) if spec_file.is_file() else None
    if isinstance(spec, dict) and "spec" in spec and "kind" in spec:  # a run directory's, not a run's
        spec = None
    source = path
    if results.get("reused_from") and root is not None:
        source = root / results["reused_from"] / "results.json"
    return ResultRecord(
        task,
        method,
        sparsity,
        seed,
        metric,
        value,
        str(source),
        scope=results.get("scope"),
        scheme=results.get("scheme"),
        recipe=replicate_key(spec),
        weight_sparsity=results.get("sparsity"),
    )


def collect_records(
    spec: GridSpec, root: Path, main_metric: Callable[[str, dict], tuple[str, float]]
) -> list[ResultRecord]:
    """Every finished result of the grid as records (cells and all of IMP's levels)."""
    records = []
    for cell in result_cells(spec):
        path = method_of(cell.method).results_file(spec, root, cell)
        if path.exists():
            records.append(
                record_of(path, cell.task, cell.method, cell.sparsity, cell.seed, main_metric, root)
            )
    return records


def collect_pretrain_losses(spec: GridSpec, root: Path) -> list[TicketLoss]:
    """The measured pre-training losses of the mask of every result (controls excluded)."""
    losses = []
    in_store = uses_store(root)
    for cell in ticket_cells(spec):
        if not method_of(cell.method).has_pretrain_loss:
            continue
        key = str(pretrain_loss_path(ticket_path(spec, Path("."), cell)))
        path = pretrain_loss_place(root, key, in_store)
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

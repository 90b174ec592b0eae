"""``ticketlab report``: read run directories of any kind and write tables and plots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.analysis.aggregate import (
    FULL_MODEL,
    Cell,
    ResultRecord,
    aggregate,
    csv_table,
    display_scale,
    markdown_table,
)
from ticketlab.analysis.pretrain_correlation import TicketLoss
from ticketlab.errors import TicketlabError
from ticketlab.io import read_json, write_json


def _finetune_record(path: Path, results: dict[str, Any]) -> ResultRecord:
    from ticketlab.experiments.grid import main_metric_of
    from ticketlab.experiments.grid.records import record_of

    method = results.get("mask_method") or FULL_MODEL
    sparsity = round(float(results.get("sparsity") or 0.0), 4)
    return record_of(
        path / "results.json", results["task"], method, sparsity, int(results.get("seed", 0)), main_metric_of
    )


def records_from(run_dir: str | Path) -> tuple[list[ResultRecord], list[Path]]:
    """Result records and mask files of a grid, IMP or fine-tuning run directory."""
    from ticketlab.experiments.grid import GridSpec, collect_records, main_metric_of
    from ticketlab.experiments.grid.records import record_of

    root = Path(run_dir)
    if root.is_file():
        raise TicketlabError(f"{root} is a file; give a run directory (one holding spec.json)")
    if not root.is_dir():
        raise TicketlabError(f"run directory {root} does not exist")
    spec_file = root / "spec.json"
    if not spec_file.exists():
        raise TicketlabError(f"{root} has no spec.json: not a ticketlab run directory")
    spec = read_json(spec_file)
    kind = spec.get("kind")
    if kind == "GridSpec":
        grid = GridSpec(**spec["spec"])
        return collect_records(grid, root, main_metric_of), grid_masks_to_compare(grid, root)
    if kind == "ImpSpec":
        records, masks = [], []
        for level in sorted(root.glob("level_*")):
            if (level / "results.json").exists():
                results = read_json(level / "results.json")
                method = "imp" if results.get("level") else FULL_MODEL
                records.append(
                    record_of(
                        level / "results.json",
                        results["task"],
                        method,
                        round(float(results["sparsity"]), 4),
                        int(spec["spec"].get("seed", 0)),
                        main_metric_of,
                    )
                )
            if (level / "mask.safetensors").exists():
                masks.append(level / "mask.safetensors")
        return records, masks
    if kind == "SuperTicketSpec":
        from ticketlab.experiments.super_tickets import super_ticket_records

        return super_ticket_records(root), []
    if (root / "results.json").exists():  # a single fine-tuning run
        results = read_json(root / "results.json")
        masks = [Path(results["mask"])] if results.get("mask") and Path(results["mask"]).exists() else []
        return [_finetune_record(root, results)], masks
    raise TicketlabError(f"{root} holds no finished results yet")


def grid_masks_to_compare(grid: Any, root: Path) -> list[Path]:
    """The tickets of a grid's first seed at the sparsities it evaluates (OMP, random, TAMT, IMP on
    each task: IMP's other levels would crowd the overlap heat-map), each file once."""
    from ticketlab.experiments.grid import method_of, ticket_cells, ticket_path

    paths = (
        ticket_path(grid, root, cell)
        for cell in ticket_cells(grid)
        # The controls' ticket is OMP's: the same weights kept, on other weights.
        if cell.seed == grid.seeds[0] and not method_of(cell.method).allows_fingerprint_mismatch
    )
    return list(dict.fromkeys(p for p in paths if p is not None and p.exists()))


def tickets_from(run_dir: str | Path) -> tuple[list[Path], list[TicketLoss]]:
    """Every ticket mask of a run directory (for the search-cost table) and, for a grid with a
    ``pretrain_loss`` section, the measured pre-training losses of its results' masks."""
    from ticketlab.experiments.grid import GridSpec, collect_pretrain_losses, ticket_files

    root = Path(run_dir)
    spec = read_json(root / "spec.json")
    if spec.get("kind") == "GridSpec":
        grid = GridSpec(**spec["spec"])
        return ticket_files(grid, root), collect_pretrain_losses(grid, root)
    if spec.get("kind") == "ImpSpec":
        return sorted(root.glob("level_*/mask.safetensors")), []
    if spec.get("kind") is not None:  # other pipelines (super tickets, ...): no recorded search cost
        return [], []
    results = read_json(root / "results.json") if (root / "results.json").exists() else {}
    mask = results.get("mask")
    return ([Path(mask)] if mask and Path(mask).exists() else []), []


def transfer_table(cells: Iterable[Cell], scale: float | None = None) -> str:
    """Tickets found on one task or on MLM (``imp@source``) fine-tuned on others, beside the task's own
    IMP ticket (``scale``: as in :func:`markdown_table`)."""
    cells = list(cells)
    transfer = [c for c in cells if c.method.startswith("imp@")]
    if not transfer:
        return ""
    lines = ["### Transfer (IMP tickets found on the source task or on MLM, fine-tuned on the target)\n"]
    lines += [
        "| source → target | sparsity | transferred | own IMP ticket | full model |",
        "|---|---|---|---|---|",
    ]
    own = {(c.task, c.sparsity): c for c in cells if c.method == "imp"}
    full = {c.task: c for c in cells if c.method == FULL_MODEL}
    for c in sorted(transfer, key=lambda c: (c.method, c.task, c.sparsity)):
        mine = own.get((c.task, c.sparsity))
        ref = full.get(c.task)
        k = display_scale(c.metric) if scale is None else scale
        lines.append(
            f"| {c.method[4:]} → {c.task} | {c.sparsity:.0%} | {c.mean * k:.2f} ± {c.std * k:.2f}"
            f"{' ✓' if c.matching else ''} | "
            + (f"{mine.mean * k:.2f}" if mine else "")
            + " | "
            + (f"{ref.mean * k:.2f}" if ref else "")
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Tables (Markdown, CSV, JSON) and plots (PNG) for the runs; returns what was written."""
    from ticketlab.analysis.overlap import pairwise_overlap
    from ticketlab.analysis.plots import plot_layer_profile, plot_overlap_heatmap, plot_score_vs_sparsity
    from ticketlab.analysis.search_cost import search_cost_markdown, summarize_search_costs
    from ticketlab.masks import UnstructuredMask, load_mask

    out = Path(out)
    records: list[ResultRecord] = []
    mask_paths: list[Path] = []
    tickets: dict[Path, None] = {}  # ordered set: a grid's IMP runs may also be given on their own
    losses: list[TicketLoss] = []
    for run_dir in run_dirs:
        found, masks = records_from(run_dir)
        records += found
        mask_paths += masks
        ticket_masks, ticket_losses = tickets_from(run_dir)
        tickets.update(dict.fromkeys(p.resolve() for p in ticket_masks))
        losses += ticket_losses
    if not records:
        raise TicketlabError("no finished results in the given run directories")
    cells = aggregate(records)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    cost_rows = summarize_search_costs(_search_costs(tickets))
    pretrain = _pretrain_loss_section(cells, losses, out)
    files += pretrain.pop("files")
    table = (
        markdown_table(cells)
        + "\n"
        + transfer_table(cells)
        + "\n"
        + search_cost_markdown(cost_rows)
        + "\n"
        + pretrain.pop("markdown")
    )
    (out / "results.md").write_text(table)
    (out / "results.csv").write_text(csv_table(cells))
    files += [out / "results.md", out / "results.csv"]
    for task in sorted({c.task for c in cells}):
        files.append(plot_score_vs_sparsity(cells, task, out / f"{task}_score_vs_sparsity.png"))
    masks: dict[str, UnstructuredMask] = {}
    # The same ticket in several run directories (the OMP ticket of each task's grid) is shown once;
    # equal masks from different searches (IMP on two tasks) stay: that they agree is the finding.
    seen: set[tuple[str, str]] = set()
    for path in mask_paths:
        if len(masks) == 12:  # an overlap heat-map stays readable up to about a dozen masks
            break
        mask = load_mask(path)
        if not isinstance(mask, UnstructuredMask):
            continue
        method = mask.provenance.method
        source = (mask.provenance.method_params or {}).get("task") if method == "imp" else None
        label = f"{method}@{source} {mask.sparsity:.0%}" if source else f"{method} {mask.sparsity:.0%}"
        if (label, digest := _content_digest(mask)) in seen:
            continue
        seen.add((label, digest))
        masks[label if label not in masks else f"{label} ({path.parent.name})"] = mask
    same_matrices = [m for m in masks.values() if list(m.tensors) == list(next(iter(masks.values())).tensors)]
    if len(masks) >= 2 and len(same_matrices) == len(masks):
        names = list(masks)
        matrix = np.eye(len(names))
        for pair in pairwise_overlap(masks):
            i, j = names.index(pair.a), names.index(pair.b)
            matrix[i, j] = matrix[j, i] = pair.jaccard
        files.append(plot_overlap_heatmap(names, matrix, out / "mask_overlap.png"))
    if masks:
        files.append(
            plot_layer_profile({n: m.layer_sparsity() for n, m in masks.items()}, out / "layer_sparsity.png")
        )
    summary = {
        "cells": [c.to_dict() for c in cells],
        "search_cost": cost_rows,
        "pretrain_loss": pretrain,
        "masks_compared": list(masks),  # the overlap heat-map's and layer profile's masks
        "files": [str(f) for f in files],
    }
    write_json(out / "report.json", summary)
    return summary


def _content_digest(mask: Any) -> str:
    """A hash of which weights a mask keeps (names and bits), to show each distinct ticket once."""
    import hashlib

    digest = hashlib.sha1()
    for name, kept in sorted(mask.tensors.items()):
        digest.update(name.encode())
        digest.update(np.packbits(kept.numpy().ravel()).tobytes())
    return digest.hexdigest()


def _search_costs(mask_paths: Iterable[Path]) -> list:
    from ticketlab.analysis.search_cost import search_cost_of
    from ticketlab.errors import MaskFormatError
    from ticketlab.masks import read_header

    costs = []
    for path in mask_paths:
        try:
            cost = search_cost_of(read_header(path), path)
        except MaskFormatError:  # not a ticketlab mask (an imported original): no recorded cost
            continue
        if cost is not None:
            costs.append(cost)
    return costs


def _pretrain_loss_section(cells: list[Cell], losses: list[TicketLoss], out: Path) -> dict[str, Any]:
    """Points, correlations, scatter plots and the Markdown of pre-training loss vs downstream score."""
    from ticketlab.analysis.plots import plot_loss_vs_score
    from ticketlab.analysis.pretrain_correlation import (
        correlation_markdown,
        correlation_title,
        correlations,
        loss_score_points,
    )

    points = loss_score_points(cells, losses)
    mlm_reason = next((loss.mlm_reason for loss in losses if loss.mlm_reason), None)
    entries = correlations(points, mlm_reason)
    files = []
    full = {c.task: c for c in cells if c.method == FULL_MODEL}
    for entry in entries:
        if entry["available"]:
            files.append(
                plot_loss_vs_score(
                    points,
                    entry["task"],
                    entry["loss"],
                    out / f"{entry['task']}_score_vs_{entry['loss']}.png",
                    subtitle=correlation_title(entry),
                    full=full.get(entry["task"]),
                )
            )
    return {
        "points": [p.to_dict() for p in points],
        "correlations": entries,
        "markdown": correlation_markdown(points, entries),
        "files": files,
    }

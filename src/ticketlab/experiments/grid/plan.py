"""The grid's plan: its cells, where each ticket lives, and its step graph, all asked of the grid's
methods (``methods/``): nothing here knows a method by name."""

from __future__ import annotations

from pathlib import Path

from ticketlab.experiments.grid.layout import (
    Cell,
    GridStep,
    cell_key,
    cell_step,
    finetune_spec_for,
    pretrain_loss_path,
)
from ticketlab.experiments.grid.methods import active_methods, method_of
from ticketlab.experiments.grid.methods.imp import imp_level_for, imp_run_key, imp_spec_for
from ticketlab.experiments.grid.methods.tamt import tamt_spec_for
from ticketlab.experiments.grid.spec import GridSpec

__all__ = [
    "GridStep",
    "cell_key",
    "finetune_spec_for",
    "imp_level_for",
    "imp_run_key",
    "imp_spec_for",
    "plan_cells",
    "plan_steps",
    "pretrain_loss_path",
    "result_cells",
    "tamt_spec_for",
    "ticket_cells",
    "ticket_files",
    "ticket_path",
    "ticket_step",
]


def _per_task_and_seed(spec: GridSpec, cells_of: str) -> list[Cell]:
    methods = active_methods(spec)
    return [
        cell
        for task in spec.tasks
        for seed in spec.seeds
        for method in methods
        for cell in getattr(method, cells_of)(spec, task, seed)
    ]


def plan_cells(spec: GridSpec) -> list[Cell]:
    """Every fine-tuning run the grid makes itself (IMP's levels are fine-tuned by its runs)."""
    return _per_task_and_seed(spec, "cells")


def ticket_cells(spec: GridSpec) -> list[Cell]:
    """Every (task, method, sparsity, seed) with a ticket and a result: the planned cells and IMP's
    levels at the grid's sparsities."""
    return _per_task_and_seed(spec, "ticket_cells")


def result_cells(spec: GridSpec) -> list[Cell]:
    """Every cell with a result to report: the ticket cells, and IMP at every level of its runs."""
    return _per_task_and_seed(spec, "result_cells")


def ticket_path(spec: GridSpec, root: Path, cell: Cell) -> Path | None:
    """Where the mask of a cell's ticket is (or will be); None for the full model."""
    return method_of(cell.method).ticket_path(spec, root, cell)


def ticket_step(spec: GridSpec, cell: Cell) -> GridStep | None:
    """The step that makes the ticket of ``cell`` (None for the full model)."""
    return method_of(cell.method).ticket_step(spec, cell)


def ticket_files(spec: GridSpec, root: Path) -> list[Path]:
    """Every ticket mask of the grid that exists, once each (OMP, random, TAMT, IMP levels)."""
    paths = {ticket_path(spec, root, cell) for cell in ticket_cells(spec)}
    return sorted(p for p in paths if p is not None and p.exists())


def plan_steps(spec: GridSpec) -> list[GridStep]:
    """Every step of the grid, each once, every step after the steps it needs: the methods' own
    steps (IMP runs), tickets, fine-tuning cells, then the pre-training losses of the tickets."""
    methods = active_methods(spec)
    steps: dict[str, GridStep] = {}

    def add(step: GridStep | None) -> None:
        if step is not None and step.key not in steps:
            steps[step.key] = step

    for method in methods:
        for step in method.extra_steps(spec):
            add(step)
    for cell in plan_cells(spec):
        method = method_of(cell.method)
        ticket = method.ticket_step(spec, cell)
        if ticket is not None:
            for needed in method.input_steps(spec, ticket):
                if needed.kind == "cell":
                    add(_cell_step(spec, needed.cell))
                else:
                    add(needed)
            add(ticket)
        add(_cell_step(spec, cell))
    if spec.pretrain_loss is not None:
        for cell in ticket_cells(spec):
            method = method_of(cell.method)
            ticket = method.ticket_step(spec, cell)
            if not method.has_pretrain_loss or ticket is None:
                continue
            mask = method.ticket_path(spec, Path("."), cell)
            add(GridStep("pretrain_loss", str(pretrain_loss_path(mask)), (ticket.key,), cell=cell))
    return list(steps.values())


def _cell_step(spec: GridSpec, cell: Cell) -> GridStep:
    """A fine-tuning cell's step: after its ticket's, and after any step another method says the
    cell needs (IMP's run, whose level 0 the full cell may take over)."""
    ticket = ticket_step(spec, cell)
    inputs = (ticket.key,) if ticket is not None else ()
    for method in active_methods(spec):
        inputs += method.cell_inputs(spec, cell)
    return cell_step(cell, inputs)

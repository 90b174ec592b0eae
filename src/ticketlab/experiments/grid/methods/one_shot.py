"""``omp`` and ``random``: one-shot tickets of the pre-trained weights, shared by every task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.experiments.grid.layout import Cell, GridStep
from ticketlab.experiments.grid.methods.base import GridMethod, register
from ticketlab.experiments.steps import StepStore


def omp_cell(sparsity: float) -> Cell:
    """What the OMP ticket at ``sparsity`` is made for: every task and seed."""
    return Cell("", "omp", sparsity, 0)


class OneShotMagnitude(GridMethod):
    name = "omp"
    help = "one-shot magnitude pruning of the pre-trained weights (task-independent)"
    order = 10

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        return root / "tickets" / f"omp-{cell.sparsity:.2f}.safetensors"

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        return self.file_step(spec, omp_cell(cell.sparsity))

    def make(self, runner, step: GridStep) -> Path:
        from ticketlab.masks import save_mask
        from ticketlab.pruning import prune

        path = self.ticket_path(runner.spec, runner.root, step.cell)

        def make(file: Path) -> None:
            mask = prune(
                runner.pretrained(),
                "omp",
                step.cell.sparsity,
                scope=runner.spec.scope,
                scheme=runner.spec.scheme,
                source_model=runner.spec.model,
            )
            save_mask(mask, file)
            runner.computed["omp"] += 1

        StepStore(path.parent).run_file(path.name, make)
        return path


class RandomPruning(GridMethod):
    name = "random"
    help = "random pruning, matched per matrix to OMP's ticket (random_variant: matched) or uniform"
    order = 20

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        return root / "tickets" / f"random-{cell.sparsity:.2f}-seed{cell.seed}.safetensors"

    def validate(self, spec) -> None:
        from ticketlab.errors import TicketlabError

        if spec.random_variant not in ("matched", "global"):
            raise TicketlabError(f"random_variant must be matched or global, not {spec.random_variant!r}")

    def _omp_step(self, spec, sparsity: float) -> GridStep:
        return OMP.ticket_step(spec, omp_cell(sparsity))

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        matched = spec.random_variant == "matched"
        inputs = (self._omp_step(spec, cell.sparsity).key,) if matched else ()
        return self.file_step(spec, Cell("", self.name, cell.sparsity, cell.seed), inputs)

    def input_steps(self, spec, step: GridStep) -> list[GridStep]:
        return [self._omp_step(spec, step.cell.sparsity)] if step.inputs else []

    def determinants(self, spec, step: GridStep) -> dict[str, Any]:
        return {**super().determinants(spec, step), "random_variant": spec.random_variant}

    def make(self, runner, step: GridStep) -> Path:
        from ticketlab.masks import load_mask, save_mask
        from ticketlab.pruning import prune

        cell = step.cell
        path = self.ticket_path(runner.spec, runner.root, cell)

        def make(file: Path) -> None:
            params: dict[str, Any] = {}
            if step.inputs:  # matched: the same count per matrix as OMP's ticket
                params["reference"] = load_mask(runner.run_step(self._omp_step(runner.spec, cell.sparsity)))
            mask = prune(
                runner.pretrained(),
                "random",
                cell.sparsity,
                scope=runner.spec.scope,
                scheme=runner.spec.scheme,
                seed=cell.seed,
                source_model=runner.spec.model,
                **params,
            )
            save_mask(mask, file)
            runner.computed["random"] += 1

        StepStore(path.parent).run_file(path.name, make)
        return path


OMP = register(OneShotMagnitude())
register(RandomPruning())

"""``tamt``: task-agnostic mask training on pre-training text (Liu et al. 2022), one mask per
sparsity shared by every task, like OMP, trained as the grid's ``tamt`` section says."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import Cell, GridStep
from ticketlab.experiments.grid.methods.base import GridMethod, register
from ticketlab.experiments.tamt import TamtSpec


def tamt_spec_for(spec, sparsity: float) -> TamtSpec:
    """The TAMT run of the grid's ``tamt`` ticket at ``sparsity`` (the grid's model, scope, scheme)."""
    if spec.tamt is None:
        raise TicketlabError("the grid has no tamt section")
    return TamtSpec(
        model=spec.model, sparsity=sparsity, scope=spec.scope, scheme=spec.scheme, **asdict(spec.tamt)
    )


class TaskAgnosticMaskTraining(GridMethod):
    name = "tamt"
    help = "task-agnostic mask training on pre-training text (the grid's tamt section), per sparsity"
    order = 40
    works_in_place = True  # its checkpoint and budgets' masks are written in its folder as it trains

    def validate(self, spec) -> None:
        if spec.tamt is None:
            raise TicketlabError(
                "method tamt needs a tamt section saying what to train on, e.g. "
                "tamt: {text: FILE, steps: N} (objective kd by default)"
            )

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        return root / "tickets" / f"tamt-{cell.sparsity:.2f}" / "mask.safetensors"

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        shared = Cell("", self.name, cell.sparsity, 0)
        return GridStep("tamt", f"tickets/tamt-{cell.sparsity:.2f}", cell=shared)

    def make(self, runner, step: GridStep) -> Path:
        """The TAMT mask at the step's sparsity, trained once for every task (resumes from its
        checkpoint)."""
        from ticketlab.experiments.tamt import run_tamt

        sparsity = step.cell.sparsity
        path = self.ticket_path(runner.spec, runner.root, step.cell)
        finished = self.step_done(runner, step)
        spec = tamt_spec_for(runner.spec, sparsity)
        if not finished:
            runner.echo(f"TAMT-{spec.objective} at {sparsity:.0%}: {spec.steps} steps")
        # Always through run_tamt: its steps (each budget, the training) are claimed, verified and
        # resumed there, so a finished run is only read back.
        run_tamt(spec, path.parent, progress=not runner.quiet)
        runner.computed["tamt"] += not finished
        return path

    def step_claims(self, runner, step: GridStep) -> list[tuple[Path, str]]:
        from ticketlab.experiments.tamt import FINAL_STEP

        return [(runner.root / step.key, FINAL_STEP)]  # the training's claim, inside its folder

    def determinants(self, spec, step: GridStep) -> dict:
        from ticketlab.experiments.store import non_default_fields

        return {"method": self.name, "tamt": non_default_fields(tamt_spec_for(spec, step.cell.sparsity))}

    def step_done(self, runner, step: GridStep) -> bool:
        return (runner.root / step.key / "results.json").is_file()


register(TaskAgnosticMaskTraining())

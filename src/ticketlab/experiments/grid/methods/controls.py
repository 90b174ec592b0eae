"""BERT-Tickets' controls: OMP's ticket applied to other weights than the pre-trained ones.

``permuted``: the pre-trained weights with whole layers in a seeded random order; ``random-init``:
randomly initialised weights. Both fine-tune OMP's mask of the same sparsity, so their ticket is
OMP's step, and they have no pre-training loss (the weights are not those the loss compares)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.experiments.grid.layout import Cell, GridStep
from ticketlab.experiments.grid.methods.base import GridMethod, register
from ticketlab.experiments.grid.methods.one_shot import OMP, omp_cell


class Control(GridMethod):
    has_pretrain_loss = False
    allows_fingerprint_mismatch = True

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        return OMP.ticket_path(spec, root, omp_cell(cell.sparsity))

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        return OMP.ticket_step(spec, cell)

    def prepare_model(self, runner, cell: Cell, record: dict[str, Any]) -> Any:
        from accelerate.utils import set_seed

        from ticketlab.training.tasks import get_task

        set_seed(cell.seed)
        model = get_task(cell.task).build_model(runner.spec.model)
        record["control"] = self.change(model, cell.seed)
        return model

    def change(self, model: Any, seed: int) -> dict[str, Any]:
        """Change the model's weights in place; what was done, for results.json."""
        raise NotImplementedError


class PermutedLayers(Control):
    name = "permuted"
    help = "control: OMP's ticket on the pre-trained weights with whole layers permuted (seeded)"
    order = 50

    def change(self, model: Any, seed: int) -> dict[str, Any]:
        from ticketlab.models.controls import permute_layers

        return {"kind": "permuted", "seed": seed, "layer_order": permute_layers(model, seed=seed)}


class RandomInit(Control):
    name = "random-init"
    help = "control: OMP's ticket on randomly initialised weights (seeded)"
    order = 51

    def change(self, model: Any, seed: int) -> dict[str, Any]:
        from ticketlab.models.controls import reinitialize

        reinitialize(model, seed=seed)
        return {"kind": "random-init", "seed": seed}


register(PermutedLayers())
register(RandomInit())

"""``full``: the dense pre-trained model, fine-tuned as every ticket is; the reference."""

from __future__ import annotations

from ticketlab.experiments.grid.layout import FULL_MODEL, Cell
from ticketlab.experiments.grid.methods.base import GridMethod, register


class FullModel(GridMethod):
    name = FULL_MODEL
    help = "the dense pre-trained model (no mask): the reference every ticket is compared with"
    order = 0
    has_pretrain_loss = False

    def cells(self, spec, task: str, seed: int) -> list[Cell]:
        return [Cell(task, FULL_MODEL, 0.0, seed)]


register(FullModel())

"""The grid's vocabulary, below its methods, plan and runner: a cell (one fine-tuning run), a step
(one node of the step graph) and where the shared pieces live in the grid's folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.analysis.aggregate import FULL_MODEL

__all__ = [
    "FULL_MODEL",
    "Cell",
    "GridStep",
    "cell_key",
    "cell_step",
    "finetune_spec_for",
    "pretrain_loss_path",
]


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid (or, for a ticket step, what the ticket is made for)."""

    task: str
    method: str
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.sparsity:.2f}-seed{self.seed}"


@dataclass(frozen=True)
class GridStep:
    """One node of a grid's step graph: the kind of work, where its output lives (``key``, relative
    to the grid's folder) and the keys of the steps it needs. ``cell`` says what the step is for;
    its ``method`` names the grid method that makes it (``cell`` and ``pretrain_loss`` steps are
    the grid's own)."""

    kind: str
    key: str
    inputs: tuple[str, ...] = ()
    cell: Cell | None = None


def cell_key(cell: Cell) -> str:
    """The folder of a fine-tuning cell, relative to the grid's folder."""
    return f"cells/{cell.task}/{cell.name}"


def cell_step(cell: Cell, inputs: tuple[str, ...] = ()) -> GridStep:
    return GridStep("cell", cell_key(cell), inputs, cell=cell)


def pretrain_loss_path(mask_path: Path) -> Path:
    """The pre-training losses of a ticket, beside its mask: ``<mask>.pretrain_loss.json``."""
    return mask_path.with_name(mask_path.name.removesuffix(".safetensors") + ".pretrain_loss.json")


PRETRAIN_LOSS_DIR = "pretrain_loss"
# The MLM head ``pretrain_loss: {mlm_head: auto}`` builds once per grid (or store): tickets/mlm_head.
MLM_HEAD_STEP = "mlm_head"


def pretrain_loss_place(root: Path, key: str, in_store: bool) -> Path:
    """Where the file of the pre-training-loss step ``key`` is: beside its mask in a grid that
    keeps its steps in place; in the grid's ``pretrain_loss/`` folder (``/`` written ``--``) in one
    with a store, since the mask may sit inside a step that grids with other settings share."""
    return root / PRETRAIN_LOSS_DIR / key.replace("/", "--") if in_store else root / key


def finetune_spec_for(spec: Any, task: str, seed: int, **extra: Any):
    """The grid's fine-tuning run of ``task`` with ``seed`` (``extra``: mask, save_model, ...)."""
    from ticketlab.experiments.finetune import FinetuneSpec

    return FinetuneSpec(
        model=spec.model, task=task, data_dir=spec.data_dir, seed=seed, **extra, **spec.recipe_for(task)
    )

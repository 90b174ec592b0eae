"""Structured tickets (attention heads and FFN layers), scored on the fine-tuned weights of the
grid's ``full`` cell of the same task and seed; a cell's level is the fraction of heads pruned.

- ``super-winning`` / ``super-random`` / ``super-losing``: super tickets (Liang et al. 2021), one-shot
  nested masks from the importance on train, at ``super_levels`` (default: the sparsities) with
  round(p x ``super_ffn_ratio`` x layers) FFN layers; every kind made in one step.
- ``allwin-good`` / ``allwin-random`` / ``allwin-bad``: all tickets winning (Prasanna et al. 2020) at
  fixed sizes (no 0.9 stopping rule): iterative importance pruning re-scored on dev, through every
  level of ``allwin_levels``; random and bad of the same size drawn with the seed.
"""

from __future__ import annotations

from pathlib import Path

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import FULL_MODEL, Cell, GridStep, cell_key, finetune_spec_for
from ticketlab.experiments.grid.methods.base import GridMethod, register
from ticketlab.experiments.steps import StepStore
from ticketlab.experiments.store import RunDirectory


class StructuredTicket(GridMethod):
    """One kind of a family of structured tickets made together in one step per task and seed."""

    family = ""  # the step's folder: tickets/<family>/<task>/seed<S>
    levels_field = ""  # the grid's field with the fractions of heads
    family_fields: tuple[str, ...] = ()  # the grid's fields with the family's other settings
    has_pretrain_loss = False
    needs_full_model_weights = True

    def __init__(self, kind: str, order: int):
        self.kind = kind
        self.name = f"{self.family}-{kind}"
        self.order = order

    def levels(self, spec) -> list[float]:
        return list(getattr(spec, self.levels_field) or spec.sparsities)

    def determinants(self, spec, step: GridStep) -> dict:
        task = step.cell.task
        family = {name: getattr(spec, name) for name in self.family_fields}
        return {  # the full cell it scores is an input: its digest counts too
            "family": self.family,
            "levels": self.levels(spec),
            "settings": family,
            "recipe": spec.recipe_for(task),
            "data_dir": spec.data_dir,
            "made_for": [task, step.cell.seed],
        }

    def validate(self, spec) -> None:
        if FULL_MODEL not in spec.methods:
            raise TicketlabError(
                f"{self.family}-* methods need the full method: they score its fine-tuned model"
            )
        family = [name for name in spec.methods if name.startswith(f"{self.family}-")]
        if family[0] == self.name:  # the family's settings, checked once
            self.validate_family(spec, [name.removeprefix(f"{self.family}-") for name in family])

    def validate_family(self, spec, kinds: list[str]) -> None:
        """Check the family's settings (``kinds``: the family's kinds the grid runs)."""

    def masks_dir(self, root: Path, task: str, seed: int) -> Path:
        """The folder of the family's masks for ``task`` and ``seed``, which appears only when
        finished (the scores or the pruning steps beside it)."""
        from ticketlab.experiments.super_tickets import MASKS_DIR

        return root / "tickets" / self.family / task / f"seed{seed}" / MASKS_DIR

    def ticket_path(self, spec, root: Path, cell: Cell) -> Path:
        from ticketlab.experiments.super_tickets import mask_file_name

        return self.masks_dir(root, cell.task, cell.seed) / mask_file_name(self.kind, cell.sparsity)

    def _full_cell(self, cell: Cell) -> Cell:
        return Cell(cell.task, FULL_MODEL, 0.0, cell.seed)

    def ticket_step(self, spec, cell: Cell) -> GridStep:
        key = str(self.masks_dir(Path("."), cell.task, cell.seed).parent)
        made_for = Cell(cell.task, self.name, 0.0, cell.seed)
        return GridStep(self.family, key, (cell_key(self._full_cell(cell)),), cell=made_for)

    def input_steps(self, spec, step: GridStep) -> list[GridStep]:
        from ticketlab.experiments.grid.layout import cell_step

        return [cell_step(self._full_cell(step.cell))]

    def step_done(self, runner, step: GridStep) -> bool:
        return self.masks_dir(runner.root, step.cell.task, step.cell.seed).is_dir()

    def make(self, runner, step: GridStep) -> Path:
        """The family's masks for the step's task and seed, made once from the fine-tuned model of
        the full cell (run first if needed)."""
        from ticketlab.experiments.finetune import MODEL_DIR

        cell = step.cell
        masks = self.masks_dir(runner.root, cell.task, cell.seed)
        if not masks.is_dir():  # written atomically: it exists only when finished
            full = self._full_cell(cell)
            model_dir = runner.root / cell_key(full) / MODEL_DIR
            runner.run_cell(full)
            if not model_dir.is_dir():
                # The grid grew by a structured method: its full cell ran without keeping weights.
                runner.echo(f"fine-tune {cell.task}: full, seed {cell.seed}, again, to keep its weights")
                StepStore(model_dir.parent.parent).redo(full.name)
                runner.run_cell(full)
            self.make_masks(runner, cell.task, cell.seed, model_dir, masks)
        return masks

    def make_masks(self, runner, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        raise NotImplementedError

    def ticket_of(self, runner, cell: Cell) -> Path:
        """The mask of a cell (its family's masks made first if needed)."""
        masks = self.make(runner, self.ticket_step(runner.spec, cell))
        path = self.ticket_path(runner.spec, runner.root, cell)
        if not path.exists():
            step = masks.parent.relative_to(runner.root)
            raise TicketlabError(
                f"the structured masks in {step} were made for other levels than {cell.method} at "
                f"{cell.sparsity:.2f} (the grid grew); redo them with --redo {step}"
            )
        return path


class SuperTicket(StructuredTicket):
    family = "super"
    levels_field = "super_levels"
    family_fields = ("super_variant", "super_ffn_ratio")
    help = "super tickets (heads and FFN layers by importance on train): winning, random or losing"

    def validate_family(self, spec, kinds: list[str]) -> None:
        from ticketlab.experiments.super_tickets import SuperTicketSpec

        SuperTicketSpec(
            spec.model,
            spec.tasks[0],
            levels=self.levels(spec),
            kinds=kinds,
            variant=spec.super_variant,
            ffn_ratio=spec.super_ffn_ratio,
            recipe=spec.recipe,
        ).validate()

    def make_masks(self, runner, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        """Super tickets: one-shot nested masks from the importance of ``model_dir`` on train."""
        from ticketlab.experiments.super_tickets import importance_options_for, write_super_masks

        spec = runner.spec
        runner.echo(f"importance on {task}, seed {seed}: super tickets at {self.levels(spec)}")

        def make(tmp: Path) -> None:
            write_super_masks(
                model_dir,
                task,
                tmp,
                options=importance_options_for(spec.super_variant, spec.recipe_for(task)),
                # Every kind, whichever the grid asks for now: a grid that grows by a kind needs no
                # second scoring of the same model.
                kinds=[m.kind for m in SUPER],
                levels=self.levels(spec),
                ffn_ratio=spec.super_ffn_ratio,
                seed=seed,
                source_model=spec.model,
                tokenizer_source=spec.model,
                data_dir=spec.data_dir,
                max_length=spec.recipe_for(task).get("max_length"),
                cache_dir=runner.cache_dir,
                quiet=runner.quiet,
            )
            runner.computed["super masks"] += 1

        StepStore(masks.parent.parent).run(
            masks.parent.name, make, adopt=lambda folder: (folder / masks.name).is_dir()
        )


class AllTicketsWinning(StructuredTicket):
    family = "allwin"
    levels_field = "allwin_levels"
    family_fields = ("allwin_variant", "allwin_ffn_ratio")
    works_in_place = True  # its pruning steps are published one by one inside its folder
    help = "all tickets winning at fixed sizes (iterative importance pruning): good, random or bad"

    def validate_family(self, spec, kinds: list[str]) -> None:
        from ticketlab.experiments.winning_tickets import WinningSpec
        from ticketlab.pruning.structured import check_head_fractions

        check_head_fractions(
            self.levels(spec),
            spec.allwin_ffn_ratio,
            levels_name="allwin_levels",
            ratio_name="allwin_ffn_ratio",
        )
        for task in spec.tasks:  # GLUE tasks only, a known importance variant
            WinningSpec(
                spec.model, task, importance=spec.allwin_variant, recipe=spec.recipe_for(task)
            ).validate()

    def make_masks(self, runner, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        """All tickets winning at the grid's sizes: iterative importance pruning of ``model_dir``
        (its steps resumable beside ``masks``), then good, random and bad masks at every level."""
        from transformers.utils import SAFE_WEIGHTS_NAME

        from ticketlab.experiments.importance import load_task_model
        from ticketlab.experiments.task_probe import TaskProbe
        from ticketlab.experiments.winning_tickets import level_subnetworks
        from ticketlab.training.tasks import get_task

        spec = runner.spec
        levels = self.levels(spec)
        runner.echo(
            f"iterative importance pruning on {task}, seed {seed}: all-winning subnetworks at {levels}"
        )
        masks.parent.mkdir(parents=True, exist_ok=True)
        probe = TaskProbe(
            finetune_spec_for(spec, task, seed),
            lambda: load_task_model(str(model_dir), get_task(task)),
            model_dir / SAFE_WEIGHTS_NAME,
            importance=spec.allwin_variant,
            cache_dir=runner.cache_dir,
            quiet=runner.quiet,
        )
        level_subnetworks(
            RunDirectory(masks.parent, spec),
            probe,
            levels,
            masks,
            ffn_ratio=spec.allwin_ffn_ratio,
            seed=seed,
            source_model=spec.model,
            echo=(lambda _: None) if runner.quiet else runner.echo,
        )


SUPER = [register(SuperTicket(kind, 60 + i)) for i, kind in enumerate(("winning", "random", "losing"))]
ALLWIN = [register(AllTicketsWinning(kind, 70 + i)) for i, kind in enumerate(("good", "random", "bad"))]

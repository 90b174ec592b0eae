"""Running a grid: every ticket and cell, finished ones skipped."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.analysis.aggregate import FULL_MODEL
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.plan import (
    GridStep,
    finetune_spec_for,
    imp_spec_for,
    plan_steps,
    pretrain_loss_path,
    structured_masks_dir,
    tamt_spec_for,
    ticket_path,
)
from ticketlab.experiments.grid.records import collect_records, main_metric_of
from ticketlab.experiments.grid.spec import (
    CONTROLS,
    STRUCTURED_METHODS,
    SUPER_METHODS,
    Cell,
    GridSpec,
)
from ticketlab.experiments.imp import level_name
from ticketlab.experiments.steps import DONE, StepStore
from ticketlab.experiments.store import RunDirectory
from ticketlab.io import read_json, write_json


def open_grid(spec: GridSpec, out: str | Path) -> RunDirectory:
    spec.validate()
    return RunDirectory.open(spec, out)


class GridRunner:
    """Runs (or resumes) every ticket and cell of a grid into its run directory."""

    def __init__(
        self,
        spec: GridSpec,
        out: str | Path,
        *,
        cache_dir: str | None = None,
        quiet: bool = False,
        echo: Callable[[str], None] = print,
    ):
        self.spec = spec
        self.run = open_grid(spec, out)
        self.root = self.run.path
        self.cache_dir = cache_dir
        self.quiet = quiet
        self.echo = echo
        # What this runner computed, by kind of step (the rest of the plan was finished already).
        self.computed: Counter[str] = Counter()
        self._imp_runs_checked: set[Path] = set()
        # How each kind of step of the plan (``plan_steps``) is made.
        self._makers: dict[str, Callable[[Cell], Any]] = {
            "omp": lambda cell: self.omp_ticket(cell.sparsity),
            "random": lambda cell: self.random_ticket(cell.sparsity, cell.seed),
            "tamt": lambda cell: self.tamt_ticket(cell.sparsity),
            "imp": lambda cell: self.imp_run(cell.task, cell.seed),
            "super": self.structured_masks,
            "allwin": self.structured_masks,
            "cell": self.run_cell,
            "pretrain_loss": self.pretrain_loss,
        }

    # -- tickets ----------------------------------------------------------------------------------
    def _pretrained(self) -> nn.Module:
        from ticketlab.models import load_encoder

        return load_encoder(self.spec.model)

    def _path(self, method: str, sparsity: float, seed: int = 0, task: str = "") -> Path:
        path = ticket_path(self.spec, self.root, Cell(task, method, sparsity, seed))
        assert path is not None
        return path

    def omp_ticket(self, sparsity: float) -> Path:
        from ticketlab.masks import save_mask
        from ticketlab.pruning import prune

        path = self._path("omp", sparsity)

        def make(file: Path) -> None:
            mask = prune(
                self._pretrained(),
                "omp",
                sparsity,
                scope=self.spec.scope,
                scheme=self.spec.scheme,
                source_model=self.spec.model,
            )
            save_mask(mask, file)
            self.computed["omp"] += 1

        StepStore(path.parent).run_file(path.name, make)
        return path

    def random_ticket(self, sparsity: float, seed: int) -> Path:
        from ticketlab.masks import load_mask, save_mask
        from ticketlab.pruning import prune

        path = self._path("random", sparsity, seed)

        def make(file: Path) -> None:
            params: dict[str, Any] = {}
            if self.spec.random_variant == "matched":
                params["reference"] = load_mask(self.omp_ticket(sparsity))
            mask = prune(
                self._pretrained(),
                "random",
                sparsity,
                scope=self.spec.scope,
                scheme=self.spec.scheme,
                seed=seed,
                source_model=self.spec.model,
                **params,
            )
            save_mask(mask, file)
            self.computed["random"] += 1

        StepStore(path.parent).run_file(path.name, make)
        return path

    def tamt_ticket(self, sparsity: float) -> Path:
        """The TAMT mask at ``sparsity``, trained once for every task (resumes from its checkpoint)."""
        from ticketlab.experiments.tamt import run_tamt

        path = self._path("tamt", sparsity)
        # TAMT keeps its own books in its folder (a checkpoint to resume from): held, not published.
        with StepStore(path.parent.parent).hold(
            path.parent.name, (path.parent / "results.json").exists
        ) as todo:
            if todo:
                spec = tamt_spec_for(self.spec, sparsity)
                self.echo(f"TAMT-{spec.objective} at {sparsity:.0%}: {spec.steps} steps")
                run_tamt(spec, path.parent, progress=not self.quiet)
                self.computed["tamt"] += 1
        return path

    def imp_run(self, task: str, seed: int) -> Path:
        from ticketlab.experiments.imp_dispatch import run_imp_on_task

        out = self.root / "imp" / task / f"seed{seed}"
        if out in self._imp_runs_checked:
            return out
        spec = imp_spec_for(self.spec, task, seed)
        levels = [level_name(i) for i in range(len(spec.levels) + 1)]
        done_before = sum((out / name / "DONE").is_file() for name in levels)
        if done_before < len(levels):
            self.echo(f"IMP on {task}, seed {seed}: levels {', '.join(f'{lv:.0%}' for lv in spec.levels)}")
        # Always through IMP itself: it verifies its levels, and grows a run whose levels were added.
        run_imp_on_task(spec, out, cache_dir=self.cache_dir, quiet=self.quiet, echo=self.echo)
        self.computed["imp level"] += sum((out / name / "DONE").is_file() for name in levels) - done_before
        self._imp_runs_checked.add(out)
        return out

    def imp_ticket(self, task: str, sparsity: float, seed: int) -> Path:
        self.imp_run(task, seed)
        return self._path("imp", sparsity, seed, task)

    def structured_masks(self, cell: Cell) -> Path:
        """The masks of a structured method for the cell's task and seed: made once per task and
        seed from the fine-tuned model of the full cell (run first if needed)."""
        from ticketlab.experiments.finetune import MODEL_DIR

        masks = structured_masks_dir(self.root, cell.method, cell.task, cell.seed)
        if not masks.is_dir():  # written atomically: it exists only when finished
            full = Cell(cell.task, FULL_MODEL, 0.0, cell.seed)
            self.run_cell(full)
            if not (self.root / "cells" / cell.task / full.name / MODEL_DIR).is_dir():
                # The grid grew by a structured method: its full cell ran without keeping weights.
                self.echo(f"fine-tune {cell.task}: full, seed {cell.seed}, again, to keep its weights")
                StepStore(self.root / "cells" / cell.task).redo(full.name)
                self.run_cell(full)
            make = self._super_masks if cell.method in SUPER_METHODS else self._allwin_masks
            make(cell.task, cell.seed, self.root / "cells" / cell.task / full.name / MODEL_DIR, masks)
        return masks

    def structured_ticket(self, cell: Cell) -> Path:
        """The mask of a super-* or allwin-* cell (its method's masks made first if needed)."""
        masks = self.structured_masks(cell)
        path = ticket_path(self.spec, self.root, cell)
        assert path is not None
        if not path.exists():
            step = masks.parent.relative_to(self.root)
            raise TicketlabError(
                f"the structured masks in {step} were made for other levels than {cell.method} at "
                f"{cell.sparsity:.2f} (the grid grew); redo them with --redo {step}"
            )
        return path

    def _super_masks(self, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        """Super tickets: one-shot nested masks from the importance of ``model_dir`` on train."""
        from ticketlab.experiments.super_tickets import importance_options_for, write_super_masks

        self.echo(f"importance on {task}, seed {seed}: super tickets at {self.spec.super_head_fractions()}")

        def make(tmp: Path) -> None:
            write_super_masks(
                model_dir,
                task,
                tmp,
                options=importance_options_for(self.spec.super_variant, self.spec.recipe_for(task)),
                # Every kind, whichever the grid asks for now: a grid that grows by a kind needs no
                # second scoring of the same model.
                kinds=list(SUPER_METHODS.values()),
                levels=self.spec.super_head_fractions(),
                ffn_ratio=self.spec.super_ffn_ratio,
                seed=seed,
                source_model=self.spec.model,
                tokenizer_source=self.spec.model,
                data_dir=self.spec.data_dir,
                max_length=self.spec.recipe_for(task).get("max_length"),
                cache_dir=self.cache_dir,
                quiet=self.quiet,
            )
            self.computed["super masks"] += 1

        StepStore(masks.parent.parent).run(
            masks.parent.name, make, adopt=lambda folder: (folder / masks.name).is_dir()
        )

    def _allwin_masks(self, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        """All tickets winning at the grid's sizes: iterative importance pruning of ``model_dir``
        (its steps resumable beside ``masks``), then good, random and bad masks at every level."""
        from transformers.utils import SAFE_WEIGHTS_NAME

        from ticketlab.experiments.importance import load_task_model
        from ticketlab.experiments.task_probe import TaskProbe
        from ticketlab.experiments.winning_tickets import level_subnetworks
        from ticketlab.training.tasks import get_task

        levels = self.spec.allwin_head_fractions()
        self.echo(f"iterative importance pruning on {task}, seed {seed}: all-winning subnetworks at {levels}")
        masks.parent.mkdir(parents=True, exist_ok=True)
        probe = TaskProbe(
            finetune_spec_for(self.spec, task, seed),
            lambda: load_task_model(str(model_dir), get_task(task)),
            model_dir / SAFE_WEIGHTS_NAME,
            importance=self.spec.allwin_variant,
            cache_dir=self.cache_dir,
            quiet=self.quiet,
        )
        level_subnetworks(
            RunDirectory(masks.parent, self.spec),
            probe,
            levels,
            masks,
            ffn_ratio=self.spec.allwin_ffn_ratio,
            seed=seed,
            source_model=self.spec.model,
            echo=(lambda _: None) if self.quiet else self.echo,
        )

    def ticket(self, cell: Cell) -> Path | None:
        """The mask file of a cell's ticket, made (or trained) first if it does not exist yet."""
        if cell.method in ("omp", *CONTROLS):
            return self.omp_ticket(cell.sparsity)
        if cell.method == "random":
            return self.random_ticket(cell.sparsity, cell.seed)
        if cell.method == "tamt":
            return self.tamt_ticket(cell.sparsity)
        if cell.method == "imp":
            return self.imp_ticket(cell.task, cell.sparsity, cell.seed)
        if cell.method.startswith("imp@"):
            return self.imp_ticket(cell.method.split("@", 1)[1], cell.sparsity, cell.seed)
        if cell.method in STRUCTURED_METHODS:
            return self.structured_ticket(cell)
        return None

    def pretrain_loss(self, cell: Cell) -> dict[str, Any]:
        """MLM and KD loss of a cell's ticket (measured once, stored beside its mask)."""
        from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss
        from ticketlab.models.mlm_head import HEAD_FILE

        mask_path = self.ticket(cell)
        assert mask_path is not None and self.spec.pretrain_loss is not None
        out = pretrain_loss_path(mask_path)

        def measure(file: Path) -> dict[str, Any]:
            settings = asdict(self.spec.pretrain_loss)
            save_head = None
            if settings["mlm_head"] == "auto":  # build the head once and reuse it for every ticket
                head_dir = self.root / "tickets" / "mlm_head"
                if (head_dir / HEAD_FILE).exists():
                    settings["mlm_head"] = str(head_dir)
                else:
                    save_head = str(head_dir)
            spec = PretrainLossSpec(
                model=self.spec.model, mask=str(mask_path), save_head=save_head, **settings
            )
            self.echo(f"pre-training losses of {mask_path.relative_to(self.root)}")
            results = run_pretrain_loss(spec, progress=not self.quiet)
            write_json(file, results)
            self.computed["pretrain loss"] += 1
            return results

        return StepStore(out.parent).run_file(out.name, measure, load=read_json)

    def measure_pretrain_losses(self) -> None:
        """Only the pre-training-loss steps of the plan (their tickets made first where needed)."""
        for step in plan_steps(self.spec):
            if step.kind == "pretrain_loss":
                self.run_step(step)

    # -- cells ------------------------------------------------------------------------------------
    def cell_spec(self, cell: Cell) -> Any:
        """The fine-tuning spec of a cell (its ticket's path named, not made)."""
        control = cell.method in CONTROLS
        mask_path = ticket_path(self.spec, self.root, cell)
        return finetune_spec_for(
            self.spec,
            cell.task,
            cell.seed,
            mask=str(mask_path) if mask_path else None,
            allow_fingerprint_mismatch=control,
            # The structured methods score the full model's fine-tuned weights.
            save_model=cell.method == FULL_MODEL and any(m in STRUCTURED_METHODS for m in self.spec.methods),
        )

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Fine-tune one cell (a step of ``cells/<task>``), or read back its finished results."""
        from ticketlab.experiments.finetune import RESULTS_FILE

        spec = self.cell_spec(cell)
        cells = StepStore(self.root / "cells" / cell.task)

        def load(folder: Path) -> dict[str, Any]:
            self._check_cell(cell, folder, spec)
            return read_json(folder / RESULTS_FILE)

        return cells.run(
            cell.name,
            lambda tmp: self._fine_tune(cell, spec, tmp),
            load=load,
            required=[RESULTS_FILE],
            # A cell folder from before the step protocol is finished when its results.json is there.
            adopt=lambda folder: (folder / RESULTS_FILE).is_file(),
        )

    def _check_cell(self, cell: Cell, folder: Path, spec: Any) -> None:
        """A finished cell must have been fine-tuned as the grid now asks (a grid that grew keeps
        its cells only where their recipe did not change). The mask's path and whether the model
        was saved do not count: the ticket is named by the cell, and the weights are an extra."""
        from ticketlab.experiments.finetune import SPEC_FILE, FinetuneSpec

        try:
            recorded = FinetuneSpec.from_dict(read_json(folder / SPEC_FILE)).to_dict()
        except (OSError, TypeError, TicketlabError):
            return  # a cell without a readable spec (an old layout): its results stand as they are
        wanted = spec.to_dict()
        ignored = ("mask", "save_model")
        changed = sorted(k for k in wanted if k not in ignored and recorded.get(k) != wanted[k])
        if changed:
            step = folder.relative_to(self.root)
            raise TicketlabError(
                f"cell {step} was fine-tuned with other settings than the grid's now (differs in: "
                f"{', '.join(changed)}); redo it with --redo {step}, or write the grid to another --out"
            )

    def _fine_tune(self, cell: Cell, spec: Any, tmp: Path) -> dict[str, Any]:
        from ticketlab.experiments.finetune import run_finetune
        from ticketlab.masks import load_mask
        from ticketlab.models.controls import permute_layers, reinitialize
        from ticketlab.training.tasks import get_task

        self.computed["cell"] += 1
        mask_path = self.ticket(cell)
        if cell.method == FULL_MODEL and (reused := self._reuse_imp_level_zero(cell, spec, tmp)):
            return reused
        model = mask = None
        record: dict[str, Any] = {}
        if cell.method in CONTROLS:
            from accelerate.utils import set_seed

            set_seed(cell.seed)
            model = get_task(cell.task).build_model(self.spec.model)
            if cell.method == "permuted":
                order = permute_layers(model, seed=cell.seed)
                record["control"] = {"kind": "permuted", "seed": cell.seed, "layer_order": order}
            else:
                reinitialize(model, seed=cell.seed)
                record["control"] = {"kind": "random-init", "seed": cell.seed}
            mask = load_mask(mask_path) if mask_path else None
        self.echo(f"fine-tune {cell.task}: {cell.method} at {cell.sparsity:.0%}, seed {cell.seed}")
        return run_finetune(
            spec, tmp, model=model, mask=mask, record=record, cache_dir=self.cache_dir, quiet=self.quiet
        )

    def _reuse_imp_level_zero(self, cell: Cell, spec: Any, tmp: Path) -> dict[str, Any] | None:
        """The full model's cell when the task's IMP run of the same seed already fine-tuned ``spec``
        as its level 0 (the grid's IMP recipe is the cell recipe): its files, with ``reused_from`` in
        results.json, written into ``tmp`` instead of the same fine-tuning run again; None when it
        did not."""
        from ticketlab.experiments.finetune import LOG_FILE, RESULTS_FILE, SPEC_FILE, same_finished_run

        level = self.root / "imp" / cell.task / f"seed{cell.seed}" / level_name(0)
        if not same_finished_run(level, spec):
            return None
        for path in [level / SPEC_FILE, level / LOG_FILE, *level.glob("*_predictions.tsv")]:
            if path.exists():
                shutil.copyfile(path, tmp / path.name)
        results = read_json(level / RESULTS_FILE)
        results["reused_from"] = str(level.relative_to(self.root))
        write_json(tmp / RESULTS_FILE, results)
        self.echo(
            f"fine-tune {cell.task}: full at 0%, seed {cell.seed}: the same run as IMP's level 0, reused"
        )
        return results

    def run_step(self, step: GridStep) -> Any:
        """Make one step of the plan (its inputs are made first if they are not finished)."""
        return self._makers[step.kind](step.cell)

    # -- the plan, step by step ---------------------------------------------------------------------
    def step_done(self, step: GridStep) -> bool:
        """Whether a step of the plan is finished (by anyone), without making anything."""
        path = self.root / step.key
        if step.kind in ("omp", "random", "pretrain_loss"):
            return path.is_file()
        if step.kind == "tamt":
            return (path / "results.json").is_file()
        if step.kind == "imp":
            levels = len(imp_spec_for(self.spec, step.cell.task, step.cell.seed).levels) + 1
            return all((path / level_name(i) / DONE).is_file() for i in range(levels))
        if step.kind in ("super", "allwin"):
            return structured_masks_dir(self.root, step.cell.method, step.cell.task, step.cell.seed).is_dir()
        return (path / DONE).is_file() or (path / "results.json").is_file()  # a cell

    def step_busy(self, step: GridStep) -> bool:
        """Whether another live process holds the step (for an IMP run: one of its levels)."""
        path = self.root / step.key
        if step.kind == "imp":
            store = StepStore(path)
            names = [c.name[1:].removesuffix(".claim") for c in path.glob(".level_*.claim")]
        else:
            store, names = StepStore(path.parent), [path.name]
        return any((owner := store.owner_of(n)) is not None and not owner.is_stale() for n in names)

    def step_states(self) -> list[dict[str, Any]]:
        """Every step of the plan with its state: done, running (and by whom), ready (its inputs
        are done), or waiting (for the inputs named); what ``ticketlab grid --status`` shows."""
        plan = plan_steps(self.spec)
        done = {step.key: self.step_done(step) for step in plan}
        states = []
        for step in plan:
            entry: dict[str, Any] = {"kind": step.kind, "step": step.key, "inputs": list(step.inputs)}
            if done[step.key]:
                entry["state"] = "done"
            elif self.step_busy(step):
                entry["state"] = "running"
            else:
                waiting = [key for key in step.inputs if not done.get(key, True)]
                entry["state"] = "waiting" if waiting else "ready"
                if waiting:
                    entry["waiting_for"] = waiting
            states.append(entry)
        return states

    def run_all(self) -> dict[str, Any]:
        """Every step of the plan in order (finished ones skipped), then the summary."""
        plan = plan_steps(self.spec)
        computed_steps = 0
        for step in plan:
            before = sum(self.computed.values())
            self.run_step(step)
            computed_steps += sum(self.computed.values()) > before
        return self.summarize(plan, computed_steps, self.computed)

    def summarize(self, plan: list[GridStep], computed_steps: int, computed: Counter[str]) -> dict[str, Any]:
        """The aggregate of every finished result, written to results.json, with what was
        computed (``computed_steps`` of the plan's steps, by kind in ``computed``)."""
        from ticketlab.analysis.aggregate import aggregate, highest_matching_sparsity

        records = collect_records(self.spec, self.root, main_metric_of)
        cells = aggregate(records)
        summary = {
            # Counted, not assumed: a grid that grew (or resumed) says how much it reused.
            "steps": {
                "planned": len(plan),
                "computed": computed_steps,
                "reused": len(plan) - computed_steps,
                "computed_by_kind": dict(computed),
            },
            "cells": [c.to_dict() for c in cells],
            "highest_matching_sparsity": [
                {"task": task, "method": method, "sparsity": sparsity}
                for (task, method), sparsity in highest_matching_sparsity(cells).items()
            ],
        }
        write_json(self.root / "results.json", summary)
        return summary

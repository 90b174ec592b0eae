"""Running a grid: every ticket and cell, finished ones skipped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.analysis.aggregate import FULL_MODEL
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import (
    MLM_HEAD_STEP,
    Cell,
    cell_key,
    cell_step,
    finetune_spec_for,
    pretrain_loss_path,
    pretrain_loss_place,
)
from ticketlab.experiments.grid.methods import active_methods, method_of
from ticketlab.experiments.grid.plan import GridStep, plan_steps, ticket_path
from ticketlab.experiments.grid.records import collect_records, main_metric_of
from ticketlab.experiments.grid.spec import GridSpec
from ticketlab.experiments.grid.step_store import GridStore, digest_of
from ticketlab.experiments.steps import DONE, StepStore
from ticketlab.experiments.store import RunDirectory, non_default_fields
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
        store: str | Path | None = None,
    ):
        self.spec = spec
        self.run = open_grid(spec, out)
        self.root = self.run.path
        # Where the steps live (None: in place, a grid made before stores); see step_store.py.
        self.store = GridStore.open(self.root, store)
        self._plan: dict[str, GridStep] | None = None
        self._digests: dict[str, str] = {}
        self.cache_dir = cache_dir
        self.quiet = quiet
        self.echo = echo
        # What this runner computed, by kind of step (the rest of the plan was finished already).
        self.computed: Counter[str] = Counter()
        # IMP runs verified by this runner (a run is asked for by every cell of its levels).
        self.checked_imp_runs: set[Path] = set()
        # The grid's own kinds of step; every other kind is made by the method named in its cell.
        self._own_steps: dict[str, Callable[[Cell], Any]] = {
            "cell": self.run_cell,
            "pretrain_loss": self.pretrain_loss,
        }

    # -- tickets ----------------------------------------------------------------------------------
    def pretrained(self) -> nn.Module:
        """The grid's pre-trained encoder (loaded afresh: pruning may not change it, but callers
        should not have to know)."""
        from ticketlab.models import load_encoder

        return load_encoder(self.spec.model)

    def ticket(self, cell: Cell) -> Path | None:
        """The mask file of a cell's ticket, made (or trained) first if it does not exist yet."""
        return method_of(cell.method).ticket_of(self, cell)

    def pretrain_loss(self, cell: Cell) -> dict[str, Any]:
        """MLM and KD loss of a cell's ticket (measured once per mask: see ``pretrain_loss_place``)."""
        from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss

        mask_path = self.ticket(cell)
        assert mask_path is not None and self.spec.pretrain_loss is not None
        out = self._pretrain_loss_file(cell)

        def measure(file: Path) -> dict[str, Any]:
            settings = asdict(self.spec.pretrain_loss)
            if settings["mlm_head"] == "auto":  # one head, built once, scores every ticket
                head = self.mlm_head()
                if head is not None:
                    settings["mlm_head"] = str(head)
            spec = PretrainLossSpec(model=self.spec.model, mask=str(mask_path), **settings)
            self.echo(f"pre-training losses of {mask_path.relative_to(self.root)}")
            results = run_pretrain_loss(spec, progress=not self.quiet)
            write_json(file, results)
            self.computed["pretrain loss"] += 1
            return results

        return StepStore(out.parent).run_file(out.name, measure, load=read_json)

    def mlm_head(self) -> Path | None:
        """The MLM head that ``pretrain_loss: {mlm_head: auto}`` builds for a model without one:
        a step (``tickets/mlm_head``, in the store when the grid has one, named by the hash of the
        model and the pre-training-loss settings), so concurrent workers build it once and grids
        sharing a store share it; None when the model has a head of its own."""
        from ticketlab.experiments.pretrain_loss import PretrainLossSpec, build_mlm_head
        from ticketlab.models.mlm_head import HEAD_FILE

        assert self.spec.pretrain_loss is not None
        settings = asdict(self.spec.pretrain_loss)
        place = self.root / "tickets" / MLM_HEAD_STEP
        if self.store is not None:
            determinants = {"model": self.spec.model, **{k: v for k, v in settings.items() if k != "kd_loss"}}
            entry = self.store.entry(MLM_HEAD_STEP, f"tickets/{MLM_HEAD_STEP}", digest_of(determinants))
            self.store.link(place, entry)
        no_head = "no_head_needed.json"

        def build(folder: Path) -> None:
            self.echo("building the MLM head for the pre-training losses (the model has none)")
            spec = PretrainLossSpec(model=self.spec.model, **{**settings, "mlm_head": "auto"})
            if not build_mlm_head(spec, folder, progress=not self.quiet):
                write_json(folder / no_head, {"reason": "the model's checkpoint has an MLM head"})
            self.computed["mlm head"] += 1

        steps = StepStore(place.parent)
        # (a head a grid built before this was a step: its file is there, its DONE marker is not)
        steps.run(place.name, build, adopt=lambda folder: (folder / HEAD_FILE).is_file())
        return None if (place / no_head).exists() else place

    def _pretrain_loss_key(self, cell: Cell) -> str:
        return str(pretrain_loss_path(ticket_path(self.spec, Path("."), cell)))

    def _pretrain_loss_file(self, cell: Cell) -> Path:
        return pretrain_loss_place(self.root, self._pretrain_loss_key(cell), self.store is not None)

    def measure_pretrain_losses(self) -> None:
        """Only the pre-training-loss steps of the plan (their tickets made first where needed)."""
        for step in plan_steps(self.spec):
            if step.kind == "pretrain_loss":
                self.run_step(step)

    # -- cells ------------------------------------------------------------------------------------
    def cell_spec(self, cell: Cell) -> Any:
        """The fine-tuning spec of a cell (its ticket's path named, not made)."""
        mask_path = ticket_path(self.spec, self.root, cell)
        keeps_weights = any(m.needs_full_model_weights for m in active_methods(self.spec))
        return finetune_spec_for(
            self.spec,
            cell.task,
            cell.seed,
            mask=str(mask_path) if mask_path else None,
            allow_fingerprint_mismatch=method_of(cell.method).allows_fingerprint_mismatch,
            # Methods that score the full model's fine-tuned weights need them kept.
            save_model=cell.method == FULL_MODEL and keeps_weights,
        )

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Fine-tune one cell (a step of ``cells/<task>``), or read back its finished results."""
        from ticketlab.experiments.finetune import RESULTS_FILE

        spec = self.cell_spec(cell)
        self.place(cell_step(cell))
        cells = StepStore((self.root / cell_key(cell)).parent)

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

        self.computed["cell"] += 1
        mask_path = self.ticket(cell)
        for method in active_methods(self.spec):
            if (reused := method.reuse_result(self, cell, spec, tmp)) is not None:
                return reused
        record: dict[str, Any] = {}
        model = method_of(cell.method).prepare_model(self, cell, record)
        # A prepared model gets the mask here; otherwise the run loads the spec's mask itself.
        mask = load_mask(mask_path) if model is not None and mask_path else None
        self.echo(f"fine-tune {cell.task}: {cell.method} at {cell.sparsity:.0%}, seed {cell.seed}")
        return run_finetune(
            spec, tmp, model=model, mask=mask, record=record, cache_dir=self.cache_dir, quiet=self.quiet
        )

    def run_step(self, step: GridStep) -> Any:
        """Make one step of the plan (its inputs are made first if they are not finished)."""
        self.place(step)
        if step.kind in self._own_steps:
            return self._own_steps[step.kind](step.cell)
        return method_of(step.cell.method).make(self, step)

    # -- the plan, step by step ---------------------------------------------------------------------
    def step_done(self, step: GridStep) -> bool:
        """Whether a step of the plan is finished (by anyone), without making anything."""
        self.place(step)
        path = self.root / step.key
        if step.kind == "pretrain_loss":
            return self._pretrain_loss_file(step.cell).is_file()
        if step.kind == "cell":
            return (path / DONE).is_file() or (path / "results.json").is_file()
        return method_of(step.cell.method).step_done(self, step)

    def step_busy(self, step: GridStep) -> bool:
        """Whether another live process holds the step (for an IMP run: one of its levels)."""
        return self.step_holder(step) is not None

    def step_holder(self, step: GridStep) -> str | None:
        """Who holds the step now (``pid N on HOST``), None when no live process does."""
        self.place(step)
        if step.kind in self._own_steps:
            path = (
                self._pretrain_loss_file(step.cell) if step.kind == "pretrain_loss" else self.root / step.key
            )
            claims = [(path.parent, path.name)]
        else:
            claims = method_of(step.cell.method).step_claims(self, step)
        for folder, name in claims:
            owner = StepStore(folder).owner_of(name)
            if owner is not None and not owner.is_stale():
                return owner.describe()
        return None

    # -- the store: steps named by what determines them --------------------------------------------
    def steps(self) -> dict[str, GridStep]:
        """The plan's steps by key."""
        if self._plan is None:
            self._plan = {step.key: step for step in plan_steps(self.spec)}
        return self._plan

    def digest(self, step: GridStep) -> str:
        """The hash of everything that determines the step's output, its inputs' digests included
        (a fine-tuning cell's: its own spec and its ticket's digest, not its place in the grid)."""
        if step.key in self._digests:
            return self._digests[step.key]
        if step.kind == "cell":
            ticket = method_of(step.cell.method).ticket_step(self.spec, step.cell)
            # Only the ticket counts: an input that just orders the cell (IMP's run, whose level 0
            # the full cell takes over) does not change what the cell holds.
            inputs = [ticket] if ticket is not None else []
            # Fields at their defaults stay out, so a setting added later renames no step.
            spec = non_default_fields(self.cell_spec(step.cell))
            for unhashed in ("mask", "save_model"):  # the ticket's digest stands for its path
                spec.pop(unhashed, None)
            what: dict[str, Any] = {"finetune": spec, "method": step.cell.method}
        else:
            inputs = [self.steps()[key] for key in step.inputs if key in self.steps()]
            if step.kind == "pretrain_loss":
                what = {
                    "model": self.spec.model,
                    "pretrain_loss": non_default_fields(self.spec.pretrain_loss),
                }
            else:
                what = method_of(step.cell.method).determinants(self.spec, step)
        digest = digest_of({"kind": step.kind, "what": what, "inputs": [self.digest(i) for i in inputs]})
        self._digests[step.key] = digest
        return digest

    def place(self, step: GridStep) -> None:
        """Link the step's readable place in the grid's folder to its entry in the store."""
        if self.store is None:
            return
        if step.kind == "pretrain_loss":
            place = self._pretrain_loss_file(step.cell)
        else:
            place = self.root / step.key
        in_place = step.kind not in self._own_steps and method_of(step.cell.method).works_in_place
        self.store.link(place, self.store.entry(step.kind, step.key, self.digest(step)), folder=in_place)

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

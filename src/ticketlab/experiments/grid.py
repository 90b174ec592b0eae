"""The ticket grid: tickets from several methods x sparsities x tasks x seeds, with the full model.

One spec (YAML or JSON) describes the grid; every cell is a fine-tuning run in its own folder and a
finished cell is skipped on rerun. Tickets are made once and shared by the cells that use them:

- ``full``: the dense pre-trained model (the reference every ticket is compared with);
- ``omp``: one-shot magnitude pruning of the pre-trained weights (task-independent);
- ``random``: random pruning, ``matched`` per matrix to the OMP ticket of the same sparsity
  (default) or uniform over the scope; one ticket per seed;
- ``imp``: iterative magnitude pruning on each task (one IMP run per seed; its levels' fine-tuning
  results are the cells, as in BERT-Tickets);
- ``permuted`` / ``random-init``: BERT-Tickets' controls, the OMP ticket's mask on pre-trained
  weights with whole layers permuted, or on randomly initialised weights.
- ``super-winning`` / ``super-random`` / ``super-losing``: structured super tickets (heads and FFN
  layers), scored on the fine-tuned model of the grid's ``full`` cell of the same task and seed; the
  cell's "sparsity" is the fraction of heads pruned (``super_levels``, default: the sparsities),
  with round(p x ``super_ffn_ratio`` x layers) FFN layers; results.json has the weight sparsity.

Transfer: ``transfer_from`` names source tasks whose IMP tickets (at each sparsity) are also
fine-tuned on every other task of the grid (method ``imp@<source>``). The source ``mlm`` is IMP on
the masked-LM objective (text and training from ``mlm_text``, ``mlm_eval_text``, ``mlm_recipe``):
its task-agnostic ticket is fine-tuned on every task (``imp@mlm``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.analysis.aggregate import FULL_MODEL, ResultRecord
from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import MLM_TASK, ImpSpec, level_name
from ticketlab.experiments.store import RunDirectory, read_json, write_directory
from ticketlab.pruning import validate_sparsity
from ticketlab.pruning.structured import DEFAULT_FFN_RATIO

log = logging.getLogger(__name__)

GRID_METHODS = ("full", "omp", "random", "imp", "permuted", "random-init")

# Structured super tickets in the grid: method -> ticket kind.
SUPER_METHODS = {"super-winning": "winning", "super-random": "random", "super-losing": "losing"}
GRID_METHODS += tuple(SUPER_METHODS)


@dataclass
class GridSpec:
    """A grid of tickets to fine-tune and compare."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    tasks: list[str] = field(metadata={"help": "tasks to fine-tune on (GLUE names, squad)"})
    methods: list[str] = field(
        default_factory=lambda: ["full", "omp", "random", "imp"],
        metadata={"help": f"ticket methods, from {', '.join(GRID_METHODS)}"},
    )
    sparsities: list[float] = field(
        default_factory=lambda: [0.5, 0.7], metadata={"help": "ticket sparsities"}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "fine-tuning seeds"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE-layout data (default: the hub)"})
    scope: str = field(default="encoder", metadata={"help": "weights that can be pruned"})
    scheme: str = field(default="global", metadata={"help": "global or per-matrix ranking"})
    random_variant: str = field(default="matched", metadata={"help": "matched (to OMP per matrix) or global"})
    imp_levels: list[float] | None = field(
        default=None, metadata={"help": "IMP levels (default: 0.1 steps up to the highest sparsity)"}
    )
    imp_head: str = field(default="keep", metadata={"help": "IMP task head at rewinding: keep or reinit"})
    transfer_from: list[str] = field(
        default_factory=list,
        metadata={"help": "source tasks (or mlm) whose IMP tickets are tried on the other tasks"},
    )
    recipe: dict[str, Any] = field(default_factory=dict, metadata={"help": "fine-tuning recipe overrides"})
    # The ``mlm`` transfer source (left out of the run-directory hash while at their defaults).
    mlm_text: str | None = field(
        default=None, metadata={"help": "mlm source: training text file (default: the hub text data set)"}
    )
    mlm_eval_text: str | None = field(
        default=None, metadata={"help": "mlm source: held-out text file (default: a held-out slice)"}
    )
    mlm_recipe: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "mlm source: MLM training overrides (steps, lr, ...)"}
    )
    # Super tickets (fields at their defaults stay out of the run directory's hash).
    super_levels: list[float] | None = field(
        default=None,
        metadata={"help": "super-* methods: fractions of heads to prune (default: the sparsities)"},
    )
    super_variant: str = field(default="liang2021", metadata={"help": "super-* methods: importance variant"})
    super_ffn_ratio: float = field(
        default=DEFAULT_FFN_RATIO,
        metadata={"help": "super-* methods: FFN layers pruned = round(p x ratio x layers)"},
    )

    run_prefix = "grid"

    def validate(self) -> None:
        from ticketlab.experiments.imp import check_recipe

        check_recipe(self.recipe)
        unknown = [m for m in self.methods if m not in GRID_METHODS]
        if unknown:
            raise TicketlabError(
                f"unknown grid method {unknown[0]!r} (choose from {', '.join(GRID_METHODS)})"
            )
        if not self.tasks or not self.seeds:
            raise TicketlabError("a grid needs at least one task and one seed")
        if MLM_TASK in self.tasks:
            raise TicketlabError("mlm is not a fine-tuning task: name it in transfer_from to use its tickets")
        for sparsity in self.sparsities:
            validate_sparsity(sparsity)
        if self.random_variant not in ("matched", "global"):
            raise TicketlabError(f"random_variant must be matched or global, not {self.random_variant!r}")
        missing = [t for t in self.transfer_from if t not in self.tasks and t != MLM_TASK]
        if missing:
            raise TicketlabError(f"transfer source {missing[0]!r} is not one of the grid's tasks (nor mlm)")
        if MLM_TASK in self.transfer_from:
            from ticketlab.experiments.imp_mlm import check_mlm_recipe

            check_mlm_recipe(self.mlm_recipe)
        elif self.mlm_text or self.mlm_eval_text or self.mlm_recipe:
            raise TicketlabError("mlm_text, mlm_eval_text and mlm_recipe need 'mlm' in transfer_from")
        levels = self.levels()
        uses_imp = "imp" in self.methods or bool(self.transfer_from)
        off = [s for s in self.sparsities if uses_imp and not any(abs(s - lv) < 1e-9 for lv in levels)]
        if off:
            raise TicketlabError(f"sparsity {off[0]} is not one of the IMP levels {levels}")
        self._validate_super()

    def _validate_super(self) -> None:
        from ticketlab.experiments.super_tickets import SuperTicketSpec

        if not any(m in SUPER_METHODS for m in self.methods):
            return
        if FULL_MODEL not in self.methods:
            raise TicketlabError("super-* methods need the full method: they score its fine-tuned model")
        kinds = [SUPER_METHODS[m] for m in self.methods if m in SUPER_METHODS]
        SuperTicketSpec(
            self.model,
            self.tasks[0],
            levels=self.super_head_fractions(),
            kinds=kinds,
            variant=self.super_variant,
            ffn_ratio=self.super_ffn_ratio,
            recipe=self.recipe,
        ).validate()

    def super_head_fractions(self) -> list[float]:
        return list(self.super_levels) if self.super_levels else list(self.sparsities)

    def levels(self) -> list[float]:
        if self.imp_levels:
            return list(self.imp_levels)
        top = max(self.sparsities, default=0.0)
        return [round(0.1 * i, 1) for i in range(1, 10) if round(0.1 * i, 1) <= top + 1e-9]

    @classmethod
    def from_file(cls, path: str | Path) -> GridSpec:
        path = Path(path)
        if not path.exists():
            raise TicketlabError(f"grid spec {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as error:  # noqa: BLE001 - any parse error becomes one clear line
            raise TicketlabError(f"{path}: cannot parse the grid spec ({error})") from error
        if not isinstance(data, dict):
            raise TicketlabError(f"{path}: a grid spec is a mapping of fields")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise TicketlabError(f"{path}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            spec = cls(**data)
        except TypeError as error:
            raise TicketlabError(f"{path}: {error}") from error
        spec.validate()
        return spec


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid."""

    task: str
    method: str
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.sparsity:.2f}-seed{self.seed}"


def plan_cells(spec: GridSpec) -> list[Cell]:
    """Every non-IMP fine-tuning run the grid needs (IMP cells come from IMP runs)."""
    cells = []
    for task in spec.tasks:
        for seed in spec.seeds:
            if FULL_MODEL in spec.methods:
                cells.append(Cell(task, FULL_MODEL, 0.0, seed))
            for method in spec.methods:
                if method in (FULL_MODEL, "imp"):
                    continue
                levels = spec.super_head_fractions() if method in SUPER_METHODS else spec.sparsities
                cells += [Cell(task, method, s, seed) for s in levels]
            for source in spec.transfer_from:
                if source != task:
                    cells += [Cell(task, f"imp@{source}", s, seed) for s in spec.sparsities]
    return cells


# finetune_cell(cell, mask_path | None, model_transform | None, out_dir) -> results dict
CellRunner = Callable[[Cell, Path | None, Callable[[nn.Module], None] | None, Path], dict[str, Any]]


def imp_spec_for(spec: GridSpec, task: str, seed: int) -> ImpSpec:
    if task == MLM_TASK:
        data = {"recipe": dict(spec.mlm_recipe), "text": spec.mlm_text, "eval_text": spec.mlm_eval_text}
    else:
        data = {"recipe": dict(spec.recipe), "data_dir": spec.data_dir}
    return ImpSpec(
        model=spec.model,
        task=task,
        levels=spec.levels(),
        head=spec.imp_head,
        scope=spec.scope,
        scheme=spec.scheme,
        seed=seed,
        **data,
    )


def imp_level_for(spec: GridSpec, sparsity: float) -> int:
    return 1 + next(i for i, lv in enumerate(spec.levels()) if abs(lv - sparsity) < 1e-9)


def collect_records(
    spec: GridSpec, root: Path, main_metric: Callable[[str, dict], tuple[str, float]]
) -> list[ResultRecord]:
    """Every finished result of the grid as records (cells and IMP levels)."""
    records = []
    for cell in plan_cells(spec):
        path = root / "cells" / cell.task / cell.name / "results.json"
        if path.exists():
            metric, value = main_metric(cell.task, read_json(path))
            records.append(
                ResultRecord(cell.task, cell.method, cell.sparsity, cell.seed, metric, value, str(path))
            )
    if "imp" in spec.methods:
        for task in spec.tasks:
            for seed in spec.seeds:
                for sparsity in spec.sparsities:
                    path = (
                        root
                        / "imp"
                        / task
                        / f"seed{seed}"
                        / level_name(imp_level_for(spec, sparsity))
                        / "results.json"
                    )
                    if path.exists():
                        metric, value = main_metric(task, read_json(path))
                        records.append(ResultRecord(task, "imp", sparsity, seed, metric, value, str(path)))
    return records


def open_grid(spec: GridSpec, out: str | Path) -> RunDirectory:
    spec.validate()
    return RunDirectory.open(spec, out)


# A correlation over constant predictions is undefined (scipy gives NaN, stored as null). A ticket
# that collapsed to one output carries no signal, so tables count it as 0, as scikit-learn's MCC
# already does for that case; results.json keeps the null.
UNDEFINED_AS_ZERO = ("pearson", "spearman", "matthews")


def main_metric_of(task: str, results: dict[str, Any]) -> tuple[str, float]:
    """The task's main metric and its best dev value (as the papers report) from a results.json."""
    metric = results.get("main_metric")
    best = results.get("best") or {}
    if metric not in best:
        raise TicketlabError(f"results for {task} have no best value of their main metric {metric!r}")
    value = best[metric]
    if value is None or value != value:  # null in JSON, or NaN
        if metric not in UNDEFINED_AS_ZERO:
            raise TicketlabError(f"results for {task} have an undefined {metric}")
        log.warning("%s: %s undefined (constant predictions); counted as 0", task, metric)
        return metric, 0.0
    return metric, float(value)


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

    # -- tickets ----------------------------------------------------------------------------------
    def _pretrained(self) -> nn.Module:
        from ticketlab.models import load_encoder

        return load_encoder(self.spec.model)

    def omp_ticket(self, sparsity: float) -> Path:
        from ticketlab.masks import save_mask
        from ticketlab.pruning import prune

        path = self.root / "tickets" / f"omp-{sparsity:.2f}.safetensors"
        if not path.exists():
            mask = prune(
                self._pretrained(),
                "omp",
                sparsity,
                scope=self.spec.scope,
                scheme=self.spec.scheme,
                source_model=self.spec.model,
            )
            save_mask(mask, path)
        return path

    def random_ticket(self, sparsity: float, seed: int) -> Path:
        from ticketlab.masks import load_mask, save_mask
        from ticketlab.pruning import prune

        path = self.root / "tickets" / f"random-{sparsity:.2f}-seed{seed}.safetensors"
        if not path.exists():
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
            save_mask(mask, path)
        return path

    def imp_run(self, task: str, seed: int) -> Path:
        from ticketlab.experiments.imp import run_imp_on_task

        out = self.root / "imp" / task / f"seed{seed}"
        spec = imp_spec_for(self.spec, task, seed)
        if not (out / "results.json").exists():
            self.echo(f"IMP on {task}, seed {seed}: levels {', '.join(f'{lv:.0%}' for lv in spec.levels)}")
            run_imp_on_task(spec, out, cache_dir=self.cache_dir, quiet=self.quiet, echo=self.echo)
        return out

    def imp_ticket(self, task: str, sparsity: float, seed: int) -> Path:
        return self.imp_run(task, seed) / level_name(imp_level_for(self.spec, sparsity)) / "mask.safetensors"

    def super_ticket(self, task: str, kind: str, level: float, seed: int) -> Path:
        """The super-ticket mask scored on the full cell's fine-tuned model of ``task`` and ``seed``."""
        from ticketlab.experiments.finetune import MODEL_DIR
        from ticketlab.experiments.super_tickets import (
            MASKS_DIR,
            MASKS_SUMMARY,
            importance_options_for,
            mask_file_name,
            write_super_masks,
        )

        folder = self.root / "tickets" / "super" / task / f"seed{seed}"
        if not (folder / MASKS_SUMMARY).exists():
            full = Cell(task, FULL_MODEL, 0.0, seed)
            self.run_cell(full)
            self.echo(
                f"importance on {task}, seed {seed}: super tickets at {self.spec.super_head_fractions()}"
            )
            write_directory(
                folder,
                lambda tmp: write_super_masks(
                    self.root / "cells" / task / full.name / MODEL_DIR,
                    task,
                    tmp,
                    options=importance_options_for(self.spec.super_variant, self.spec.recipe),
                    kinds=[SUPER_METHODS[m] for m in self.spec.methods if m in SUPER_METHODS],
                    levels=self.spec.super_head_fractions(),
                    ffn_ratio=self.spec.super_ffn_ratio,
                    seed=seed,
                    source_model=self.spec.model,
                    tokenizer_source=self.spec.model,
                    data_dir=self.spec.data_dir,
                    max_length=self.spec.recipe.get("max_length"),
                    cache_dir=self.cache_dir,
                    quiet=self.quiet,
                ),
            )
        return folder / MASKS_DIR / mask_file_name(kind, level)

    # -- cells ------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        from ticketlab.experiments.finetune import FinetuneSpec, run_finetune
        from ticketlab.masks import load_mask
        from ticketlab.models.controls import permute_layers, reinitialize
        from ticketlab.training.tasks import get_task

        out = self.root / "cells" / cell.task / cell.name
        if (out / "results.json").exists():
            return read_json(out / "results.json")
        mask_path: Path | None = None
        model = None
        control = cell.method in ("permuted", "random-init")
        if cell.method in ("omp", "permuted", "random-init"):
            mask_path = self.omp_ticket(cell.sparsity)
        elif cell.method == "random":
            mask_path = self.random_ticket(cell.sparsity, cell.seed)
        elif cell.method.startswith("imp@"):
            mask_path = self.imp_ticket(cell.method.split("@", 1)[1], cell.sparsity, cell.seed)
        elif cell.method in SUPER_METHODS:
            mask_path = self.super_ticket(cell.task, SUPER_METHODS[cell.method], cell.sparsity, cell.seed)
        if control:
            from accelerate.utils import set_seed

            set_seed(cell.seed)
            model = get_task(cell.task).build_model(self.spec.model)
            if cell.method == "permuted":
                permute_layers(model, seed=cell.seed)
            else:
                reinitialize(model, seed=cell.seed)
        spec = FinetuneSpec(
            model=self.spec.model,
            task=cell.task,
            data_dir=self.spec.data_dir,
            seed=cell.seed,
            mask=str(mask_path) if mask_path else None,
            allow_fingerprint_mismatch=control,
            # The super-* methods score the full model's fine-tuned weights.
            save_model=cell.method == FULL_MODEL and any(m in SUPER_METHODS for m in self.spec.methods),
            **self.spec.recipe,
        )
        self.echo(f"fine-tune {cell.task}: {cell.method} at {cell.sparsity:.0%}, seed {cell.seed}")
        mask = load_mask(mask_path) if control and mask_path else None
        return run_finetune(spec, out, model=model, mask=mask, cache_dir=self.cache_dir, quiet=self.quiet)

    def run_all(self) -> dict[str, Any]:
        """Every IMP run and cell (finished ones skipped), then the aggregate in results.json."""
        from ticketlab.analysis.aggregate import aggregate, highest_matching_sparsity
        from ticketlab.experiments.store import write_json

        if "imp" in self.spec.methods or self.spec.transfer_from:
            for task in self.spec.tasks:
                if "imp" in self.spec.methods or task in self.spec.transfer_from:
                    for seed in self.spec.seeds:
                        self.imp_run(task, seed)
        for cell in plan_cells(self.spec):
            self.run_cell(cell)
        records = collect_records(self.spec, self.root, main_metric_of)
        cells = aggregate(records)
        summary = {
            "cells": [c.to_dict() for c in cells],
            "highest_matching_sparsity": [
                {"task": task, "method": method, "sparsity": sparsity}
                for (task, method), sparsity in highest_matching_sparsity(cells).items()
            ],
        }
        write_json(self.root / "results.json", summary)
        return summary

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
- ``allwin-good`` / ``allwin-random`` / ``allwin-bad``: all tickets winning's subnetworks at fixed
  sizes (no 0.9 stopping rule: the grid compares methods at the same sizes). Iterative importance
  pruning of the same fine-tuned model, re-scored on dev each step, through every level p
  (``allwin_levels``, default: the sparsities): floor(p x heads) heads and round(p x
  ``allwin_ffn_ratio`` x layers) FFN layers; random and bad of the same size drawn with the seed.
- ``tamt``: task-agnostic mask training (TAMT) on pre-training text, one mask per sparsity
  (task-independent, like OMP), trained as the ``tamt`` section says on the grid's scope and scheme.

With a ``pretrain_loss`` section, every unstructured ticket's MLM and distillation loss on held-out
text is measured once and stored beside its mask (``<mask>.pretrain_loss.json``), for the report's
plot of pre-training loss against downstream score.

Transfer: ``transfer_from`` names source tasks whose IMP tickets (at each sparsity) are also
fine-tuned on every other task of the grid (method ``imp@<source>``). The source ``mlm`` is IMP on
the masked-LM objective (text and training from ``mlm_text``, ``mlm_eval_text``, ``mlm_recipe``):
its task-agnostic ticket is fine-tuned on every task (``imp@mlm``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.analysis.aggregate import FULL_MODEL, ResultRecord
from ticketlab.analysis.pretrain_correlation import TicketLoss
from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import MLM_TASK, ImpSpec, level_name
from ticketlab.experiments.pretrain_loss import PretrainLossSettings
from ticketlab.experiments.store import RunDirectory, settings_from_dict
from ticketlab.experiments.tamt import TamtSettings, TamtSpec
from ticketlab.io import read_json, write_directory, write_json
from ticketlab.pruning import validate_sparsity
from ticketlab.pruning.structured import DEFAULT_FFN_RATIO

log = logging.getLogger(__name__)

GRID_METHODS = ("full", "omp", "random", "imp", "tamt", "permuted", "random-init")

# Structured super tickets in the grid: method -> ticket kind.
SUPER_METHODS = {"super-winning": "winning", "super-random": "random", "super-losing": "losing"}
# All tickets winning in the grid: method -> subnetwork.
ALLWIN_METHODS = {"allwin-good": "good", "allwin-random": "random", "allwin-bad": "bad"}
GRID_METHODS += tuple(SUPER_METHODS) + tuple(ALLWIN_METHODS)
# Structured tickets (heads and FFN layers) found on the full cell's fine-tuned model.
STRUCTURED_METHODS = (*SUPER_METHODS, *ALLWIN_METHODS)
# The controls' tickets are masks on other weights than the pre-trained ones.
CONTROLS = ("permuted", "random-init")
# No pre-training loss for these: the full model (no mask), the controls (their weights are not the
# ones the loss compares with) and the structured tickets (heads and FFN layers, scored on a
# fine-tuned model).
NO_PRETRAIN_LOSS = (FULL_MODEL, *CONTROLS, *STRUCTURED_METHODS)


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
    # All tickets winning (fields at their defaults stay out of the run directory's hash).
    allwin_levels: list[float] | None = field(
        default=None,
        metadata={"help": "allwin-* methods: fractions of heads to prune (default: the sparsities)"},
    )
    allwin_variant: str = field(
        default="prasanna2020",
        metadata={"help": "allwin-* methods: importance variant, re-scored on dev at every pruning step"},
    )
    allwin_ffn_ratio: float = field(
        default=DEFAULT_FFN_RATIO,
        metadata={"help": "allwin-* methods: FFN layers pruned = round(p x ratio x layers), as super-*"},
    )

    task_recipes: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "per-task recipe overrides on top of recipe, e.g. {cola: {max_train_samples: 2000}}"
        },
    )
    tamt: TamtSettings | None = field(
        default=None,
        metadata={
            "help": "settings of method tamt (objective, text, steps, lr, batch_size, max_sequences, "
            "init, ...: the fields of `ticketlab tamt` but model, sparsity, scope and scheme, which the "
            "grid sets); objective kd by default"
        },
    )
    pretrain_loss: PretrainLossSettings | None = field(
        default=None,
        metadata={
            "help": "measure every ticket's MLM and KD loss on this held-out text (text, max_sequences, "
            "max_length, kd_loss, mlm_head, ...: the fields of `ticketlab pretrain-loss`)"
        },
    )

    run_prefix = "grid"

    def __post_init__(self) -> None:
        # Sections read from a spec file (or spec.json) arrive as mappings.
        if self.tamt is not None:
            self.tamt = settings_from_dict(TamtSettings, self.tamt, "tamt")
        if self.pretrain_loss is not None:
            self.pretrain_loss = settings_from_dict(PretrainLossSettings, self.pretrain_loss, "pretrain_loss")

    def validate(self) -> None:
        from ticketlab.experiments.imp import check_recipe

        check_recipe(self.recipe)
        for task, overrides in self.task_recipes.items():
            if task not in self.tasks:
                raise TicketlabError(f"task_recipes names {task!r}, which is not one of the grid's tasks")
            if not isinstance(overrides, dict):
                raise TicketlabError(f"task_recipes.{task} must be a mapping of recipe fields")
            check_recipe(overrides)
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
        self._validate_structured()
        if "tamt" in self.methods and self.tamt is None:
            raise TicketlabError(
                "method tamt needs a tamt section saying what to train on, e.g. "
                "tamt: {text: FILE, steps: N} (objective kd by default)"
            )
        if self.tamt is not None:
            self.tamt.validate()
            _check_file(self.tamt.text, "tamt.text")
        if self.pretrain_loss is not None:
            self.pretrain_loss.validate()
            _check_file(self.pretrain_loss.text, "pretrain_loss.text")
            _check_file(self.pretrain_loss.head_text, "pretrain_loss.head_text")

    def recipe_for(self, task: str) -> dict[str, Any]:
        """The fine-tuning recipe of ``task``: ``recipe`` updated with its ``task_recipes`` entry."""
        return {**self.recipe, **self.task_recipes.get(task, {})}

    def _validate_structured(self) -> None:
        from ticketlab.experiments.super_tickets import SuperTicketSpec
        from ticketlab.experiments.winning_tickets import WinningSpec
        from ticketlab.pruning.structured import check_head_fractions

        for family, methods in (("super-*", SUPER_METHODS), ("allwin-*", ALLWIN_METHODS)):
            if any(m in methods for m in self.methods) and FULL_MODEL not in self.methods:
                raise TicketlabError(
                    f"{family} methods need the full method: they score its fine-tuned model"
                )
        kinds = [SUPER_METHODS[m] for m in self.methods if m in SUPER_METHODS]
        if kinds:
            SuperTicketSpec(
                self.model,
                self.tasks[0],
                levels=self.super_head_fractions(),
                kinds=kinds,
                variant=self.super_variant,
                ffn_ratio=self.super_ffn_ratio,
                recipe=self.recipe,
            ).validate()
        if any(m in ALLWIN_METHODS for m in self.methods):
            check_head_fractions(
                self.allwin_head_fractions(),
                self.allwin_ffn_ratio,
                levels_name="allwin_levels",
                ratio_name="allwin_ffn_ratio",
            )
            for task in self.tasks:  # GLUE tasks only, a known importance variant
                WinningSpec(
                    self.model, task, importance=self.allwin_variant, recipe=self.recipe_for(task)
                ).validate()

    def super_head_fractions(self) -> list[float]:
        return list(self.super_levels) if self.super_levels else list(self.sparsities)

    def allwin_head_fractions(self) -> list[float]:
        return list(self.allwin_levels) if self.allwin_levels else list(self.sparsities)

    def levels_of(self, method: str) -> list[float]:
        """The column values of a method's cells: fractions of heads for structured methods."""
        if method in SUPER_METHODS:
            return self.super_head_fractions()
        if method in ALLWIN_METHODS:
            return self.allwin_head_fractions()
        return list(self.sparsities)

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


def _check_file(path: str | None, setting: str) -> None:
    """Fail before hours of fine-tuning, not after, when a text file is missing."""
    if path is not None and not Path(path).is_file():
        raise TicketlabError(f"{setting}: {path} is not a file")


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
                cells += [Cell(task, method, s, seed) for s in spec.levels_of(method)]
            for source in spec.transfer_from:
                if source != task:
                    cells += [Cell(task, f"imp@{source}", s, seed) for s in spec.sparsities]
    return cells


def ticket_cells(spec: GridSpec) -> list[Cell]:
    """Every (task, method, sparsity, seed) with a result: the planned cells and IMP's levels."""
    cells = plan_cells(spec)
    if "imp" in spec.methods:
        cells += [
            Cell(task, "imp", sparsity, seed)
            for task in spec.tasks
            for seed in spec.seeds
            for sparsity in spec.sparsities
        ]
    return cells


def result_cells(spec: GridSpec) -> list[Cell]:
    """Every cell with a result to report: the ticket cells, and IMP at **every** level of its runs
    (fine-tuned anyway as the IMP search, so the table has IMP's whole curve, as BERT-Tickets')."""
    cells = ticket_cells(spec)
    if "imp" in spec.methods:
        extra = [lv for lv in spec.levels() if not any(abs(lv - s) < 1e-9 for s in spec.sparsities)]
        cells += [
            Cell(task, "imp", level, seed) for task in spec.tasks for seed in spec.seeds for level in extra
        ]
    return cells


def ticket_path(spec: GridSpec, root: Path, cell: Cell) -> Path | None:
    """Where the mask of a cell's ticket is (or will be); None for the full model."""
    tickets = root / "tickets"
    if cell.method == FULL_MODEL:
        return None
    if cell.method in ("omp", *CONTROLS):
        return tickets / f"omp-{cell.sparsity:.2f}.safetensors"
    if cell.method == "random":
        return tickets / f"random-{cell.sparsity:.2f}-seed{cell.seed}.safetensors"
    if cell.method == "tamt":
        return tickets / f"tamt-{cell.sparsity:.2f}" / "mask.safetensors"
    if cell.method == "imp" or cell.method.startswith("imp@"):
        source = cell.task if cell.method == "imp" else cell.method.split("@", 1)[1]
        level = level_name(imp_level_for(spec, cell.sparsity))
        return root / "imp" / source / f"seed{cell.seed}" / level / "mask.safetensors"
    if cell.method in STRUCTURED_METHODS:
        from ticketlab.experiments.super_tickets import mask_file_name

        folder = structured_masks_dir(root, cell.method, cell.task, cell.seed)
        kind = SUPER_METHODS.get(cell.method) or ALLWIN_METHODS[cell.method]
        return folder / mask_file_name(kind, cell.sparsity)
    raise TicketlabError(f"unknown grid method {cell.method!r}")


def structured_masks_dir(root: Path, method: str, task: str, seed: int) -> Path:
    """The folder of a structured method's masks for ``task`` and ``seed``, which appears only when
    finished: ``tickets/super/<task>/seed<S>/masks`` (the scores and ``masks.json`` beside it) or
    ``tickets/allwin/<task>/seed<S>/masks`` (``masks.json`` inside, the pruning steps beside it)."""
    from ticketlab.experiments.super_tickets import MASKS_DIR

    family = "super" if method in SUPER_METHODS else "allwin"
    return root / "tickets" / family / task / f"seed{seed}" / MASKS_DIR


def finetune_spec_for(spec: GridSpec, task: str, seed: int, **extra: Any):
    """The grid's fine-tuning run of ``task`` with ``seed`` (``extra``: mask, save_model, ...)."""
    from ticketlab.experiments.finetune import FinetuneSpec

    return FinetuneSpec(
        model=spec.model, task=task, data_dir=spec.data_dir, seed=seed, **extra, **spec.recipe_for(task)
    )


def pretrain_loss_path(mask_path: Path) -> Path:
    """The pre-training losses of a ticket, beside its mask: ``<mask>.pretrain_loss.json``."""
    return mask_path.with_name(mask_path.name.removesuffix(".safetensors") + ".pretrain_loss.json")


def tamt_spec_for(spec: GridSpec, sparsity: float) -> TamtSpec:
    """The TAMT run of the grid's ``tamt`` ticket at ``sparsity`` (the grid's model, scope, scheme)."""
    if spec.tamt is None:
        raise TicketlabError("the grid has no tamt section")
    return TamtSpec(
        model=spec.model, sparsity=sparsity, scope=spec.scope, scheme=spec.scheme, **asdict(spec.tamt)
    )


# finetune_cell(cell, mask_path | None, model_transform | None, out_dir) -> results dict
CellRunner = Callable[[Cell, Path | None, Callable[[nn.Module], None] | None, Path], dict[str, Any]]


def imp_spec_for(spec: GridSpec, task: str, seed: int) -> ImpSpec:
    if task == MLM_TASK:
        data = {"recipe": dict(spec.mlm_recipe), "text": spec.mlm_text, "eval_text": spec.mlm_eval_text}
    else:
        data = {"recipe": spec.recipe_for(task), "data_dir": spec.data_dir}
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
    """Every finished result of the grid as records (cells and all of IMP's levels)."""
    records = []
    for cell in result_cells(spec):
        if cell.method == "imp":  # IMP's levels are the cells, fine-tuned inside the IMP run
            path = ticket_path(spec, root, cell).parent / "results.json"
        else:
            path = root / "cells" / cell.task / cell.name / "results.json"
        if path.exists():
            metric, value = main_metric(cell.task, read_json(path))
            records.append(
                ResultRecord(cell.task, cell.method, cell.sparsity, cell.seed, metric, value, str(path))
            )
    return records


def ticket_files(spec: GridSpec, root: Path) -> list[Path]:
    """Every ticket mask of the grid that exists, once each (OMP, random, TAMT, IMP levels)."""
    paths = {ticket_path(spec, root, cell) for cell in ticket_cells(spec)}
    return sorted(p for p in paths if p is not None and p.exists())


def collect_pretrain_losses(spec: GridSpec, root: Path) -> list[TicketLoss]:
    """The measured pre-training losses of the mask of every result (controls excluded)."""
    losses = []
    for cell in ticket_cells(spec):
        if cell.method in NO_PRETRAIN_LOSS:
            continue
        path = pretrain_loss_path(ticket_path(spec, root, cell))
        if path.exists():
            measured = read_json(path)
            losses.append(
                TicketLoss(
                    cell.task,
                    cell.method,
                    cell.sparsity,
                    cell.seed,
                    kd_loss=float(measured["kd_loss"]),
                    kd_kind=measured["kd_loss_kind"],
                    mlm_loss=measured.get("mlm_loss"),
                    mlm_reason=measured.get("mlm_loss_reason"),
                )
            )
    return losses


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

    def _path(self, method: str, sparsity: float, seed: int = 0, task: str = "") -> Path:
        path = ticket_path(self.spec, self.root, Cell(task, method, sparsity, seed))
        assert path is not None
        return path

    def omp_ticket(self, sparsity: float) -> Path:
        from ticketlab.masks import save_mask
        from ticketlab.pruning import prune

        path = self._path("omp", sparsity)
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

        path = self._path("random", sparsity, seed)
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

    def tamt_ticket(self, sparsity: float) -> Path:
        """The TAMT mask at ``sparsity``, trained once for every task (resumes from its checkpoint)."""
        from ticketlab.experiments.tamt import run_tamt

        path = self._path("tamt", sparsity)
        if not (path.parent / "results.json").exists():
            spec = tamt_spec_for(self.spec, sparsity)
            self.echo(f"TAMT-{spec.objective} at {sparsity:.0%}: {spec.steps} steps")
            run_tamt(spec, path.parent, progress=not self.quiet)
        return path

    def imp_run(self, task: str, seed: int) -> Path:
        from ticketlab.experiments.imp_dispatch import run_imp_on_task

        out = self.root / "imp" / task / f"seed{seed}"
        spec = imp_spec_for(self.spec, task, seed)
        if not (out / "results.json").exists():
            self.echo(f"IMP on {task}, seed {seed}: levels {', '.join(f'{lv:.0%}' for lv in spec.levels)}")
            run_imp_on_task(spec, out, cache_dir=self.cache_dir, quiet=self.quiet, echo=self.echo)
        return out

    def imp_ticket(self, task: str, sparsity: float, seed: int) -> Path:
        self.imp_run(task, seed)
        return self._path("imp", sparsity, seed, task)

    def structured_ticket(self, cell: Cell) -> Path:
        """The mask of a super-* or allwin-* cell: its method's masks are made once per task and seed
        from the fine-tuned model of the full cell (run first if needed)."""
        from ticketlab.experiments.finetune import MODEL_DIR

        masks = structured_masks_dir(self.root, cell.method, cell.task, cell.seed)
        if not masks.is_dir():  # written atomically: it exists only when finished
            full = Cell(cell.task, FULL_MODEL, 0.0, cell.seed)
            self.run_cell(full)
            make = self._super_masks if cell.method in SUPER_METHODS else self._allwin_masks
            make(cell.task, cell.seed, self.root / "cells" / cell.task / full.name / MODEL_DIR, masks)
        path = ticket_path(self.spec, self.root, cell)
        assert path is not None
        return path

    def _super_masks(self, task: str, seed: int, model_dir: Path, masks: Path) -> None:
        """Super tickets: one-shot nested masks from the importance of ``model_dir`` on train."""
        from ticketlab.experiments.super_tickets import importance_options_for, write_super_masks

        self.echo(f"importance on {task}, seed {seed}: super tickets at {self.spec.super_head_fractions()}")
        write_directory(
            masks.parent,
            lambda tmp: write_super_masks(
                model_dir,
                task,
                tmp,
                options=importance_options_for(self.spec.super_variant, self.spec.recipe_for(task)),
                kinds=[SUPER_METHODS[m] for m in self.spec.methods if m in SUPER_METHODS],
                levels=self.spec.super_head_fractions(),
                ffn_ratio=self.spec.super_ffn_ratio,
                seed=seed,
                source_model=self.spec.model,
                tokenizer_source=self.spec.model,
                data_dir=self.spec.data_dir,
                max_length=self.spec.recipe_for(task).get("max_length"),
                cache_dir=self.cache_dir,
                quiet=self.quiet,
            ),
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

    def pretrain_loss(self, mask_path: Path) -> dict[str, Any]:
        """MLM and KD loss of one ticket (measured once, stored beside its mask)."""
        from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss
        from ticketlab.models.mlm_head import HEAD_FILE

        out = pretrain_loss_path(mask_path)
        if out.exists():
            return read_json(out)
        assert self.spec.pretrain_loss is not None
        settings = asdict(self.spec.pretrain_loss)
        save_head = None
        if settings["mlm_head"] == "auto":  # build the head once and reuse it for every ticket
            head_dir = self.root / "tickets" / "mlm_head"
            if (head_dir / HEAD_FILE).exists():
                settings["mlm_head"] = str(head_dir)
            else:
                save_head = str(head_dir)
        spec = PretrainLossSpec(model=self.spec.model, mask=str(mask_path), save_head=save_head, **settings)
        results = run_pretrain_loss(spec, progress=not self.quiet)
        write_json(out, results)
        return results

    def measure_pretrain_losses(self) -> None:
        """Pre-training losses of every unstructured ticket of the grid (see ``NO_PRETRAIN_LOSS``)."""
        if self.spec.pretrain_loss is None:
            return
        paths = {}
        for cell in ticket_cells(self.spec):
            if cell.method not in NO_PRETRAIN_LOSS:
                paths.setdefault(ticket_path(self.spec, self.root, cell), cell)
        todo = [p for p in paths if not pretrain_loss_path(p).exists()]
        if todo:
            self.echo(f"pre-training losses of {len(todo)} tickets")
        for path in todo:
            self.ticket(paths[path])
            self.pretrain_loss(path)

    # -- cells ------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        from ticketlab.experiments.finetune import run_finetune
        from ticketlab.masks import load_mask
        from ticketlab.models.controls import permute_layers, reinitialize
        from ticketlab.training.tasks import get_task

        out = self.root / "cells" / cell.task / cell.name
        if (out / "results.json").exists():
            return read_json(out / "results.json")
        model = None
        control = cell.method in CONTROLS
        mask_path = self.ticket(cell)
        if control:
            from accelerate.utils import set_seed

            set_seed(cell.seed)
            model = get_task(cell.task).build_model(self.spec.model)
            if cell.method == "permuted":
                permute_layers(model, seed=cell.seed)
            else:
                reinitialize(model, seed=cell.seed)
        spec = finetune_spec_for(
            self.spec,
            cell.task,
            cell.seed,
            mask=str(mask_path) if mask_path else None,
            allow_fingerprint_mismatch=control,
            # The structured methods score the full model's fine-tuned weights.
            save_model=cell.method == FULL_MODEL and any(m in STRUCTURED_METHODS for m in self.spec.methods),
        )
        if cell.method == FULL_MODEL and (reused := self._reuse_imp_level_zero(cell, spec, out)):
            return reused
        self.echo(f"fine-tune {cell.task}: {cell.method} at {cell.sparsity:.0%}, seed {cell.seed}")
        mask = load_mask(mask_path) if control and mask_path else None
        return run_finetune(spec, out, model=model, mask=mask, cache_dir=self.cache_dir, quiet=self.quiet)

    def _reuse_imp_level_zero(self, cell: Cell, spec: Any, out: Path) -> dict[str, Any] | None:
        """The full model's cell when the task's IMP run of the same seed already fine-tuned ``spec``
        as its level 0 (the grid's IMP recipe is the cell recipe): its files, with ``reused_from`` in
        results.json, instead of the same fine-tuning run again; None when it did not."""
        from ticketlab.experiments.finetune import LOG_FILE, RESULTS_FILE, SPEC_FILE, same_finished_run

        level = self.root / "imp" / cell.task / f"seed{cell.seed}" / level_name(0)
        if not same_finished_run(level, spec):
            return None

        def copy(tmp: Path) -> dict[str, Any]:
            for path in [level / SPEC_FILE, level / LOG_FILE, *level.glob("*_predictions.tsv")]:
                if path.exists():
                    shutil.copyfile(path, tmp / path.name)
            results = read_json(level / RESULTS_FILE)
            results["reused_from"] = str(level.relative_to(self.root))
            write_json(tmp / RESULTS_FILE, results)
            return results

        self.echo(
            f"fine-tune {cell.task}: full at 0%, seed {cell.seed}: the same run as IMP's level 0, reused"
        )
        return write_directory(out, copy)

    def run_all(self) -> dict[str, Any]:
        """Every IMP run and cell (finished ones skipped), then the aggregate in results.json."""
        from ticketlab.analysis.aggregate import aggregate, highest_matching_sparsity

        if "imp" in self.spec.methods or self.spec.transfer_from:
            for task in self.spec.tasks:
                if "imp" in self.spec.methods or task in self.spec.transfer_from:
                    for seed in self.spec.seeds:
                        self.imp_run(task, seed)
        for cell in plan_cells(self.spec):
            self.run_cell(cell)
        self.measure_pretrain_losses()
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

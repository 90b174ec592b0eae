"""The grid's spec: which tasks, methods, sparsities and seeds, and the settings of each method."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.analysis.aggregate import FULL_MODEL
from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import MLM_TASK
from ticketlab.experiments.pretrain_loss import PretrainLossSettings
from ticketlab.experiments.tamt import TamtSettings, with_new_run_defaults
from ticketlab.pruning import validate_sparsity
from ticketlab.pruning.structured import DEFAULT_FFN_RATIO
from ticketlab.specs import check_seed, from_mapping, refuse_duplicates

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
            "grid sets); objective kd by default; optimizer bertadam in a grid file, adamw when "
            "unset in code (what grids made before the setting ran)"
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
    # A grid is a set of steps, each named by what determines it: these fields only add or drop
    # steps, so a grid directory may grow (or shrink) in them and keep every finished step.
    growable_fields = (
        "tasks",
        "methods",
        "sparsities",
        "seeds",
        "imp_levels",
        "transfer_from",
        "super_levels",
        "allwin_levels",
        "task_recipes",
    )

    def __post_init__(self) -> None:
        # Sections read from a spec file (or spec.json) arrive as mappings.
        if self.tamt is not None:
            self.tamt = from_mapping(TamtSettings, self.tamt, "tamt")
        if self.pretrain_loss is not None:
            self.pretrain_loss = from_mapping(PretrainLossSettings, self.pretrain_loss, "pretrain_loss")

    def validate(self) -> None:
        from ticketlab.experiments.imp import check_recipe
        from ticketlab.training.tasks import get_task

        if not self.tasks or not self.seeds:
            raise TicketlabError("a grid needs at least one task and one seed")
        for i, seed in enumerate(self.seeds):
            check_seed(seed, f"seeds[{i}]")
        refuse_duplicates(self.seeds, "seeds")
        refuse_duplicates(self.tasks, "tasks", key=lambda t: t if t == MLM_TASK else get_task(t).name)
        for name in ("methods", "sparsities", "imp_levels", "transfer_from"):  # levels: check_head_fractions
            refuse_duplicates(getattr(self, name) or [], name)
        check_recipe(self.recipe)
        for task, overrides in self.task_recipes.items():
            if task not in self.tasks:
                raise TicketlabError(f"task_recipes names {task!r}, which is not one of the grid's tasks")
            check_recipe(overrides, f"task_recipes.{task}")
        unknown = [m for m in self.methods if m not in GRID_METHODS]
        if unknown:
            raise TicketlabError(
                f"unknown grid method {unknown[0]!r} (choose from {', '.join(GRID_METHODS)})"
            )
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
        if isinstance(data.get("tamt"), dict):
            # A file the user wrote: its tamt section gets the defaults of new runs (bertadam),
            # which therefore count in the hash (spec.json, read back as GridSpec(**...), keeps its own).
            data["tamt"] = with_new_run_defaults(data["tamt"])
        try:
            spec = from_mapping(cls, data, "")
            spec.validate()
        except TicketlabError as error:
            raise TicketlabError(f"{path}: {error}") from None
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

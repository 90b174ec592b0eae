"""The grid's spec: which tasks, methods, sparsities and seeds, and the settings of each method."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid.layout import Cell
from ticketlab.experiments.grid.methods import active_methods, method_of, registered
from ticketlab.experiments.imp import MLM_TASK
from ticketlab.experiments.pretrain_loss import PretrainLossSettings
from ticketlab.experiments.tamt import TamtSettings, with_new_run_defaults
from ticketlab.pruning import PROTOCOLS, validate_sparsity
from ticketlab.pruning.structured import DEFAULT_FFN_RATIO
from ticketlab.specs import check_seed, from_mapping, refuse_duplicates

__all__ = ["Cell", "GridSpec", "grid_method_names"]


def grid_method_names() -> tuple[str, ...]:
    """The methods a grid's ``methods`` may name (the registry's, ``ticketlab.experiments.grid.methods``)."""
    return tuple(m.name for m in registered() if m.named_in_methods)


@dataclass
class GridSpec:
    """A grid of tickets to fine-tune and compare."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    tasks: list[str] = field(metadata={"help": "tasks to fine-tune on (GLUE names, squad)"})
    methods: list[str] = field(
        default_factory=lambda: ["full", "omp", "random", "imp"],
        metadata={"help": "ticket methods: the registered grid methods (docs/experiments.md lists them)"},
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
    method_settings: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "settings of registered methods that declare a settings type, by method name "
            "(e.g. {my-method: {alpha: 0.5}}); each parsed by its method"
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
        known = grid_method_names()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise TicketlabError(f"unknown grid method {unknown[0]!r} (choose from {', '.join(known)})")
        if MLM_TASK in self.tasks:
            raise TicketlabError("mlm is not a fine-tuning task: name it in transfer_from to use its tickets")
        for sparsity in self.sparsities:
            validate_sparsity(sparsity)
        uses_mlm_settings = bool(self.mlm_text or self.mlm_eval_text or self.mlm_recipe)
        if uses_mlm_settings and MLM_TASK not in self.transfer_from:
            raise TicketlabError("mlm_text, mlm_eval_text and mlm_recipe need 'mlm' in transfer_from")
        active = active_methods(self)
        stray = [name for name in self.method_settings if name not in {m.name for m in active}]
        if stray:
            raise TicketlabError(
                f"method_settings names {stray[0]!r}, which is not one of the grid's methods"
            )
        for method in active:
            method.settings(self)  # parsed (and refused) before anything runs
            method.validate(self)
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

    def levels_of(self, method: str) -> list[float]:
        """The column values of a method's cells: fractions of heads for structured methods."""
        return method_of(method).levels(self)

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
        if "protocol" in data:
            try:
                data = _with_protocol(data)
            except TicketlabError as error:
                raise TicketlabError(f"{path}: {error}") from None
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


def _with_protocol(data: dict[str, Any]) -> dict[str, Any]:
    """A file's ``protocol: chen2020|liu2022`` as the scope and scheme it stands for.

    As ``--protocol`` on the command line: an explicit ``scope`` or ``scheme`` beside it wins. The
    key is a shorthand of the file, not a field, so a grid's hash (and run directory) is that of the
    scope and scheme it sets, written out or not.
    """
    data = dict(data)
    name = data.pop("protocol")
    if name not in PROTOCOLS:
        raise TicketlabError(f"protocol: {name!r} is not one of {', '.join(sorted(PROTOCOLS))}")
    for key in ("scope", "scheme"):
        data.setdefault(key, PROTOCOLS[name][key])
    return data


def _check_file(path: str | None, setting: str) -> None:
    """Fail before hours of fine-tuning, not after, when a text file is missing."""
    if path is not None and not Path(path).is_file():
        raise TicketlabError(f"{setting}: {path} is not a file")

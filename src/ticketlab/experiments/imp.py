"""Iterative magnitude pruning with rewinding (BERT-Tickets), resumable level by level.

Level 0 trains the full model. Each later level starts from the pre-trained weights (rewinding),
holds the level's mask, trains, and then prunes the *trained* weights by global magnitude inside the
mask until the next level's total sparsity is reached. A level's folder appears only when the level
finished, so a killed run resumes at the first unfinished level and, with the same seed, ends with
masks bit-identical to an uninterrupted run.

Differences from the original code, on purpose: by default the learning rate decays to zero
within each level (the original re-created AdamW and its schedule at every level too, but with the
whole run's length as the horizon, so each level's rate barely decays: ``lr_horizon="run"`` does
that), and pruning never goes to 100%: it stops at the last level asked for.
"""

from __future__ import annotations

import copy
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.experiments.finetune import RECIPE_FIELDS
from ticketlab.experiments.store import RunDirectory
from ticketlab.io import read_json, write_json
from ticketlab.masks import UnstructuredMask, load_mask, save_mask
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.pruning import prune, validate_sparsity
from ticketlab.specs import check_value
from ticketlab.training.distributed import broadcast_from_first
from ticketlab.training.settings import setting

# train(model, mask, seed, out_dir) -> results dict. It trains ``model`` in place (mask held) and
# may write its own files (logs, predictions) into ``out_dir``.
TrainFunction = Callable[[nn.Module, UnstructuredMask | None, int, Path], dict[str, Any]]

MLM_TASK = "mlm"  # the task name of IMP on the masked-LM objective (experiments/imp_mlm.py)
LR_HORIZONS = ("level", "run")


@dataclass
class ImpSpec:
    """What an IMP run does. The run directory's identity is the hash of the non-default fields."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    task: str = field(metadata={"help": "GLUE task, squad, or mlm (the masked-LM objective on text)"})
    data_dir: str | None = field(default=None, metadata={"help": "local task data (default: the hub)"})
    levels: list[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)],
        metadata={"help": "total sparsity after each pruning step, increasing, each in (0, 1)"},
    )
    head: str = field(
        default="keep",
        metadata={
            "help": "task head at rewinding: keep (the paper) or reinit",
            "choices": ("keep", "reinit"),
        },
    )
    scope: str = field(default="encoder", metadata={"help": "weights that can be pruned"})
    scheme: str = field(default="global", metadata={"help": "global ranking (the paper) or per-matrix"})
    seed: int = setting("seed", 0, note="training, and head re-initialisation")
    recipe: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "recipe overrides (fine-tuning, or MLM training for mlm)"}
    )
    # Task mlm only (added later: None leaves the run-directory hash of task runs unchanged).
    text: str | None = field(
        default=None, metadata={"help": "mlm: training text file (default: the hub text data set)"}
    )
    eval_text: str | None = field(
        default=None,
        metadata={"help": "mlm: held-out text file (default: a held-out slice of the training text)"},
    )

    # Added later: at its default the run-directory hash of existing runs is unchanged.
    lr_horizon: str = field(
        default="level",
        metadata={
            "help": "horizon of each level's linear schedule: level (the rate decays to zero within "
            "each level; ticketlab) or run (the whole run's steps, all levels: BERT-Tickets, whose "
            "levels' rates barely decay)",
            "choices": ("level", "run"),
        },
    )

    run_prefix = "imp"
    # More levels on top of the finished ones: the run grows (its last level is redone to prune
    # for the next one); any other change of levels is another run.
    growable_fields = ("levels",)

    def grows_from(self, recorded: ImpSpec) -> bool:
        if self.lr_horizon == "run" and list(self.levels) != list(recorded.levels):
            return False  # the run's length is every level's horizon: more levels, other levels
        return list(self.levels[: len(recorded.levels)]) == list(recorded.levels)

    @property
    def horizon_factor(self) -> int:
        """How many levels' steps each level's schedule spans (1: its own; ``run``: all levels)."""
        return len(self.levels) + 1 if self.lr_horizon == "run" else 1

    def validate(self) -> None:
        if not self.levels:
            raise TicketlabError("IMP needs at least one level")
        for level in self.levels:
            validate_sparsity(level)
            if level <= 0:
                raise TicketlabError(f"IMP levels must be above 0, got {level}")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])):
            raise TicketlabError(f"IMP levels must increase: {self.levels}")
        if self.head not in ("keep", "reinit"):
            raise TicketlabError(f"head must be 'keep' or 'reinit', not {self.head!r}")
        if self.lr_horizon not in LR_HORIZONS:
            raise TicketlabError(
                f"unknown lr horizon {self.lr_horizon!r} (choose from {', '.join(LR_HORIZONS)})"
            )
        if self.task == MLM_TASK:
            if self.data_dir is not None:
                raise TicketlabError("task mlm reads --text (and --eval-text), not --data-dir")
        elif self.text is not None or self.eval_text is not None:
            raise TicketlabError(f"--text and --eval-text are for task mlm, not {self.task!r}")


def level_name(index: int) -> str:
    return f"level_{index:02d}"


def _head_state(model: nn.Module, adapter: EncoderAdapter) -> dict[str, torch.Tensor]:
    """Parameters outside the base model (the task head), by their full names."""
    if adapter.base is model:
        return {}
    prefix = f"{model.base_model_prefix}."
    return {
        k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefix)
    }


def search_cost(level_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Training spent on the given levels: optimizer steps, examples and wall seconds, summed.

    Read from the results' ``training_steps``, ``train_examples_seen`` and ``wall_seconds`` (what
    the fine-tuning and MLM pipelines write); levels without them count as unknown (None).
    """

    def total(key: str) -> float | None:
        values = [r.get(key) for r in level_results]
        return None if any(v is None for v in values) else sum(values)

    return {
        "levels": len(level_results),
        "steps": total("training_steps"),
        "examples": total("train_examples_seen"),
        "wall_time_s": total("wall_seconds"),
    }


def lr_schedule_record(spec: ImpSpec, level_steps: int | None) -> dict[str, Any]:
    """Which schedule a level ran: its horizon (``level`` or ``run``) and that horizon in steps."""
    horizon = None if level_steps is None else level_steps * spec.horizon_factor
    return {"horizon": spec.lr_horizon, "horizon_steps": horizon, "fresh_per_level": True}


def level_files(index: int, num_levels: int) -> list[str]:
    """The files IMP level ``index`` (of ``num_levels``, level 0 the full model) must hold."""
    files = ["results.json", "trained_head.safetensors"]
    if index > 0:
        files.append("mask.safetensors")
    if index + 1 < num_levels:
        files.append("next_mask.safetensors")
    return files


def run_imp(
    spec: ImpSpec,
    out: str | Path,
    build_model: Callable[[], nn.Module],
    train: TrainFunction,
    echo: Callable[[str], None] = print,
    mask_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) IMP into ``out``; returns the summary also written to ``out/results.json``.

    ``build_model()`` returns the pre-trained model with a (seeded) fresh task head: it is called
    once per level, which is the rewinding. ``train`` fine-tunes it in place. ``mask_params`` go
    into every mask's header beside the level, task, head treatment and search cost (the training
    of all levels before the mask).
    """
    spec.validate()
    run = RunDirectory.open(spec, out)
    sparsities = [0.0] + list(spec.levels)
    for index, target in enumerate(sparsities):
        name = level_name(index)
        previous = run.step_path(level_name(index - 1)) if index else None
        started = time.time()
        required = level_files(index, len(sparsities))
        if (
            run.is_done(name)
            and not (run.step_path(name) / "next_mask.safetensors").exists()
            and ("next_mask.safetensors" in required)
        ):
            echo(f"IMP {spec.task}: level {index} was the last level; redone to prune for the levels added")
            run.steps.redo(name)

        def level(tmp: Path, index=index, previous=previous) -> bool:
            mask = load_mask(previous / "next_mask.safetensors") if previous else None
            model = build_model()  # pre-trained weights: the rewind
            adapter = EncoderAdapter(model)
            if previous is not None and spec.head == "keep":
                head = load_file(previous / "trained_head.safetensors")
                missing = set(head) - set(model.state_dict())
                if missing:
                    raise TicketlabError(
                        f"the saved task head does not fit the model: {sorted(missing)[0]!r}"
                    )
                model.load_state_dict(head, strict=False)
            pretrained = copy.deepcopy(model) if index + 1 < len(sparsities) else None
            if mask is not None:
                save_mask(mask, tmp / "mask.safetensors")
            results = train(model, mask, spec.seed, tmp)
            results = dict(
                results,
                level=index,
                sparsity=mask.sparsity if mask is not None else 0.0,
                lr_schedule=lr_schedule_record(spec, results.get("training_steps")),
            )
            save_file(_head_state(model, adapter), tmp / "trained_head.safetensors")
            if pretrained is not None:
                next_target = sparsities[index + 1]
                next_mask = prune(
                    model,
                    "omp",
                    next_target,
                    scope=spec.scope,
                    scheme=spec.scheme,
                    seed=spec.seed,
                    source_model=spec.model,
                    pretrained=pretrained,
                    within=mask,
                )
                # Every rank of a launch holds the first rank's mask (the weights agree after DDP,
                # but the ranking is made once and sent, so ties cannot split the ranks).
                next_mask = broadcast_from_first(next_mask)
                next_mask.provenance.method = "imp"
                earlier = [read_json(run.step_path(level_name(i)) / "results.json") for i in range(index)]
                next_mask.provenance.method_params = {
                    "level": index + 1,
                    "task": spec.task,
                    "head": spec.head,
                    "levels": list(spec.levels),
                    "lr_horizon": spec.lr_horizon,  # which schedule the levels before it ran
                    "search_cost": search_cost(earlier + [results]),
                    **(mask_params or {}),
                }
                save_mask(next_mask, tmp / "next_mask.safetensors")
            write_json(tmp / "results.json", results)
            return True

        computed = run.run_step(
            name, level, load=lambda _: False, required=level_files(index, len(sparsities))
        )
        if computed:
            echo(
                f"IMP {spec.task}: level {index} (sparsity {target:.0%}) done in {time.time() - started:.0f}s"
            )
    summary = {
        "task": spec.task,
        "levels": [read_json(run.step_path(level_name(i)) / "results.json") for i in range(len(sparsities))],
    }
    write_json(run.path / "results.json", summary)
    return summary


def check_recipe(recipe: Any, where: str = "recipe") -> None:
    """Refuse a recipe that is not a mapping of known fine-tuning fields of the right types."""
    from ticketlab.experiments.finetune import FinetuneSpec

    if not isinstance(recipe, dict):
        raise TicketlabError(f"{where}: expected a mapping of recipe fields, got {recipe!r}")
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS), key=str)
    if unknown:
        raise TicketlabError(
            f"{where}: unknown recipe field {unknown[0]!r} (known: {', '.join(RECIPE_FIELDS)})"
        )
    hints = typing.get_type_hints(FinetuneSpec)
    for name, value in recipe.items():
        check_value(value, hints[name], f"{where}.{name}")
    try:  # the values' ranges, as a fine-tuning run would check them before it starts
        FinetuneSpec(model="-", task="sst2", **recipe).validate()
    except TicketlabError as error:
        raise TicketlabError(f"{where}: {error}") from None


def finetune_functions(
    model: str,
    task_name: str,
    data_dir: str | None,
    recipe: dict[str, Any],
    *,
    seed: int,
    cache_dir: str | None = None,
    quiet: bool = False,
    horizon_factor: int = 1,
) -> tuple[Callable[[], nn.Module], TrainFunction]:
    """``build_model`` and ``train`` for IMP on a downstream task, through ``run_finetune``
    (``horizon_factor``: :attr:`ImpSpec.horizon_factor`, the levels each schedule spans)."""
    from accelerate.utils import set_seed

    from ticketlab.experiments.finetune import FinetuneSpec, run_finetune
    from ticketlab.training.tasks import get_task

    check_recipe(recipe)
    task = get_task(task_name)

    def build_model() -> nn.Module:
        set_seed(seed)  # the fresh task head is the same at every level (and with reinit)
        return task.build_model(model)

    def train(
        prepared: nn.Module, mask: UnstructuredMask | None, train_seed: int, out: Path
    ) -> dict[str, Any]:
        spec = FinetuneSpec(model=model, task=task_name, data_dir=data_dir, seed=train_seed, **recipe)
        # The level saved its mask beside the run before training: results.json names it.
        mask_file = "mask.safetensors" if mask is not None and (out / "mask.safetensors").is_file() else None
        return run_finetune(
            spec,
            out,
            model=prepared,
            mask=mask,
            mask_file=mask_file,
            cache_dir=cache_dir,
            quiet=quiet,
            horizon_factor=horizon_factor,
        )

    return build_model, train

"""Importance of a fine-tuned model's heads and FFNs on a task's data (``ticketlab importance``).

The scoring itself is :func:`ticketlab.pruning.importance.compute_importance`; this module brings
the task: its data (training or dev split, tokenised and batched as for fine-tuning), its
per-example loss, and a fine-tuned model with a trained task head (a model directory, or a
``ticketlab finetune --save-model`` run directory, whose task, data and length it reuses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.data.subset import TRAIN_SUBSETS, subset_indices
from ticketlab.errors import TicketlabError
from ticketlab.masks.structured import StructuredMask
from ticketlab.models.loading import check_max_length, max_positions
from ticketlab.pruning.importance import (
    IMPORTANCE_VARIANTS,
    NORMALIZATIONS,
    ImportanceScores,
    LossFn,
    compute_importance,
    question_answering_losses,
    sequence_classification_losses,
)
from ticketlab.training.settings import check_settings, setting

SPLITS: tuple[str, ...] = ("train", "dev")
# Where each paper scored: super tickets on the training set, all tickets winning on the dev set.
# Michel et al. is scored on the training set too (scores that pick a ticket should not see dev).
DEFAULT_SPLIT: dict[str, str] = {"michel2019": "train", "liang2021": "train", "prasanna2020": "dev"}


def variant_field(help_text: str) -> Any:
    """The importance variant of a spec that scores heads (default: liang2021, as super tickets)."""
    return field(default="liang2021", metadata={"help": help_text, "choices": tuple(IMPORTANCE_VARIANTS)})


def normalization_field() -> Any:
    """The per-layer scaling of head scores of a spec that scores heads (flag ``--normalize``)."""
    return field(
        default="l2",
        metadata={
            "help": "per-layer scaling of head scores",
            "choices": NORMALIZATIONS,
            "flag": "--normalize",
        },
    )


@dataclass
class ImportanceOptions:
    """How importance is scored on a task (the defaults follow the variant's paper)."""

    variant: str = variant_field("scoring rule (liang2021: the super tickets' one)")
    normalization: str = normalization_field()
    split: str | None = field(
        default=None,
        metadata={
            "help": "data to score on (default: the variant's paper: dev for prasanna2020, else train)",
            "choices": SPLITS,
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "score on N examples of the split only (dev: the first N)"}
    )
    train_subset: str = field(
        default="first",
        metadata={
            "help": "which N training examples with max_samples: the first, or the fine-tuning's fixed "
            "random draw",
            "choices": TRAIN_SUBSETS,
        },
    )
    batch_size: int = setting("batch_size", 32, note="examples per backward pass")

    def resolved_split(self) -> str:
        return self.split or DEFAULT_SPLIT.get(self.variant, "train")

    def validate(self) -> None:
        if self.variant not in IMPORTANCE_VARIANTS:
            raise TicketlabError(
                f"unknown importance variant {self.variant!r} (choose from {', '.join(IMPORTANCE_VARIANTS)})"
            )
        if self.normalization not in NORMALIZATIONS:
            raise TicketlabError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}"
            )
        if self.resolved_split() not in SPLITS:
            raise TicketlabError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        subset_indices(1, None, self.train_subset)  # an unknown subset is refused here
        if self.max_samples is not None and self.max_samples < 1:
            raise TicketlabError(f"max samples must be at least 1, got {self.max_samples}")
        check_settings(self)


def task_loss(task: Any) -> LossFn:
    """The per-example loss importance is the sensitivity of, for ``task``."""
    from ticketlab.training.glue_task import GlueTask
    from ticketlab.training.squad_finetune import SquadFinetuneTask

    if isinstance(task, GlueTask):
        return sequence_classification_losses
    if isinstance(task, SquadFinetuneTask):
        return question_answering_losses
    raise TicketlabError(f"importance scoring has no per-example loss for task {task.name!r}")


@dataclass
class FinetunedModel:
    """A fine-tuned model located from ``--model``: where its weights are, and what its run knew."""

    path: str  # model directory or hub id
    run_dir: Path | None = None  # the ``ticketlab finetune`` run it came from
    run_spec: dict[str, Any] = field(default_factory=dict)  # that run's spec.json (task, data_dir, ...)


def locate_finetuned(name_or_path: str) -> FinetunedModel:
    """A model directory or hub id as it is; a fine-tuning run directory by its ``model/`` folder."""
    from ticketlab.experiments.finetune import MODEL_DIR, RESULTS_FILE, SPEC_FILE
    from ticketlab.io import read_json

    root = Path(name_or_path)
    if not (root / RESULTS_FILE).is_file() or (root / "config.json").exists():
        return FinetunedModel(name_or_path)
    if not (root / MODEL_DIR / "config.json").is_file():
        raise TicketlabError(
            f"{root} is a fine-tuning run without a saved model: rerun ticketlab finetune with --save-model"
        )
    spec = read_json(root / SPEC_FILE) if (root / SPEC_FILE).is_file() else {}
    return FinetunedModel(str(root / MODEL_DIR), root, spec)


def load_task_model(name_or_path: str, task: Any) -> nn.Module:
    """The fine-tuned model with ``task``'s head; an error if the checkpoint has no trained head."""
    try:
        model = task.build_model(name_or_path)
    except RuntimeError as error:  # transformers: a checkpoint head of another shape
        raise TicketlabError(
            f"model {name_or_path!r} does not fit task {task.name}: some of its weights (the task head, "
            "if it was fine-tuned on another task) have other shapes"
        ) from error
    if getattr(model, "ticketlab_shrink_plan", None) is not None:
        raise TicketlabError(
            f"model {name_or_path!r} is a ticketlab shrink output (its pruned heads are cut out, so they "
            "cannot be scored): score the full fine-tuned model it was shrunk from"
        )
    prefix = f"{model.base_model_prefix}."
    fresh = sorted(k for k in getattr(model, "ticketlab_untrained", ()) if not k.startswith(prefix))
    if fresh:
        raise TicketlabError(
            f"model {name_or_path!r} has no trained {task.name} head ({fresh[0]!r} is missing from the "
            "checkpoint): score a fine-tuned model, e.g. a ticketlab finetune --save-model run"
        )
    return model


def importance_batches(
    task: Any,
    tokenizer: Any,
    *,
    split: str,
    batch_size: int,
    max_length: int,
    data_dir: str | os.PathLike | None = None,
    max_samples: int | None = None,
    train_subset: str = "first",
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> Any:
    """The labelled examples of ``split`` (train, or the first dev split) as batches, in file order
    (``max_samples`` of the training split chosen as ``train_subset`` says, the same as fine-tuning)."""
    from torch.utils.data import DataLoader

    from ticketlab.training.tasks import DataOptions

    options = DataOptions(
        max_length=max_length,
        data_dir=data_dir,
        cache_dir=cache_dir,
        max_train_samples=max_samples,
        max_eval_samples=max_samples,
        train_subset=train_subset,
        quiet=quiet,
    )
    if split == "train":
        dataset = task.train_dataset(tokenizer, options)
    elif split == "dev":
        data = task.eval_data(task.eval_splits[0], tokenizer, options)
        dataset = getattr(data, "dataset", None)
        if dataset is None or "labels" not in dataset.column_names:
            raise TicketlabError(
                f"task {task.name} has no labelled dev examples to score on; use the train split"
            )
        dataset = dataset.remove_columns([c for c in ("index",) if c in dataset.column_names])
    else:
        raise TicketlabError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if len(dataset) == 0:
        raise TicketlabError(f"the {split} split of {task.name} has no examples")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate_fn(tokenizer))


def score_task_importance(
    model: nn.Module,
    task_name: str,
    tokenizer: Any,
    options: ImportanceOptions,
    *,
    max_length: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    mask: StructuredMask | None = None,
    quiet: bool = False,
) -> ImportanceScores:
    """Score ``model``'s heads and FFNs on ``task_name``'s data; the scores record where they came from."""
    from ticketlab.experiments.finetune import BASE_RECIPE
    from ticketlab.training.tasks import get_task

    options.validate()
    task = get_task(task_name)
    split = options.resolved_split()
    default_length = {**BASE_RECIPE, **task.recipe}["max_length"]
    if max_length not in (None, default_length):  # a length asked for must fit; the default is fitted
        check_max_length(model, max_length, "--max-length")
    max_length = min(max_length or default_length, max_positions(model) or default_length)
    batches = importance_batches(
        task,
        tokenizer,
        split=split,
        batch_size=options.batch_size,
        max_length=max_length,
        data_dir=data_dir,
        max_samples=options.max_samples,
        train_subset=options.train_subset,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    scores = compute_importance(
        model,
        batches,
        task_loss(task),
        variant=options.variant,
        normalization=options.normalization,
        mask=mask,
        progress=not quiet,
    )
    scores.info.update(task=task.name, split=split, max_length=max_length, max_samples=options.max_samples)
    if options.max_samples and split == "train":
        scores.info["train_subset"] = options.train_subset
    return scores

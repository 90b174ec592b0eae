"""What a downstream task is to the training code, and the registry that finds tasks by name.

A :class:`Task` knows how to load and tokenise its splits, build its model head, turn a model's
outputs on an evaluation split into predictions, score them, and write them out. The fine-tuning
pipeline only talks to this interface, so GLUE and SQuAD (and later tasks) plug in the same way:
implement a Task and register its names with :func:`register_task`.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.training.settings import setting

# Modules that register tasks when imported (kept lazy so that importing ticketlab stays cheap).
TASK_MODULES: list[str] = ["ticketlab.training.glue_task", "ticketlab.training.squad_finetune"]
# Packages outside ticketlab name their task modules under this entry-point group.
TASK_ENTRY_POINTS = "ticketlab.tasks"
_REGISTRY: dict[str, Callable[[str], Task]] = {}
_plugins_loaded = False


@dataclass
class DataOptions:
    """How a task loads its data (the same for every split)."""

    max_length: int = setting("max_length", 128)
    doc_stride: int | None = None  # tokens shared by consecutive windows (SQuAD); None: the task's
    data_dir: str | os.PathLike | None = None  # local files; None: the hub
    cache_dir: str | os.PathLike | None = (
        None  # tokenisation cache; None: $TICKETLAB_CACHE or ~/.cache/ticketlab
    )
    max_train_samples: int | None = setting("max_train_samples", None)
    train_subset: str = "first"  # which max_train_samples examples: see ticketlab.data.subset
    max_eval_samples: int | None = setting("max_eval_samples", None, note="test splits are never cut")
    quiet: bool = False


@dataclass
class SplitPredictions:
    """A task's predictions on one split, in the split's order, with the gold labels if known."""

    split: str
    index: list[int]
    predictions: Any  # e.g. class ids or scores (numpy), or answer texts
    labels: Any = None

    def __len__(self) -> int:
        return len(self.index)


class Task(ABC):
    """A downstream task: data, model head, predictions and metrics."""

    name: str
    main_metric: str
    metric_names: tuple[str, ...] = ()  # every metric :meth:`metrics` returns
    default_max_length: int = 128  # tokens per example when the user does not say
    greater_is_better: bool = True
    eval_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ()
    # Recipe settings (FinetuneSpec field -> value) that replace the spec's defaults for this task
    # when the user did not set them, e.g. SQuAD's max length 384 and lr 3e-5.
    recipe: dict[str, Any] = {}

    @abstractmethod
    def build_model(self, model_name_or_path: str) -> nn.Module:
        """The pre-trained model with this task's head (freshly initialised)."""

    @abstractmethod
    def train_dataset(self, tokenizer: Any, options: DataOptions) -> Any:
        """The tokenised training set: a map-style dataset whose batches (through
        :meth:`collate_fn`) the model takes as ``model(**batch)`` and returns a ``.loss``."""

    @abstractmethod
    def eval_data(self, split: str, tokenizer: Any, options: DataOptions) -> Any:
        """Whatever :meth:`predict` needs for one evaluation or test split."""

    @abstractmethod
    def collate_fn(self, tokenizer: Any) -> Callable:
        """Turns a list of training examples into a batch of tensors."""

    @abstractmethod
    def predict(
        self, model: nn.Module, data: Any, accelerator: Any, *, batch_size: int, quiet: bool = False
    ) -> SplitPredictions:
        """Run ``model`` over one split (on every process; gathered) and return its predictions."""

    @abstractmethod
    def metrics(self, predictions: dict[str, SplitPredictions]) -> dict[str, float]:
        """The task's metrics (plain names) from the predictions on its evaluation splits."""

    @abstractmethod
    def write_predictions(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        """Write the evaluation predictions (atomically) under ``out_dir``; return the paths."""

    def write_submission(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        """Write test-set predictions in the benchmark's submission format."""
        raise TicketlabError(f"task {self.name} has no test-set submission format")

    def describe(self) -> dict[str, Any]:
        """Facts about the task recorded in results.json."""
        return {"task": self.name, "main_metric": self.main_metric}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_task(names: Iterable[str], factory: Callable[[str], Task]) -> None:
    """Make ``get_task(name)`` return ``factory(name)`` for each of ``names`` (case, - and _ ignored)."""
    for name in names:
        _REGISTRY[_normalise(name)] = factory


def get_task(name: str) -> Task:
    """The task called ``name`` (``rte``, ``STS-B``, ``MNLI``, ...)."""
    global _plugins_loaded
    for module in TASK_MODULES:
        importlib.import_module(module)
    if not _plugins_loaded:
        from importlib.metadata import entry_points

        _plugins_loaded = True
        for entry in entry_points(group=TASK_ENTRY_POINTS):
            entry.load()
    factory = _REGISTRY.get(_normalise(name))
    if factory is None:
        known = sorted({n for n in _REGISTRY if n.isalnum()})
        raise TicketlabError(f"unknown task {name!r} (known: {', '.join(known)})")
    return factory(name)


class TaskEvaluator:
    """The ``evaluate`` function of the training loop for a task: predicts every evaluation split
    and returns the task's metrics; the predictions of the latest call stay in :attr:`predictions`."""

    def __init__(self, task: Task, data: dict[str, Any], *, batch_size: int, quiet: bool = False):
        self.task = task
        self.data = data
        self.batch_size = batch_size
        self.quiet = quiet
        self.predictions: dict[str, SplitPredictions] = {}

    def __call__(self, model: nn.Module, accelerator: Any) -> dict[str, float]:
        self.predictions = {
            split: self.task.predict(model, data, accelerator, batch_size=self.batch_size, quiet=self.quiet)
            for split, data in self.data.items()
        }
        return self.task.metrics(self.predictions)

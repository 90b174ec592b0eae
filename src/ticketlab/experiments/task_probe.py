"""A fine-tuned model and its task's dev set: dev metrics and importance scores under any mask,
without changing the model (structured masks go on as gates; unstructured ones zero the pruned
weights only while evaluating)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.masks import StructuredMask, UnstructuredMask, apply_structured_mask
from ticketlab.masks.io import Mask
from ticketlab.pruning.importance import ImportanceScores


@contextlib.contextmanager
def zeroed_weights(model: nn.Module, mask: UnstructuredMask) -> Iterator[nn.Module]:
    """Inside, the mask's pruned weights read as zero; their values come back afterwards."""
    from ticketlab.models import EncoderAdapter

    adapter = EncoderAdapter(model)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, bits in mask.tensors.items():
                weight = adapter.parameter(name)
                saved[name] = weight.detach().clone()
                weight.mul_(bits.to(device=weight.device, dtype=weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                adapter.parameter(name).copy_(original)


class TaskProbe:
    """The model of ``build_model()`` with the fine-tuned weights of ``weights`` (a safetensors
    file), and the dev set of the fine-tuning spec's task (its recipe's max length, eval batch size
    and ``max_eval_samples``). Loads lazily on first use: a resumed run whose steps are all done
    never loads anything. One process (importance and evaluation run on the whole dev set)."""

    def __init__(
        self,
        finetune_spec: Any,
        build_model: Callable[[], nn.Module],
        weights: str | Path,
        *,
        importance: str = "prasanna2020",
        normalization: str = "l2",
        cache_dir: str | None = None,
        quiet: bool = False,
    ):
        self.finetune = finetune_spec
        self.build_model = build_model
        self.weights = Path(weights)
        self.importance_variant = importance
        self.normalization = normalization
        self.cache_dir = cache_dir
        self.quiet = quiet

    @cached_property
    def task(self):
        from ticketlab.training.tasks import get_task

        return get_task(self.finetune.task)

    @property
    def main_metric(self) -> str:
        return self.finetune.main_metric or self.task.main_metric

    @cached_property
    def accelerator(self):
        from ticketlab.training.loop import default_accelerator

        return default_accelerator()

    @cached_property
    def model(self) -> nn.Module:
        from safetensors.torch import load_model

        model = self.build_model()
        load_model(model, str(self.weights))
        return model.to(self.accelerator.device).eval()

    @cached_property
    def adapter(self):
        from ticketlab.models import EncoderAdapter

        return EncoderAdapter(self.model)

    @cached_property
    def _data(self):
        from torch.utils.data import DataLoader

        from ticketlab.models import load_tokenizer
        from ticketlab.training.tasks import DataOptions, TaskEvaluator

        tokenizer = load_tokenizer(self.finetune.model)
        options = DataOptions(
            max_length=self.finetune.max_length,
            data_dir=self.finetune.data_dir,
            cache_dir=self.cache_dir,
            max_eval_samples=self.finetune.max_eval_samples,
            quiet=self.quiet,
        )
        batch_size = self.finetune.eval_batch_size or self.finetune.batch_size
        splits = {split: self.task.eval_data(split, tokenizer, options) for split in self.task.eval_splits}
        evaluator = TaskEvaluator(self.task, splits, batch_size=batch_size, quiet=self.quiet)
        # Importance is scored on the first dev split (MNLI: matched), with its labels.
        first = splits[self.task.eval_splits[0]].dataset
        scoring = DataLoader(
            first.remove_columns(["index"]),
            batch_size=batch_size,
            shuffle=False,
            collate_fn=self.task.collate_fn(tokenizer),
        )
        return evaluator, scoring

    def evaluate(self, mask: Mask | None = None) -> dict[str, float]:
        """Dev metrics of the fine-tuned model under ``mask`` (None: the full model)."""
        evaluator, _ = self._data
        if mask is None:
            return evaluator(self.model, self.accelerator)
        if isinstance(mask, StructuredMask):
            with apply_structured_mask(self.model, mask):
                return evaluator(self.model, self.accelerator)
        with zeroed_weights(self.model, mask):
            return evaluator(self.model, self.accelerator)

    def importance(self, mask: StructuredMask | None = None) -> ImportanceScores:
        """Head and FFN importance on the dev set under ``mask`` (pruned units score 0)."""
        from ticketlab.pruning.importance import compute_importance

        _, scoring = self._data
        device = self.accelerator.device
        batches = ({k: v.to(device) for k, v in batch.items()} for batch in scoring)
        return compute_importance(
            self.model,
            batches,
            variant=self.importance_variant,
            normalization=self.normalization,
            mask=mask,
            progress=not self.quiet,
        )

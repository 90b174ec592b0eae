"""SQuAD v1.1 as a task the fine-tuning pipeline can drive: data, features, evaluation, metrics.

The interface (everything a training loop needs; it never has to know about windows)::

    task = SquadTask()                        # max_length 384, stride 128, n_best 20, max answer 30
    splits = task.load_splits(data_path, eval_fraction=0.2, seed=0)   # SquadSplits(train, eval, protocol)
    model = load_encoder(name, model_class=task.model_class)          # AutoModelForQuestionAnswering
    train_set = task.prepare_train_features(splits.train, tokenizer)  # datasets.Dataset, unpadded
    loader = DataLoader(train_set, batch_size=16, shuffle=True, collate_fn=task.collator(tokenizer))
    ...  loss = model(**batch).loss  (batch holds start_positions / end_positions) ...
    metrics, predictions = task.evaluate(model, tokenizer, splits.eval, batch_size=64)
    # metrics == {"exact_match": .., "f1": ..} in percent; predictions == {question_id: answer_text}
    write_predictions(predictions, run_dir / "predictions.json")      # the official form

The pieces are also usable one by one: ``task.load(data_path, split)``,
``task.prepare_eval_features(examples, tokenizer)`` -> :class:`SquadEvalFeatures`,
``task.postprocess(examples, features, start_logits, end_logits)`` -> predictions,
``task.compute_metrics(predictions, examples)`` -> metrics; and the module function
:func:`evaluate_squad`. ``data_path`` None means the hub's ``rajpurkar/squad``; a folder means the
official ``train-v1.1.json`` / ``dev-v1.1.json`` in it; a single file is read as the dev set.

To tokenise the eval set once per run, prepare it once and pass it to every evaluation:
``features = task.prepare_eval_features(splits.eval, tokenizer)`` then
``evaluate_squad(model, tokenizer, splits.eval, batch_size, task=task, features=features)``.
``progress=True`` shows tqdm bars for tokenising and evaluating. Under Accelerate, evaluate on the
main process (each call predicts the whole eval set).

With only the dev set (this machine, or a folder without ``train-v1.1.json``), ``load_splits``
trains on some of the dev articles and evaluates on the others (:func:`split_by_article`), and its
``protocol`` string says so, for results.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketlab.data.squad import LOCAL_FILES, SquadExample, load_squad, split_by_article
from ticketlab.data.squad_features import (
    DOC_STRIDE,
    MAX_LENGTH,
    MAX_QUERY_LENGTH,
    SquadEvalFeatures,
    prepare_eval_features,
    prepare_train_features,
    squad_collator,
)
from ticketlab.io import atomic_write
from ticketlab.training.squad_metrics import compute_squad_metrics
from ticketlab.training.squad_postprocess import MAX_ANSWER_LENGTH, N_BEST, postprocess_predictions


@dataclass(frozen=True)
class SquadSplits:
    """The questions to train and to evaluate on, and how they were obtained."""

    train: list[SquadExample]
    eval: list[SquadExample]
    protocol: str  # e.g. "official train / dev" or "dev split by article: ..."


@dataclass(frozen=True)
class SquadTask:
    """SQuAD v1.1 extractive question answering with BERT's sliding-window protocol."""

    max_length: int = field(default=MAX_LENGTH, metadata={"help": "tokens per window"})
    stride: int = field(default=DOC_STRIDE, metadata={"help": "tokens shared by consecutive windows"})
    max_query_length: int = field(default=MAX_QUERY_LENGTH, metadata={"help": "question tokens kept"})
    n_best: int = field(default=N_BEST, metadata={"help": "start and end candidates per window"})
    max_answer_length: int = field(default=MAX_ANSWER_LENGTH, metadata={"help": "longest answer, tokens"})

    name = "squad"
    metric_names = ("exact_match", "f1")
    main_metric = "f1"

    @property
    def model_class(self):
        """The transformers class of the task model (a span-start/end head on the encoder)."""
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def load(self, data_path: str | Path | None = None, split: str = "validation") -> list[SquadExample]:
        """Questions of one split (``train`` / ``validation``) from a file, a folder, or the hub (None)."""
        return load_squad(data_path, split)

    def load_splits(
        self, data_path: str | Path | None = None, eval_fraction: float = 0.2, seed: int = 0
    ) -> SquadSplits:
        """Train and eval questions: official train/dev when there is a train set, else dev split by article."""
        if data_path is None or (
            Path(data_path).is_dir() and (Path(data_path) / LOCAL_FILES["train"]).exists()
        ):
            return SquadSplits(
                self.load(data_path, "train"), self.load(data_path, "validation"), "official train / dev"
            )
        dev = self.load(data_path, "validation")
        train, evaluation = split_by_article(dev, eval_fraction, seed)
        articles = len({example.title for example in evaluation}), len({example.title for example in train})
        protocol = (
            f"dev split by article (no train set): {articles[1]} articles / {len(train)} questions to train, "
            f"{articles[0]} articles / {len(evaluation)} questions to evaluate "
            f"(eval_fraction {eval_fraction}, seed {seed})"
        )
        return SquadSplits(train, evaluation, protocol)

    def prepare_train_features(
        self,
        examples: Sequence[SquadExample],
        tokenizer: Any,
        max_length: int | None = None,
        stride: int | None = None,
        progress: bool = False,
    ):
        """Training windows (``datasets.Dataset``: model inputs, start_positions, end_positions)."""
        return prepare_train_features(
            examples,
            tokenizer,
            _or(max_length, self.max_length),
            _or(stride, self.stride),
            self.max_query_length,
            progress,
        )

    def prepare_eval_features(
        self,
        examples: Sequence[SquadExample],
        tokenizer: Any,
        max_length: int | None = None,
        stride: int | None = None,
        progress: bool = False,
    ) -> SquadEvalFeatures:
        """Evaluation windows with their question ids and context offsets."""
        return prepare_eval_features(
            examples,
            tokenizer,
            _or(max_length, self.max_length),
            _or(stride, self.stride),
            self.max_query_length,
            progress,
        )

    def collator(self, tokenizer: Any):
        """Batches features with dynamic padding (use as the DataLoader's ``collate_fn``)."""
        return squad_collator(tokenizer)

    def postprocess(
        self,
        examples: Sequence[SquadExample],
        features: SquadEvalFeatures,
        start_logits: Sequence[Any],
        end_logits: Sequence[Any],
    ) -> dict[str, str]:
        """Windows' logits -> ``{question_id: answer_text}``."""
        return postprocess_predictions(
            examples, features, start_logits, end_logits, self.n_best, self.max_answer_length
        )

    def compute_metrics(
        self, predictions: dict[str, str], examples: Sequence[SquadExample]
    ) -> dict[str, float]:
        """``{"exact_match", "f1"}`` in percent, official v1.1 definitions."""
        return compute_squad_metrics(predictions, examples)

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        examples: Sequence[SquadExample],
        batch_size: int = 32,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Run the model on every window and score: (metrics, predictions). See :func:`evaluate_squad`."""
        return evaluate_squad(model, tokenizer, examples, batch_size, device, task=self, progress=progress)


def evaluate_squad(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[SquadExample],
    batch_size: int = 32,
    device: torch.device | str | None = None,
    task: SquadTask | None = None,
    progress: bool = False,
    features: SquadEvalFeatures | None = None,
    sort_by_length: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Predict every question of ``examples`` and score: ``(metrics, predictions)``.

    The model runs in eval mode without gradients (its previous mode is restored afterwards) on
    ``device`` (default: where its parameters are). ``features`` may be passed when already prepared
    (they must come from ``examples`` with ``task``'s settings), to tokenise once across evaluations.
    With ``sort_by_length`` windows are batched shortest first, which cuts the padding computed on
    the dev set from about 50% to about 1%; padding is masked out, so the answers are the same.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    task = task or SquadTask()
    if features is None:
        features = task.prepare_eval_features(examples, tokenizer, progress=progress)
    if device is None:
        device = next(model.parameters()).device
    lengths = [len(offsets) for offsets in features.offsets]
    order = (
        sorted(range(len(features)), key=lengths.__getitem__)
        if sort_by_length
        else list(range(len(features)))
    )
    loader = DataLoader(
        features.inputs.select(order),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=task.collator(tokenizer),
    )
    start_logits: list[np.ndarray] = [np.empty(0)] * len(features)
    end_logits: list[np.ndarray] = [np.empty(0)] * len(features)
    windows = iter(order)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="squad eval", disable=not progress, leave=False):
                outputs = model(**{name: tensor.to(device) for name, tensor in batch.items()})
                # float32 on the CPU: half-precision logits would make near-ties order-dependent
                for start_row, end_row in zip(
                    outputs.start_logits.float().cpu().numpy(), outputs.end_logits.float().cpu().numpy()
                ):
                    window = next(windows)
                    start_logits[window] = start_row[: lengths[window]]
                    end_logits[window] = end_row[: lengths[window]]
    finally:
        model.train(was_training)
    predictions = task.postprocess(examples, features, start_logits, end_logits)
    return task.compute_metrics(predictions, examples), predictions


def write_predictions(predictions: dict[str, str], path: str | Path) -> Path:
    """Write ``{question_id: answer_text}`` as JSON (atomically), the form the official script reads."""
    text = json.dumps(predictions, ensure_ascii=False, indent=0, sort_keys=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return Path(path)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value

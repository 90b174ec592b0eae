"""SQuAD v1.1 as a :class:`Task`, so ``ticketlab finetune --task squad`` runs through the same
pipeline and training loop as GLUE.

Data: ``--data-dir`` holding ``train-v1.1.json`` and ``dev-v1.1.json`` (the official protocol), or
only ``dev-v1.1.json``: then training uses some of the dev articles and evaluation the others
(:meth:`SquadTask.load_splits`, eval fraction 0.2, split seed 0 whatever the run's seed, so every
run on the same file compares on the same questions); results.json records which in ``protocol``.
Without ``--data-dir``: the hub's ``rajpurkar/squad``.

Windows (features) are cached by content (:mod:`ticketlab.data.squad_cache`). Prediction runs on
every process: each predicts its shard of the windows, the start/end logits are gathered
(``gather_for_metrics``), and every process post-processes the whole split, so all return the
same metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketlab.data.squad import HUB_DATASET, LOCAL_FILES, SquadExample
from ticketlab.data.squad_cache import cached_squad_eval_features, cached_squad_train_features
from ticketlab.data.squad_features import DOC_STRIDE, MAX_LENGTH, SquadEvalFeatures, squad_collator
from ticketlab.data.subset import subset_indices
from ticketlab.errors import TicketlabError
from ticketlab.training.squad_metrics import squad_scores
from ticketlab.training.squad_task import SquadSplits, SquadTask, write_predictions
from ticketlab.training.tasks import DataOptions, SplitPredictions, Task, register_task

PREDICTIONS_FILE = "predictions.json"


@dataclass
class SquadSplitData:
    """The questions of an evaluation split, their windows, and the order windows are batched in."""

    split: str
    examples: list[SquadExample]
    features: SquadEvalFeatures
    collate_fn: Any
    # Windows are batched shortest first: padding is masked out, so the answers are the same, and on
    # the dev set the padded tokens fall from about half of the real ones to about 1%.
    order: list[int] = field(init=False)
    _loaders: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = self.window_lengths
        self.order = sorted(range(len(lengths)), key=lengths.__getitem__)

    @property
    def window_lengths(self) -> list[int]:
        return [len(offsets) for offsets in self.features.offsets]

    def loader(self, accelerator: Any, batch_size: int) -> Any:
        key = id(accelerator)
        if key not in self._loaders:
            from torch.utils.data import DataLoader

            inputs = self.features.inputs.select(self.order)
            loader = DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn)
            self._loaders[key] = accelerator.prepare(loader)
        return self._loaders[key]


@torch.no_grad()
def gather_span_logits(
    model: nn.Module, loader: Any, accelerator: Any, *, description: str = "evaluating", quiet: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits (float32, one row per window, in loader order) from every process.

    Batches are padded to their own longest window, which differs between processes, so the
    logits are padded to a common width before gathering; the padding is cut off by the caller.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    bar = tqdm(loader, desc=description, leave=False, disable=quiet or not accelerator.is_local_main_process)
    for batch in bar:
        outputs = model(**batch)
        for logits, rows in ((outputs.start_logits, starts), (outputs.end_logits, ends)):
            padded = accelerator.pad_across_processes(logits.detach().float().contiguous(), dim=1)
            rows.extend(accelerator.gather_for_metrics(padded).cpu().numpy())
    if was_training:
        model.train()
    return starts, ends


class SquadFinetuneTask(Task):
    """SQuAD v1.1 extractive question answering (BERT's sliding windows, official EM / F1 in percent)."""

    name = "squad"
    main_metric = "f1"
    metric_names = ("exact_match", "f1")
    eval_splits = ("dev",)
    test_splits = ()  # the official test set is hidden
    # The recipe (BERT's SQuAD fine-tuning), used where the user did not set these.
    recipe = {"lr": 3e-5, "batch_size": 16, "epochs": 2, "max_length": MAX_LENGTH, "doc_stride": DOC_STRIDE}
    default_max_length = MAX_LENGTH

    def __init__(self, name: str = "squad"):
        self._loaded: tuple[str, SquadSplits] | None = None
        self._settings = SquadTask()

    def settings(self, options: DataOptions) -> SquadTask:
        """The window and span settings for ``options`` (max length and stride from the run)."""
        stride = DOC_STRIDE if options.doc_stride is None else options.doc_stride
        self._settings = SquadTask(max_length=options.max_length, stride=stride)
        return self._settings

    def splits(self, options: DataOptions) -> SquadSplits:
        """Train and eval questions (loaded once per data source)."""
        key = str(options.data_dir)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = key, self._settings.load_splits(options.data_dir)
        return self._loaded[1]

    def _source(self, options: DataOptions, role: str) -> str:
        """Where the questions of ``role`` (train / eval) come from, for the cache key."""
        if options.data_dir is None:
            return f"hub:{HUB_DATASET}:{'train' if role == 'train' else 'validation'}"
        from ticketlab.data.glue import file_sha256

        folder = Path(options.data_dir)
        train_file = folder / LOCAL_FILES["train"]
        path = train_file if role == "train" and train_file.exists() else folder / LOCAL_FILES["validation"]
        return f"file-sha256:{file_sha256(path)}"

    def build_model(self, model_name_or_path: str) -> nn.Module:
        from ticketlab.models import load_encoder

        return load_encoder(model_name_or_path, model_class=self._settings.model_class)

    def train_dataset(self, tokenizer: Any, options: DataOptions) -> Any:
        settings = self.settings(options)
        examples = _head(
            self.splits(options).train, options.max_train_samples, "training", options.train_subset
        )
        return cached_squad_train_features(
            examples,
            tokenizer,
            source=self._source(options, "train"),
            max_length=settings.max_length,
            stride=settings.stride,
            max_query_length=settings.max_query_length,
            cache_dir=options.cache_dir,
            quiet=options.quiet,
        )

    def eval_data(self, split: str, tokenizer: Any, options: DataOptions) -> SquadSplitData:
        if split not in self.eval_splits:
            raise TicketlabError(f"SQuAD has no split {split!r} to evaluate (it has: dev)")
        settings = self.settings(options)
        examples = _head(self.splits(options).eval, options.max_eval_samples, "evaluation")
        features = cached_squad_eval_features(
            examples,
            tokenizer,
            source=self._source(options, "eval"),
            max_length=settings.max_length,
            stride=settings.stride,
            max_query_length=settings.max_query_length,
            cache_dir=options.cache_dir,
            quiet=options.quiet,
        )
        return SquadSplitData(split, examples, features, self.collate_fn(tokenizer))

    def collate_fn(self, tokenizer: Any):
        return squad_collator(tokenizer)

    def predict(
        self,
        model: nn.Module,
        data: SquadSplitData,
        accelerator: Any,
        *,
        batch_size: int,
        quiet: bool = False,
    ) -> SplitPredictions:
        loader = data.loader(accelerator, batch_size)
        starts, ends = gather_span_logits(
            model, loader, accelerator, description=f"evaluating squad {data.split}", quiet=quiet
        )
        if len(starts) != len(data.order):
            raise TicketlabError(f"got logits for {len(starts)} windows but there are {len(data.order)}")
        lengths = data.window_lengths
        start_logits: list[np.ndarray] = [np.empty(0)] * len(lengths)
        end_logits: list[np.ndarray] = [np.empty(0)] * len(lengths)
        for position, window in enumerate(data.order):  # back to window order, padding cut off
            start_logits[window] = starts[position][: lengths[window]]
            end_logits[window] = ends[position][: lengths[window]]
        answers = self._settings.postprocess(data.examples, data.features, start_logits, end_logits)
        ids = [example.id for example in data.examples]
        golds = [example.answer_texts for example in data.examples]
        return SplitPredictions(data.split, ids, [answers[i] for i in ids], golds)

    def metrics(self, predictions: dict[str, SplitPredictions]) -> dict[str, float]:
        results: dict[str, float] = {}
        for p in predictions.values():
            results.update(squad_scores(dict(zip(p.index, p.predictions)), dict(zip(p.index, p.labels))))
        return results

    def write_predictions(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        """``predictions.json``: ``{question_id: answer_text}``, the official evaluation script's input."""
        paths = []
        for split, p in predictions.items():
            name = PREDICTIONS_FILE if split == "dev" else f"{split}_{PREDICTIONS_FILE}"
            paths.append(write_predictions(dict(zip(p.index, p.predictions)), Path(out_dir) / name))
        return paths

    def write_submission(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        raise TicketlabError("SQuAD v1.1 has no public test set: --predict-test is not available for squad")

    def describe(self) -> dict[str, Any]:
        settings = self._settings
        return {
            "task": self.name,
            "main_metric": self.main_metric,
            "metrics": list(self.metric_names),
            "protocol": self._loaded[1].protocol if self._loaded else None,
            "max_length": settings.max_length,
            "doc_stride": settings.stride,
            "max_query_length": settings.max_query_length,
            "n_best": settings.n_best,
            "max_answer_length": settings.max_answer_length,
        }


def _head(
    examples: list[SquadExample], count: int | None, what: str, subset: str = "first"
) -> list[SquadExample]:
    if count is not None and count < 1:
        raise TicketlabError(f"max {what} samples must be at least 1, got {count}")
    chosen = [examples[i] for i in subset_indices(len(examples), count, subset)]
    if not chosen:
        raise TicketlabError(f"SQuAD {what} split has no questions")
    return chosen


register_task(["squad"], SquadFinetuneTask)

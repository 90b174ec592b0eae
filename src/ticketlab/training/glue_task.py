"""GLUE as a :class:`Task`: sequence classification (regression for STS-B) on a pre-trained encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ticketlab.data.glue import GLUE_TASKS, glue_task
from ticketlab.data.glue_features import tokenized_glue_split
from ticketlab.io import atomic_write
from ticketlab.training.metrics import accuracy, compute_metrics
from ticketlab.training.predict import gather_outputs
from ticketlab.training.tasks import DataOptions, SplitPredictions, Task, register_task


@dataclass
class GlueSplitData:
    """A tokenised evaluation or test split; its data loader is prepared once per accelerator."""

    split: str
    dataset: Any  # datasets.Dataset with the model inputs, ``index`` and (not on test) ``labels``
    collate_fn: Any  # pads a list of examples into a batch
    _loaders: dict[int, Any] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return "labels" in self.dataset.column_names

    def loader(self, accelerator: Any, batch_size: int) -> Any:
        key = id(accelerator)
        if key not in self._loaders:
            from torch.utils.data import DataLoader

            inputs = self.dataset.remove_columns(
                [c for c in ("index", "labels") if c in self.dataset.column_names]
            )
            loader = DataLoader(
                inputs,
                batch_size=batch_size,
                shuffle=False,
                collate_fn=self.collate_fn,
                pin_memory=accelerator.device.type == "cuda",
            )
            self._loaders[key] = accelerator.prepare(loader)
        return self._loaders[key]


class GlueTask(Task):
    """One GLUE task. Classification tasks predict the argmax class; STS-B the regression score."""

    def __init__(self, name: str):
        self.info = glue_task(name)
        self.name = self.info.name
        self.main_metric = self.info.main_metric
        self.metric_names = self.info.metrics
        self.eval_splits = self.info.dev_splits
        self.test_splits = self.info.test_splits

    def build_model(self, model_name_or_path: str) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from ticketlab.models import load_encoder

        kwargs: dict[str, Any] = {"num_labels": self.info.num_labels}
        if self.info.is_regression:
            kwargs["problem_type"] = "regression"
        else:
            kwargs["problem_type"] = "single_label_classification"
            names = self.info.label_names or self.info.labels
            kwargs["id2label"] = dict(enumerate(names))
            kwargs["label2id"] = {n: i for i, n in enumerate(names)}
        return load_encoder(model_name_or_path, model_class=AutoModelForSequenceClassification, **kwargs)

    def _split(
        self, split: str, tokenizer: Any, options: DataOptions, max_samples: int | None, subset: str = "first"
    ):
        return tokenized_glue_split(
            self.info,
            split,
            tokenizer,
            max_length=options.max_length,
            data_dir=options.data_dir,
            max_samples=max_samples,
            subset=subset,
            cache_dir=options.cache_dir,
            quiet=options.quiet,
        )

    def train_dataset(self, tokenizer: Any, options: DataOptions) -> Any:
        return self._split(
            "train", tokenizer, options, options.max_train_samples, options.train_subset
        ).remove_columns(["index"])

    def eval_data(self, split: str, tokenizer: Any, options: DataOptions) -> GlueSplitData:
        max_samples = None if split.startswith("test") else options.max_eval_samples
        return GlueSplitData(
            split, self._split(split, tokenizer, options, max_samples), self.collate_fn(tokenizer)
        )

    def collate_fn(self, tokenizer: Any):
        from transformers import DataCollatorWithPadding

        # Dynamic padding: each batch is padded to its longest sequence (same results, less work).
        return DataCollatorWithPadding(tokenizer)

    def predict(
        self, model: nn.Module, data: GlueSplitData, accelerator: Any, *, batch_size: int, quiet: bool = False
    ) -> SplitPredictions:
        loader = data.loader(accelerator, batch_size)
        logits = gather_outputs(
            model, loader, accelerator, description=f"evaluating {self.name} {data.split}", quiet=quiet
        )["logits"]
        predictions = logits[:, 0] if self.info.is_regression else logits.argmax(axis=-1)
        labels = np.asarray(data.dataset["labels"]) if data.has_labels else None
        return SplitPredictions(data.split, list(data.dataset["index"]), predictions, labels)

    def metrics(self, predictions: dict[str, SplitPredictions]) -> dict[str, float]:
        scored = {s: p for s, p in predictions.items() if p.labels is not None}
        if self.name == "mnli":
            # Both dev sets are reported (the originals overwrote matched with mismatched).
            names = {"dev_matched": "accuracy_matched", "dev_mismatched": "accuracy_mismatched"}
            return {names[s]: accuracy(p.predictions, p.labels) for s, p in scored.items() if s in names}
        results: dict[str, float] = {}
        for p in scored.values():
            results.update(compute_metrics(self.info.metrics, p.predictions, p.labels))
        return results

    def _format(self, value: Any) -> str:
        if self.info.is_regression:
            return f"{float(value):.6f}"
        return self.info.labels[int(value)]

    def write_predictions(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        """``<split>_predictions.tsv``: index, prediction, label (label tokens as in the TSV files)."""
        paths = []
        for split, p in predictions.items():
            lines = ["index\tprediction\tlabel"]
            labels = p.labels if p.labels is not None else [None] * len(p)
            for index, prediction, label in zip(p.index, p.predictions, labels):
                gold = "" if label is None else self._format(label)
                lines.append(f"{index}\t{self._format(prediction)}\t{gold}")
            path = Path(out_dir) / f"{split}_predictions.tsv"
            _write_text(path, "\n".join(lines) + "\n")
            paths.append(path)
        return paths

    def write_submission(self, predictions: dict[str, SplitPredictions], out_dir: Path) -> list[Path]:
        """The GLUE leaderboard files (``RTE.tsv``, ``MNLI-m.tsv``, ...): ``index\\tprediction``."""
        paths = []
        for split, p in predictions.items():
            lines = ["index\tprediction"] + [
                f"{index}\t{self._format(prediction)}" for index, prediction in zip(p.index, p.predictions)
            ]
            path = Path(out_dir) / self.info.submission_files[split]
            _write_text(path, "\n".join(lines) + "\n")
            paths.append(path)
        return paths

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "main_metric": self.main_metric,
            "metrics": list(self.info.metrics),
            "num_labels": self.info.num_labels,
            "labels": list(self.info.labels) if self.info.labels else None,
        }


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


register_task([name for t in GLUE_TASKS.values() for name in (t.name, t.folder)], GlueTask)

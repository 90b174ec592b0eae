"""The GLUE tasks: their table, and their examples from the hub or from the original TSV files.

Two sources give the same :class:`GlueExamples`:

- the Hugging Face hub's ``nyu-mll/glue`` data set (the default), and
- a local folder in the original GLUE layout (``--data-dir``): ``<dir>/<TASK>/train.tsv``,
  ``dev.tsv``, ``test.tsv``; MNLI has ``dev_matched.tsv``/``dev_mismatched.tsv`` and
  ``test_matched.tsv``/``test_mismatched.tsv``. CoLA's train and dev files have no header, MRPC's
  start with a byte-order mark, QQP names its index column ``id``.

Label ids follow the hub's order on both sources, so a model trained on one evaluates on the other.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ticketlab.data.cache import file_sha256
from ticketlab.data.tsv import read_tsv
from ticketlab.errors import TicketlabError
from ticketlab.io import require_path

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTaskInfo:
    """One GLUE task: where its data is, how its rows read, how it is scored."""

    name: str  # canonical lower-case name, also the hub's configuration name
    folder: str  # folder name in the original layout
    hub_text_columns: tuple[str, ...]
    tsv_text_columns: tuple[str, ...]
    tsv_label_column: str
    # Label tokens in id order, spelled as in the TSV files and the leaderboard submission
    # format; None for the regression task (STS-B).
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] | None = None  # readable names (the hub's), in id order
    score_range: tuple[float, float] | None = None  # the regression task's scores, both ends included
    headerless_columns: tuple[str, ...] | None = None  # column names of headerless train/dev files
    tsv_index_column: str = "index"
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    submission_files: dict[str, str] = field(default_factory=dict)  # test split -> leaderboard file

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.dev_splits, *self.test_splits)

    def hub_split(self, split: str) -> str:
        """The hub's name of a split: ``dev`` is ``validation``, ``dev_matched`` ``validation_matched``."""
        return split.replace("dev", "validation", 1) if split.startswith("dev") else split


def _task(name: str, folder: str, texts: tuple[str, ...], **kwargs) -> GlueTaskInfo:
    kwargs.setdefault("tsv_text_columns", texts)
    kwargs.setdefault("submission_files", {"test": f"{folder}.tsv"})
    return GlueTaskInfo(name=name, folder=folder, hub_text_columns=texts, **kwargs)


_NLI = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTaskInfo] = {
    t.name: t
    for t in (
        _task(
            "cola",
            "CoLA",
            ("sentence",),
            tsv_label_column="label",
            labels=("0", "1"),
            label_names=("unacceptable", "acceptable"),
            metrics=("matthews", "accuracy"),
            main_metric="matthews",
            headerless_columns=("source", "label", "original_label", "sentence"),
        ),
        _task(
            "sst2",
            "SST-2",
            ("sentence",),
            tsv_label_column="label",
            labels=("0", "1"),
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        _task(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            tsv_text_columns=("#1 String", "#2 String"),
            tsv_label_column="Quality",
            labels=("0", "1"),
            label_names=("not_equivalent", "equivalent"),
            # Accuracy selects the best step, as in BERT-Tickets' figures; F1 is reported beside it.
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
        ),
        _task(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            tsv_label_column="score",
            labels=None,
            score_range=(0.0, 5.0),
            metrics=("pearson", "spearman"),
            main_metric="pearson",
        ),
        _task(
            "qqp",
            "QQP",
            ("question1", "question2"),
            tsv_label_column="is_duplicate",
            labels=("0", "1"),
            label_names=("not_duplicate", "duplicate"),
            metrics=("accuracy", "f1"),
            main_metric="accuracy",
            tsv_index_column="id",
        ),
        _task(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            tsv_text_columns=("sentence1", "sentence2"),
            tsv_label_column="gold_label",
            labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy_matched", "accuracy_mismatched"),
            main_metric="accuracy_matched",
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        ),
        _task(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            tsv_label_column="label",
            labels=_NLI,
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        _task(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            tsv_label_column="label",
            labels=_NLI,
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        _task(
            "wnli",
            "WNLI",
            ("sentence1", "sentence2"),
            tsv_label_column="label",
            labels=("0", "1"),
            label_names=("not_entailment", "entailment"),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
    )
}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def glue_task(name: str) -> GlueTaskInfo:
    """The task called ``name``: ``sst2``, ``SST-2``, ``STS-B``, ``CoLA``, ``MNLI`` all work."""
    key = _normalise(name)
    for task in GLUE_TASKS.values():
        if key in (task.name, _normalise(task.folder)):
            return task
    raise TicketlabError(f"unknown GLUE task {name!r} (known: {', '.join(GLUE_TASKS)})")


@dataclass
class GlueExamples:
    """The examples of one split: texts, labels (ids, floats for STS-B, None for test), indices."""

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int] | list[float] | None
    index: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.text_a)

    def head(self, count: int | None) -> GlueExamples:
        """The first ``count`` examples (all when ``count`` is None)."""
        if count is None or count >= len(self):
            return self
        return replace(
            self,
            text_a=self.text_a[:count],
            text_b=None if self.text_b is None else self.text_b[:count],
            labels=None if self.labels is None else self.labels[:count],
            index=self.index[:count],
        )

    def take(self, indices: list[int]) -> GlueExamples:
        """The examples at ``indices``, in that order."""
        if indices == list(range(len(self))):
            return self

        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return replace(
            self,
            text_a=pick(self.text_a),
            text_b=pick(self.text_b),
            labels=pick(self.labels),
            index=pick(self.index),
        )

    def digest(self) -> str:
        """sha256 of the content (texts, labels, indices): the same examples give the same digest."""
        hasher = hashlib.sha256()
        columns = [self.text_a, self.text_b or [], self.labels or [], self.index]
        for column in columns:
            hasher.update(f"{len(column)}\n".encode())
            for value in column:
                text = str(value)
                hasher.update(f"{len(text)}:".encode())
                hasher.update(text.encode())
        return hasher.hexdigest()


def _check_split(task: GlueTaskInfo, split: str) -> None:
    if split not in task.splits:
        raise TicketlabError(
            f"GLUE {task.name} has no split {split!r} (its splits: {', '.join(task.splits)})"
        )


def task_folder(task: GlueTaskInfo, data_dir: str | os.PathLike) -> Path:
    """The folder of ``task`` under ``data_dir`` (the GLUE root or the task folder itself)."""
    root = require_path(data_dir, "data directory", directory=True)
    wanted = _normalise(task.folder)
    for child in sorted(root.iterdir()):
        if child.is_dir() and _normalise(child.name) == wanted:
            return child
    if _normalise(root.name) == wanted or (root / "train.tsv").exists():
        return root
    raise TicketlabError(
        f"data directory {str(root)!r} has no {task.folder}/ folder (the original GLUE layout: "
        f"{root}/{task.folder}/train.tsv, dev.tsv, test.tsv)"
    )


def split_path(task: GlueTaskInfo, split: str, data_dir: str | os.PathLike) -> Path:
    _check_split(task, split)
    path = task_folder(task, data_dir) / f"{split}.tsv"
    if not path.is_file():
        raise TicketlabError(f"GLUE {task.name} {split} split: file {str(path)!r} does not exist")
    return path


def read_glue_tsv(task: GlueTaskInfo, split: str, path: str | os.PathLike) -> GlueExamples:
    """Parse one split's TSV file; bad rows and labels raise errors naming the file and line."""
    is_test = split.startswith("test")
    headerless = task.headerless_columns is not None and not is_test
    table = read_tsv(path, columns=task.headerless_columns if headerless else None)
    if not table.rows:
        raise TicketlabError(f"{path} has no examples")
    texts = [table.column(name) for name in task.tsv_text_columns]
    if task.tsv_index_column in table.columns:
        index = []
        for value, line in zip(table.column(task.tsv_index_column), table.line_numbers):
            try:
                index.append(int(value))
            except ValueError:
                raise TicketlabError(f"{path}, line {line}: index {value!r} is not an integer") from None
    else:
        index = list(range(len(table)))
    labels = None if is_test else _parse_labels(task, table.column(task.tsv_label_column), table, path)
    return GlueExamples(
        task=task.name,
        split=split,
        text_a=texts[0],
        text_b=texts[1] if len(texts) > 1 else None,
        labels=labels,
        index=index,
        source=str(path),
    )


def check_score(task: GlueTaskInfo, score: float, where: str) -> None:
    """A regression label must be a finite number in the task's range (STS-B: 0 to 5)."""
    low, high = task.score_range or (-math.inf, math.inf)
    if not (math.isfinite(score) and low <= score <= high):
        raise TicketlabError(f"{where}: {task.name} score {score!r} is not a number from {low:g} to {high:g}")


def _parse_labels(task: GlueTaskInfo, values: list[str], table, path) -> list[int] | list[float]:
    if task.labels is None:
        scores = []
        for value, line in zip(values, table.line_numbers):
            try:
                score = float(value)
            except ValueError:
                raise TicketlabError(f"{path}, line {line}: score {value!r} is not a number") from None
            check_score(task, score, f"{path}, line {line}")
            scores.append(score)
        return scores
    ids = {token: i for i, token in enumerate(task.labels)}
    labels = []
    for value, line in zip(values, table.line_numbers):
        label = ids.get(value.strip())
        if label is None:
            raise TicketlabError(
                f"{path}, line {line}: unknown {task.name} label {value!r} (expected one of: {', '.join(task.labels)})"
            )
        labels.append(label)
    return labels


def load_glue_hub(task: GlueTaskInfo, split: str) -> GlueExamples:
    """One split of the hub's ``nyu-mll/glue`` data set (downloaded and cached by ``datasets``)."""
    import datasets

    _check_split(task, split)
    hub_split = task.hub_split(split)
    try:
        data = datasets.load_dataset(HUB_DATASET, task.name, split=hub_split)
    except Exception as error:  # the hub raises many kinds (connection, not found, ...)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TicketlabError(
            f"could not load GLUE {task.name} {hub_split} from the hub ({HUB_DATASET}): {first_line}; "
            "for local files in the original GLUE layout pass --data-dir"
        ) from error
    if len(data) == 0:
        raise TicketlabError(f"the hub's GLUE {task.name} {hub_split} split has no examples")
    texts = [list(data[name]) for name in task.hub_text_columns]
    labels = list(data["label"])
    if split.startswith("test") or all(label == -1 for label in labels):
        labels = None  # the hub marks hidden test labels with -1
    elif task.labels is not None:
        bad = next((label for label in labels if not 0 <= int(label) < len(task.labels)), None)
        if bad is not None:
            raise TicketlabError(f"the hub's GLUE {task.name} {hub_split} split has unknown label {bad}")
        labels = [int(label) for label in labels]
    else:
        labels = [float(label) for label in labels]
        for i, score in enumerate(labels):
            check_score(task, score, f"the hub's GLUE {task.name} {hub_split} split, row {i}")
    return GlueExamples(
        task=task.name,
        split=split,
        text_a=texts[0],
        text_b=texts[1] if len(texts) > 1 else None,
        labels=labels,
        index=[int(i) for i in data["idx"]],
        source=f"{HUB_DATASET} {task.name}/{hub_split}",
    )


@dataclass
class GlueSource:
    """Where one split comes from; its :meth:`digest` names its content for the tokenisation cache.

    For local files the digest is the file's sha256 (so a cache hit needs no parsing); for the hub
    it is the digest of the loaded examples.
    """

    task: GlueTaskInfo
    split: str
    path: Path | None  # None: the hub
    _examples: GlueExamples | None = None

    def load(self) -> GlueExamples:
        if self._examples is None:
            if self.path is None:
                self._examples = load_glue_hub(self.task, self.split)
            else:
                self._examples = read_glue_tsv(self.task, self.split, self.path)
        return self._examples

    def digest(self) -> str:
        if self.path is not None:
            return "file-sha256:" + file_sha256(self.path)
        return "content-sha256:" + self.load().digest()

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{HUB_DATASET} {self.task.name}/{self.split}"


def glue_source(
    task: GlueTaskInfo | str, split: str, data_dir: str | os.PathLike | None = None
) -> GlueSource:
    """The source of one split: local TSV under ``data_dir``, or the hub when it is None."""
    info = glue_task(task) if isinstance(task, str) else task
    _check_split(info, split)
    path = split_path(info, split, data_dir) if data_dir is not None else None
    return GlueSource(info, split, path)


def load_glue_examples(
    task: GlueTaskInfo | str, split: str, data_dir: str | os.PathLike | None = None
) -> GlueExamples:
    """The examples of one split (local files under ``data_dir``, else the hub)."""
    return glue_source(task, split, data_dir).load()

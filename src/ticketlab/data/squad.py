"""SQuAD v1.1 questions: read the official JSON or the hub's data set, and split by article.

The official file nests ``data -> [article: title, paragraphs -> [context, qas -> [id, question,
answers -> [text, answer_start]]]]``. Every question becomes one :class:`SquadExample`; the reader
checks the layout and that each ``answer_start`` points at its answer text in the context, and names
the file and the offending entry when something is wrong.

This machine has only the dev set, so experiments here train on some of its articles and evaluate on
the others: :func:`split_by_article` keeps every article (Wikipedia page) on one side, because
questions about the same page share contexts and would leak answers across the split.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError

HUB_DATASET = "rajpurkar/squad"
# The official file names; a --data-dir holds one or both.
LOCAL_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "dev": "validation", "eval": "validation"}


@dataclass(frozen=True)
class SquadExample:
    """One question about one paragraph, with all its gold answers (dev has several per question)."""

    id: str
    title: str
    context: str
    question: str
    answer_texts: tuple[str, ...]
    answer_starts: tuple[int, ...]  # character offsets into ``context``, one per answer text


class SquadFormatError(TicketlabError):
    """A SQuAD file or data set row does not follow the v1.1 layout."""


def canonical_split(split: str) -> str:
    """``train`` or ``validation`` (``dev`` and ``eval`` accepted)."""
    try:
        return _SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise TicketlabError(f"unknown SQuAD split {split!r}: use train or validation (dev)") from None


def load_squad(data_path: str | Path | None = None, split: str = "validation") -> list[SquadExample]:
    """The questions of one split: from a local file or folder, or from the hub when ``data_path`` is None.

    ``data_path`` may be a SQuAD JSON file (read whatever the split) or a folder holding the official
    ``train-v1.1.json`` / ``dev-v1.1.json``.
    """
    split = canonical_split(split)
    if data_path is None:
        return load_squad_hub(split)
    path = Path(data_path)
    if path.is_dir():
        path = path / LOCAL_FILES[split]
        if not path.exists():
            raise TicketlabError(f"SQuAD {split} split: {path} does not exist")
    elif not path.exists():
        raise TicketlabError(f"SQuAD data {path} does not exist")
    return read_squad_json(path)


def read_squad_json(path: str | Path) -> list[SquadExample]:
    """All questions of an official-layout SQuAD v1.1 JSON file, in file order."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise SquadFormatError(f"{path}: not valid JSON ({error})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise SquadFormatError(f"{path}: cannot read ({error})") from error
    return parse_squad_document(document, source=str(path))


def parse_squad_document(document: Any, source: str = "SQuAD data") -> list[SquadExample]:
    """Questions of an already parsed official-layout document; errors name ``source`` and the entry."""
    articles = _field(document, "data", list, source, "top level")
    examples: list[SquadExample] = []
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        title = _field(article, "title", str, source, where)
        paragraphs = _field(article, "paragraphs", list, source, where)
        for p, paragraph in enumerate(paragraphs):
            where_paragraph = f"{where}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, source, where_paragraph)
            for q, qa in enumerate(_field(paragraph, "qas", list, source, where_paragraph)):
                where_qa = f"{where_paragraph}.qas[{q}]"
                qid = _field(qa, "id", str, source, where_qa)
                where_qa += f" (id {qid})"
                question = _field(qa, "question", str, source, where_qa)
                answers = _field(qa, "answers", list, source, where_qa)
                texts, starts = [], []
                for n, answer in enumerate(answers):
                    where_answer = f"{where_qa}.answers[{n}]"
                    texts.append(_field(answer, "text", str, source, where_answer))
                    starts.append(_field(answer, "answer_start", int, source, where_answer))
                examples.append(
                    _checked_example(qid, title, context, question, texts, starts, source, where_qa)
                )
    return _checked_collection(examples, source)


def examples_from_rows(rows: Iterable[dict[str, Any]], source: str = HUB_DATASET) -> list[SquadExample]:
    """Questions from the hub data set's flat rows (id, title, context, question, answers{text, answer_start})."""
    examples = []
    for r, row in enumerate(rows):
        where = f"row {r}"
        qid = _field(row, "id", str, source, where)
        where += f" (id {qid})"
        answers = _field(row, "answers", dict, source, where)
        texts = list(_field(answers, "text", list, source, where + ".answers"))
        starts = [int(start) for start in _field(answers, "answer_start", list, source, where + ".answers")]
        if len(texts) != len(starts):
            raise SquadFormatError(
                f"{source}: {where}: {len(texts)} answer texts but {len(starts)} answer_start"
            )
        examples.append(
            _checked_example(
                qid,
                _field(row, "title", str, source, where),
                _field(row, "context", str, source, where),
                _field(row, "question", str, source, where),
                texts,
                starts,
                source,
                where,
            )
        )
    return _checked_collection(examples, source)


def load_squad_hub(split: str = "validation") -> list[SquadExample]:
    """The hub's SQuAD v1.1 (``rajpurkar/squad``) split ``train`` or ``validation``."""
    import datasets

    split = canonical_split(split)
    try:
        rows = datasets.load_dataset(HUB_DATASET, split=split)
    except Exception as error:  # network, cache and hub errors come in many types
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TicketlabError(
            f"could not load {HUB_DATASET} ({split}) from the hub: {first_line}; "
            "pass a local folder with train-v1.1.json / dev-v1.1.json instead"
        ) from error
    return examples_from_rows(rows, source=f"{HUB_DATASET} ({split})")


def split_by_article(
    examples: Sequence[SquadExample], eval_fraction: float, seed: int = 0
) -> tuple[list[SquadExample], list[SquadExample]]:
    """Split questions into (train, eval) by article title, so no article is on both sides.

    ``round(eval_fraction * number of articles)`` articles (at least one, and at least one left for
    training) go to eval, drawn with ``random.Random(seed)`` from the titles in sorted order: the same
    titles, seed and fraction always give the same split, whatever the order of ``examples``. Each
    side keeps the input order.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise TicketlabError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    titles = sorted({example.title for example in examples})
    if len(titles) < 2:
        raise TicketlabError(f"cannot split by article: the questions come from {len(titles)} article(s)")
    num_eval = min(max(1, round(eval_fraction * len(titles))), len(titles) - 1)
    eval_titles = set(random.Random(seed).sample(titles, num_eval))
    train = [example for example in examples if example.title not in eval_titles]
    evaluation = [example for example in examples if example.title in eval_titles]
    return train, evaluation


def _field(container: Any, key: str, kind: type, source: str, where: str) -> Any:
    if not isinstance(container, dict):
        raise SquadFormatError(f"{source}: {where}: expected an object, found {type(container).__name__}")
    if key not in container:
        raise SquadFormatError(f"{source}: {where}: missing key {key!r}")
    value = container[key]
    # bool is an int in Python, but never a valid answer_start
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SquadFormatError(
            f"{source}: {where}: {key!r} should be {kind.__name__}, found {type(value).__name__}"
        )
    return value


def _checked_example(
    qid: str,
    title: str,
    context: str,
    question: str,
    texts: list[str],
    starts: list[int],
    source: str,
    where: str,
) -> SquadExample:
    if not texts:
        raise SquadFormatError(f"{source}: {where}: no answers (SQuAD v1.1 questions all have one)")
    for text, start in zip(texts, starts):
        if not text.strip():
            raise SquadFormatError(f"{source}: {where}: empty answer text")
        found = context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            raise SquadFormatError(
                f"{source}: {where}: answer_start {start} does not match the answer text {text!r} "
                f"(the context has {found!r} there)"
            )
    return SquadExample(qid, title, context, question, tuple(texts), tuple(starts))


def _checked_collection(examples: list[SquadExample], source: str) -> list[SquadExample]:
    if not examples:
        raise SquadFormatError(f"{source}: no questions")
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise SquadFormatError(f"{source}: question id {example.id!r} appears more than once")
        seen.add(example.id)
    return examples

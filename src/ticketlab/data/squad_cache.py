"""SQuAD windows through the content-addressed tokenisation cache, so a second run does not tokenise again.

The key holds what the questions are (the sha256 of the file they came from, or the hub's name, and
a digest of the selected questions themselves, which covers an article split and a sample cut), the
tokenizer, and the window settings (max length, stride, question length).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from ticketlab.data.cache import cached_dataset, tokenizer_digest
from ticketlab.data.squad import SquadExample
from ticketlab.data.squad_features import SquadEvalFeatures, prepare_eval_features, prepare_train_features


def examples_digest(examples: Sequence[SquadExample]) -> str:
    """sha256 of the questions (ids, titles, contexts, questions, answers), in order."""
    hasher = hashlib.sha256(f"{len(examples)}\n".encode())
    for example in examples:
        values = (example.id, example.title, example.context, example.question)
        values += example.answer_texts + tuple(str(start) for start in example.answer_starts)
        hasher.update(f"{len(example.answer_texts)}\n".encode())
        for value in values:
            hasher.update(f"{len(value)}:".encode())
            hasher.update(value.encode())
    return hasher.hexdigest()


def _key(
    kind: str,
    examples: Sequence[SquadExample],
    tokenizer: Any,
    source: str,
    max_length: int,
    stride: int,
    max_query_length: int,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": source,
        "examples": examples_digest(examples),
        "tokenizer": tokenizer_digest(tokenizer),
        "max_length": max_length,
        "stride": stride,
        "max_query_length": max_query_length,
    }


def cached_squad_train_features(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    *,
    source: str,
    max_length: int,
    stride: int,
    max_query_length: int,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
):
    """Training windows of ``examples`` (see :func:`prepare_train_features`), from the cache if there.

    ``source`` names where the questions came from (e.g. ``file-sha256:...``) for the cache key.
    """

    def build() -> dict[str, list]:
        features = prepare_train_features(
            examples, tokenizer, max_length, stride, max_query_length, progress=not quiet
        )
        return features.to_dict()

    key = _key("squad-train", examples, tokenizer, source, max_length, stride, max_query_length)
    return cached_dataset(key, build, cache_dir)


def cached_squad_eval_features(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    *,
    source: str,
    max_length: int,
    stride: int,
    max_query_length: int,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> SquadEvalFeatures:
    """Evaluation windows of ``examples`` (see :func:`prepare_eval_features`), from the cache if there."""

    def build() -> dict[str, list]:
        features = prepare_eval_features(
            examples, tokenizer, max_length, stride, max_query_length, progress=not quiet
        )
        return features.to_dataset().to_dict()

    key = _key("squad-eval", examples, tokenizer, source, max_length, stride, max_query_length)
    return SquadEvalFeatures.from_dataset(cached_dataset(key, build, cache_dir))

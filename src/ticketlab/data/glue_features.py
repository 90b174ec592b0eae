"""GLUE splits as tokenised ``datasets.Dataset`` objects, through the content-addressed cache."""

from __future__ import annotations

import os
from typing import Any

from ticketlab.data.cache import cached_dataset, tokenize_texts, tokenizer_digest
from ticketlab.data.glue import GlueTaskInfo, glue_source, glue_task
from ticketlab.data.subset import subset_indices
from ticketlab.errors import TicketlabError


def tokenized_glue_split(
    task: GlueTaskInfo | str,
    split: str,
    tokenizer: Any,
    *,
    max_length: int = 128,
    data_dir: str | os.PathLike | None = None,
    max_samples: int | None = None,
    subset: str = "first",
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
):
    """The first ``max_samples`` examples of a split (all if None), tokenised.

    Columns: the tokenizer's (``input_ids``, ``attention_mask``, ...), ``index`` (the example's
    index in the split, as the leaderboard wants it) and ``labels`` (absent on test splits).
    """
    info = glue_task(task) if isinstance(task, str) else task
    subset_indices(1, None, subset)  # an unknown subset fails before any work
    if max_samples is not None and max_samples < 1:
        raise TicketlabError(f"max samples must be at least 1, got {max_samples}")
    source = glue_source(info, split, data_dir)
    key = {
        "kind": "glue",
        "task": info.name,
        "split": split,
        "source": source.digest(),
        "max_samples": max_samples,
        **({"subset": subset} if subset != "first" else {}),  # older cache entries stay valid
        "tokenizer": tokenizer_digest(tokenizer),
        "max_length": max_length,
    }

    def build() -> dict[str, list]:
        loaded = source.load()
        examples = loaded.take(subset_indices(len(loaded), max_samples, subset))
        if len(examples) == 0:
            raise TicketlabError(f"GLUE {info.name} {split} ({source.describe()}) has no examples")
        columns = tokenize_texts(
            tokenizer,
            examples.text_a,
            examples.text_b,
            max_length=max_length,
            description=f"tokenising {info.name} {split}",
            quiet=quiet,
        )
        columns["index"] = list(examples.index)
        if examples.labels is not None:
            columns["labels"] = list(examples.labels)
        return columns

    return cached_dataset(key, build, cache_dir)

"""SQuAD questions -> model inputs: sliding windows over the context, as in BERT's protocol.

Each question is tokenised as ``[CLS] question [SEP] context [SEP]`` (question first, so only the
context is cut: ``truncation="only_second"``). A context longer than the room left in ``max_length``
is covered by several windows (features) that overlap by ``stride`` tokens, so every answer lies
whole inside at least one window unless it is longer than a window. Questions are cut to
``max_query_length`` tokens first (64, as BERT's run_squad did), so a very long question cannot
leave no room for the context.

* Training features carry ``start_positions`` / ``end_positions``: the token indices of the first
  gold answer, or the ``[CLS]`` index (both) when the answer is not wholly inside the window; that is
  what ``AutoModelForQuestionAnswering`` learns from.
* Evaluation features keep, per window, the id of its question and the character offsets of its
  tokens into the context, ``None`` for tokens that are not context (question, special tokens), so
  post-processing can map a token span back to the exact context text and reject spans outside it.

Features are unpadded; :func:`squad_collator` pads each batch to its longest window (dynamic
padding), which on a CPU is much faster than padding everything to ``max_length``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ticketlab.data.squad import SquadExample
from ticketlab.errors import TicketlabError

MAX_LENGTH = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 1000  # questions tokenised per call

Offset = tuple[int, int]


@dataclass
class SquadEvalFeatures:
    """Windows of evaluation questions: model inputs plus what post-processing needs per window."""

    inputs: Any  # datasets.Dataset of model inputs only (input_ids, attention_mask[, token_type_ids])
    example_ids: list[str]  # question id of each window
    offsets: list[list[Offset | None]]  # per window and token: (start, end) chars in the context, or None

    def __len__(self) -> int:
        return len(self.example_ids)

    def to_dataset(self):
        """One ``datasets.Dataset`` holding everything (for ``save_to_disk`` caches); see :meth:`from_dataset`."""
        return self.inputs.add_column("example_id", self.example_ids).add_column(
            "offset_mapping",
            [[list(offset) if offset else None for offset in window] for window in self.offsets],
        )

    @classmethod
    def from_dataset(cls, dataset) -> SquadEvalFeatures:
        """The features back from :meth:`to_dataset`'s form."""
        offsets = [
            [tuple(offset) if offset else None for offset in window] for window in dataset["offset_mapping"]
        ]
        return cls(
            dataset.remove_columns(["example_id", "offset_mapping"]), list(dataset["example_id"]), offsets
        )


def prepare_train_features(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    max_length: int = MAX_LENGTH,
    stride: int = DOC_STRIDE,
    max_query_length: int = MAX_QUERY_LENGTH,
    progress: bool = False,
):
    """Training windows as a ``datasets.Dataset``: model inputs, ``start_positions``, ``end_positions``.

    The label is the first gold answer (SQuAD training questions have exactly one).
    """
    import datasets

    columns: dict[str, list] = defaultdict(list)
    for window in _windows(examples, tokenizer, max_length, stride, max_query_length, progress):
        for name, values in window.inputs.items():
            columns[name].append(values)
        start_char = window.example.answer_starts[0]
        end_char = start_char + len(window.example.answer_texts[0])
        start, end = answer_token_span(window.offsets, window.sequence_ids, start_char, end_char)
        if start is None:
            start = end = cls_index(window.inputs["input_ids"], tokenizer)
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
    return datasets.Dataset.from_dict(dict(columns))


def prepare_eval_features(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    max_length: int = MAX_LENGTH,
    stride: int = DOC_STRIDE,
    max_query_length: int = MAX_QUERY_LENGTH,
    progress: bool = False,
) -> SquadEvalFeatures:
    """Evaluation windows: model inputs, each window's question id and its context offsets."""
    import datasets

    columns: dict[str, list] = defaultdict(list)
    example_ids, offsets = [], []
    for window in _windows(examples, tokenizer, max_length, stride, max_query_length, progress):
        for name, values in window.inputs.items():
            columns[name].append(values)
        example_ids.append(window.example.id)
        offsets.append(
            [
                tuple(offset) if sequence == 1 else None
                for offset, sequence in zip(window.offsets, window.sequence_ids)
            ]
        )
    return SquadEvalFeatures(datasets.Dataset.from_dict(dict(columns)), example_ids, offsets)


def answer_token_span(
    offsets: Sequence[Offset], sequence_ids: Sequence[int | None], start_char: int, end_char: int
) -> tuple[int, int] | tuple[None, None]:
    """Token indices (first, last) of the answer characters [start_char, end_char) in one window.

    (None, None) when the answer is not wholly inside the window's context tokens.
    """
    context_tokens = [token for token, sequence in enumerate(sequence_ids) if sequence == 1]
    if not context_tokens:
        return None, None
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None, None
    # the last context token starting at or before the answer, and the first one ending at or after it
    start = max(token for token in context_tokens if offsets[token][0] <= start_char)
    end = min(token for token in context_tokens if offsets[token][1] >= end_char)
    return start, end


def cls_index(input_ids: Sequence[int], tokenizer: Any) -> int:
    """Where the window's classifier token is (the "no answer here" label); 0 if it has none."""
    cls_id = tokenizer.cls_token_id
    return list(input_ids).index(cls_id) if cls_id is not None and cls_id in input_ids else 0


def squad_collator(tokenizer: Any, pad_to_multiple_of: int | None = None):
    """Pads a batch of features to its longest window and returns tensors (labels included)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")


@dataclass
class _Window:
    example: SquadExample
    inputs: dict[str, list[int]]
    offsets: list[Offset]
    sequence_ids: list[int | None]


def _windows(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    max_length: int,
    stride: int,
    max_query_length: int,
    progress: bool,
) -> Iterator[_Window]:
    """Every window of every question, in order (tokenised in chunks, for the progress bar and memory)."""
    from tqdm.auto import tqdm

    if not examples:
        raise TicketlabError("no SQuAD questions to tokenise")
    if not getattr(tokenizer, "is_fast", False):
        raise TicketlabError("SQuAD windows need a fast tokenizer (offset mappings)")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise TicketlabError("SQuAD windows put the question first and need padding_side='right'")
    room = max_length - max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if stride < 0 or stride >= room:
        raise TicketlabError(
            f"doc stride {stride} must be below the context room of a window "
            f"({max_length} - {max_query_length} question tokens - special tokens = {room})"
        )
    with tqdm(total=len(examples), desc="tokenising SQuAD", unit="question", disable=not progress) as bar:
        for begin in range(0, len(examples), _CHUNK):
            chunk = examples[begin : begin + _CHUNK]
            encoding = tokenizer(
                _capped_questions([example.question for example in chunk], tokenizer, max_query_length),
                [example.context for example in chunk],
                truncation="only_second",
                max_length=max_length,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding=False,
            )
            names = [name for name in MODEL_INPUT_NAMES if name in encoding]
            for window, example_index in enumerate(encoding["overflow_to_sample_mapping"]):
                yield _Window(
                    chunk[example_index],
                    {name: encoding[name][window] for name in names},
                    encoding["offset_mapping"][window],
                    encoding.sequence_ids(window),
                )
            bar.update(len(chunk))


def _capped_questions(questions: list[str], tokenizer: Any, max_query_length: int) -> list[str]:
    # Leading spaces make some dev questions tokenise oddly and waste room: strip them, as the
    # reference implementations do. A longer question is cut before the word holding its
    # (max_query_length + 1)-th token: cutting inside a word could re-tokenise into more pieces.
    questions = [question.strip() for question in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    capped = []
    for index, (question, offsets) in enumerate(zip(questions, encoded["offset_mapping"])):
        if len(offsets) > max_query_length:
            word_ids = encoded.word_ids(index)
            first = max_query_length
            while first > 0 and word_ids[first - 1] == word_ids[max_query_length]:
                first -= 1
            question = question[: offsets[first][0]].rstrip()
        capped.append(question)
    return capped

"""Sliding windows: labels point at the gold answer where a window holds it and at [CLS] elsewhere."""

from __future__ import annotations

import pytest

from tests.squad_fixtures import make_document, tiny_tokenizer
from ticketlab.data.squad import SquadExample, parse_squad_document
from ticketlab.data.squad_features import (
    answer_token_span,
    prepare_eval_features,
    prepare_train_features,
)
from ticketlab.errors import TicketlabError

MAX_LENGTH, STRIDE, MAX_QUERY = 32, 8, 8


@pytest.fixture
def tokenizer(tmp_path):
    return tiny_tokenizer(tmp_path)


@pytest.fixture
def examples():
    return parse_squad_document(make_document(num_articles=3, questions_per_paragraph=4, context_words=70))


def test_train_windows_label_the_answer_or_cls(tokenizer, examples):
    features = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    eval_features = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    assert len(features) == len(eval_features) > 2 * len(examples)  # 70 words need several windows
    by_id = {example.id: example for example in examples}
    found = dict.fromkeys(by_id, 0)
    for row, example_id, offsets in zip(features, eval_features.example_ids, eval_features.offsets):
        example = by_id[example_id]
        answer = example.answer_texts[0]
        start_char = example.answer_starts[0]
        context_offsets = [offset for offset in offsets if offset is not None]
        window_holds_answer = (
            context_offsets[0][0] <= start_char and start_char + len(answer) <= context_offsets[-1][1]
        )
        start, end = row["start_positions"], row["end_positions"]
        assert len(row["input_ids"]) <= MAX_LENGTH
        if window_holds_answer:
            found[example_id] += 1
            assert 0 < start <= end
            assert tokenizer.decode(row["input_ids"][start : end + 1]) == answer
            assert example.context[offsets[start][0] : offsets[end][1]] == answer
        else:
            assert start == end == 0
            assert row["input_ids"][0] == tokenizer.cls_token_id
    assert all(count >= 1 for count in found.values())  # every short answer lies whole in some window


def test_windows_overlap_by_stride_and_cover_the_context(tokenizer, examples):
    features = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    for example in examples:
        windows = [i for i, example_id in enumerate(features.example_ids) if example_id == example.id]
        context_spans = [[offset for offset in features.offsets[i] if offset is not None] for i in windows]
        for before, after in zip(context_spans, context_spans[1:]):
            assert before[-STRIDE:] == after[:STRIDE]
        covered = sorted({offset for span in context_spans for offset in span})
        whole = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
        assert covered == [tuple(offset) for offset in whole["offset_mapping"]]


def test_eval_offsets_are_none_exactly_outside_the_context(tokenizer, examples):
    features = prepare_eval_features(examples[:3], tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    assert set(features.inputs.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    for window in range(len(features)):
        token_types = features.inputs[window]["token_type_ids"]
        offsets = features.offsets[window]
        ids = features.inputs[window]["input_ids"]
        assert len(offsets) == len(ids)
        for token, (offset, token_type, token_id) in enumerate(zip(offsets, token_types, ids)):
            is_context = token_type == 1 and token_id != tokenizer.sep_token_id
            assert (offset is not None) == is_context, token


def test_long_question_is_cut_to_max_query_length(tokenizer):
    context = "alpha kappa beta lambda gamma"
    example = SquadExample("q", "T", context, " " + "who is " * 20 + "kappa?", ("kappa beta lambda",), (6,))
    features = prepare_train_features([example], tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    row = features[0]
    assert row["token_type_ids"].index(1) - 2 == MAX_QUERY  # [CLS] + question + [SEP] before the context
    assert (
        tokenizer.decode(row["input_ids"][row["start_positions"] : row["end_positions"] + 1])
        == "kappa beta lambda"
    )


def test_answer_token_span_handles_partial_tokens():
    offsets = [(0, 0), (0, 3), (0, 0), (0, 5), (6, 10), (10, 12), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, None]
    assert answer_token_span(offsets, sequence_ids, 6, 12) == (4, 5)
    assert answer_token_span(offsets, sequence_ids, 7, 11) == (4, 5)  # inside tokens: the covering ones
    assert answer_token_span(offsets, sequence_ids, 0, 5) == (3, 3)
    assert answer_token_span(offsets, sequence_ids, 8, 14) == (None, None)  # runs past the window


def test_bad_settings_are_clear(tokenizer, examples):
    with pytest.raises(TicketlabError, match="doc stride 30 must be below"):
        prepare_train_features(examples, tokenizer, MAX_LENGTH, 30, MAX_QUERY)
    with pytest.raises(TicketlabError, match="no SQuAD questions"):
        prepare_eval_features([], tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)


def test_eval_features_round_trip_through_a_saved_dataset(tokenizer, examples, tmp_path):
    import datasets

    features = prepare_eval_features(examples[:4], tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    features.to_dataset().save_to_disk(str(tmp_path / "cache"))
    loaded = type(features).from_dataset(datasets.load_from_disk(str(tmp_path / "cache")))
    assert loaded.example_ids == features.example_ids
    assert loaded.offsets == features.offsets
    assert loaded.inputs.column_names == features.inputs.column_names
    assert loaded.inputs["input_ids"] == features.inputs["input_ids"]


def test_chunked_tokenisation_gives_the_same_windows(tokenizer, examples, monkeypatch):
    from ticketlab.data import squad_features

    whole_train = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    whole_eval = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    monkeypatch.setattr(squad_features, "_CHUNK", 5)  # several chunks, the last one partial
    chunked_train = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY, progress=True)
    chunked_eval = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE, MAX_QUERY)
    assert chunked_train.to_dict() == whole_train.to_dict()
    assert chunked_eval.example_ids == whole_eval.example_ids and chunked_eval.offsets == whole_eval.offsets
    assert chunked_eval.inputs.to_dict() == whole_eval.inputs.to_dict()

"""SquadTask end to end: oracle logits and an oracle model give EM = F1 = 100; evaluation with a model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import shared_path
from tests.squad_fixtures import ANSWER_FIRST, ANSWER_LAST, make_document, tiny_tokenizer
from ticketlab.data.squad import parse_squad_document
from ticketlab.errors import TicketlabError
from ticketlab.models.tiny import tiny_model
from ticketlab.training.squad_task import SquadTask, evaluate_squad, write_predictions

ANSWERS_IN_DEV = 34726  # gold answers over all questions (several per question)
SMALL = SquadTask(max_length=32, stride=8, max_query_length=8)


@pytest.fixture
def tokenizer(tmp_path):
    return tiny_tokenizer(tmp_path)


@pytest.fixture
def examples():
    return parse_squad_document(
        make_document(num_articles=3, questions_per_paragraph=3, context_words=60, seed=3)
    )


def _oracle_logits(train_features, eval_features):
    """Logits peaked at the labelled answer tokens of each window (at [CLS] where it has none)."""
    starts, ends = [], []
    for row, offsets in zip(train_features, eval_features.offsets):
        start, end = np.zeros(len(offsets)), np.zeros(len(offsets))
        start[row["start_positions"]] = end[row["end_positions"]] = 10.0
        starts.append(start)
        ends.append(end)
    return starts, ends


def test_oracle_logits_reproduce_the_gold_answers(tokenizer, examples):
    train_features = SMALL.prepare_train_features(examples, tokenizer)
    eval_features = SMALL.prepare_eval_features(examples, tokenizer)
    starts, ends = _oracle_logits(train_features, eval_features)
    predictions = SMALL.postprocess(examples, eval_features, starts, ends)
    assert predictions == {example.id: example.answer_texts[0] for example in examples}
    assert SMALL.compute_metrics(predictions, examples) == {"exact_match": 100.0, "f1": 100.0}


class OracleModel(nn.Module):
    """Scores the tokens "kappa" (start) and "lambda" (end) high: the right answer in every question."""

    def __init__(self, tokenizer):
        super().__init__()
        self.first, self.last = tokenizer.convert_tokens_to_ids([ANSWER_FIRST, ANSWER_LAST])
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.calls = []

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        self.calls.append((self.training, torch.is_grad_enabled(), input_ids.shape))
        start = (input_ids == self.first).float() * 10 + self.anchor
        end = (input_ids == self.last).float() * 10 + self.anchor
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


def test_evaluate_with_an_oracle_model(tokenizer, examples):
    model = OracleModel(tokenizer)
    model.train()
    metrics, predictions = SMALL.evaluate(model, tokenizer, examples, batch_size=4)
    assert metrics == {"exact_match": 100.0, "f1": 100.0}
    assert predictions == {example.id: example.answer_texts[0] for example in examples}
    assert model.training  # the caller's mode comes back
    assert all(not training and not grad for training, grad, _ in model.calls)
    # dynamic padding: batches are as long as their longest window, never more than max_length
    assert max(shape[1] for _, _, shape in model.calls) <= SMALL.max_length
    assert sum(shape[0] for _, _, shape in model.calls) == len(
        SMALL.prepare_eval_features(examples, tokenizer)
    )


def test_evaluate_squad_with_a_tiny_qa_model_and_a_training_step(tokenizer, examples):
    from torch.utils.data import DataLoader
    from transformers import AutoModelForQuestionAnswering, BertForQuestionAnswering

    assert SMALL.model_class is AutoModelForQuestionAnswering
    model = tiny_model("bert", seed=0, model_class=BertForQuestionAnswering, vocab_size=len(tokenizer))
    train_set = SMALL.prepare_train_features(examples, tokenizer)
    batch = next(iter(DataLoader(train_set, batch_size=8, collate_fn=SMALL.collator(tokenizer))))
    assert {"input_ids", "attention_mask", "start_positions", "end_positions"} <= set(batch)
    model.train()
    model(**batch).loss.backward()  # the features are what the model's loss expects
    metrics, predictions = evaluate_squad(model, tokenizer, examples, batch_size=16, task=SMALL)
    assert set(predictions) == {example.id for example in examples}
    for example in examples:
        assert predictions[example.id] in example.context
    assert set(metrics) == {"exact_match", "f1"} and all(0 <= value <= 100 for value in metrics.values())
    # the same predictions from features prepared once and passed in
    features = SMALL.prepare_eval_features(examples, tokenizer)
    again = evaluate_squad(model, tokenizer, examples, 5, "cpu", task=SMALL, features=features)
    assert again[1] == predictions
    # batching windows by length only changes padding, which is masked: same answers
    unsorted = evaluate_squad(
        model, tokenizer, examples, 7, task=SMALL, features=features, sort_by_length=False
    )
    assert unsorted == (metrics, predictions)


def test_load_splits_uses_train_file_or_splits_dev_by_article(tmp_path):
    task = SquadTask()
    dev = make_document(num_articles=5, seed=1)
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(dev), encoding="utf-8")
    splits = task.load_splits(tmp_path, eval_fraction=0.4, seed=0)
    assert "dev split by article" in splits.protocol and "2 articles" in splits.protocol
    assert not {e.title for e in splits.train} & {e.title for e in splits.eval}
    assert len(splits.train) + len(splits.eval) == len(task.load(tmp_path / "dev-v1.1.json"))
    train = make_document(num_articles=2, seed=2)
    for article in train["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["id"] = "train-" + qa["id"]
    (tmp_path / "train-v1.1.json").write_text(json.dumps(train), encoding="utf-8")
    splits = task.load_splits(tmp_path)
    assert splits.protocol == "official train / dev"
    assert all(e.id.startswith("train-") for e in splits.train) and len(splits.eval) == 5 * 2 * 3


def test_write_predictions_is_the_official_json(tmp_path):
    path = write_predictions({"b": "Denver Broncos", "a": "café"}, tmp_path / "run" / "predictions.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "café", "b": "Denver Broncos"}
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temporary file left


def test_stride_too_large_for_the_window_is_a_clear_error(tokenizer, examples):
    with pytest.raises(TicketlabError, match="doc stride"):
        SquadTask(max_length=32, stride=24, max_query_length=8).prepare_eval_features(examples, tokenizer)


# ---- real-data tier: the official dev set and MiniLM-L6's tokenizer ---------------------------------


@pytest.fixture(scope="module")
def squad_dev():
    return SquadTask().load(shared_path("data", "squad", "dev-v1.1.json"))


@pytest.fixture(scope="module")
def minilm_dir():
    return shared_path("models", "all-MiniLM-L6-v2")


@pytest.mark.real_data
def test_real_dev_set_counts(squad_dev):
    assert len(squad_dev) == 10570
    assert len({example.title for example in squad_dev}) == 48
    assert sum(len(example.answer_texts) for example in squad_dev) == ANSWERS_IN_DEV
    splits = SquadTask().load_splits(
        shared_path("data", "squad", "dev-v1.1.json"), eval_fraction=0.25, seed=0
    )
    eval_titles = {example.title for example in splits.eval}
    assert len(eval_titles) == 12 and not eval_titles & {example.title for example in splits.train}
    assert len(splits.train) + len(splits.eval) == 10570
    # pinned: the default split must not drift between versions (results would stop comparing)
    default = SquadTask().load_splits(shared_path("data", "squad", "dev-v1.1.json"))
    assert (len(default.train), len(default.eval)) == (8309, 2261)


@pytest.mark.real_data
def test_real_oracle_logits_recover_almost_every_answer(squad_dev, minilm_dir):
    from ticketlab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(minilm_dir))
    task = SquadTask()
    sample = squad_dev[::10]  # 1,057 questions from every article
    train_features = task.prepare_train_features(sample, tokenizer)
    eval_features = task.prepare_eval_features(sample, tokenizer)
    assert len(eval_features) > len(sample)  # long contexts need more than one window
    predictions = task.postprocess(sample, eval_features, *_oracle_logits(train_features, eval_features))
    metrics = task.compute_metrics(predictions, sample)
    # Measured on the whole dev set: EM 99.70, F1 99.75. The misses are answers that end or start
    # inside a word piece ("gold" of "golden", "5" of "50"), which token spans cannot reproduce.
    assert metrics["exact_match"] >= 99.0 and metrics["f1"] >= 99.0


@pytest.mark.real_data
def test_real_minilm_untrained_head_evaluates(squad_dev, minilm_dir):
    from ticketlab.models.loading import load_encoder, load_tokenizer

    task = SquadTask()
    tokenizer = load_tokenizer(str(minilm_dir))
    torch.manual_seed(0)
    model = load_encoder(str(minilm_dir), model_class=task.model_class)
    sample = squad_dev[:32]  # ~6 s on two busy CPU cores
    metrics, predictions = task.evaluate(model, tokenizer, sample, batch_size=16)
    assert set(predictions) == {example.id for example in sample}
    assert all(predictions[example.id] in example.context for example in sample)
    assert all(0.0 <= metrics[key] <= 100.0 for key in ("exact_match", "f1"))

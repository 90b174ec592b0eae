"""``ticketlab finetune --task squad`` end to end: generated SQuAD JSON, a tiny BERT, the real-data tier."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import shared_path
from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from tests.squad_fixtures import ANSWER_FIRST, ANSWER_LAST, make_document, tiny_tokenizer
from ticketlab.cli import main
from ticketlab.data.squad import parse_squad_document
from ticketlab.errors import TicketlabError
from ticketlab.experiments.finetune import FinetuneSpec
from ticketlab.models import load_tokenizer
from ticketlab.models.tiny import tiny_model
from ticketlab.training.squad_metrics import compute_squad_metrics
from ticketlab.training.squad_task import SquadTask, evaluate_squad

# Windows short enough that the generated contexts (120 words) need two or three each.
WINDOW_ARGS = ["--max-length", "96", "--doc-stride", "24"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model_dir(tmp_path):
    """A tiny bare BERT saved with a word-level tokenizer (the QA head is added by the task)."""
    path = tmp_path / "model"
    path.mkdir()
    tokenizer = tiny_tokenizer(path)
    tiny_model("bert", seed=0, max_position_embeddings=128).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def document():
    return make_document(
        num_articles=5, paragraphs_per_article=2, questions_per_paragraph=3, context_words=120
    )


@pytest.fixture
def dev_only(tmp_path, document):
    """A folder with only dev-v1.1.json, as on this machine."""
    folder = tmp_path / "squad"
    folder.mkdir()
    (folder / "dev-v1.1.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def finetune(model_dir, data_dir, out, *extra):
    args = ["finetune", "--model", str(model_dir), "--task", "squad", "--out", str(out), "--quiet"]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    return main([*args, *extra])


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_squad_end_to_end_and_cache(tmp_path, model_dir, dev_only, capsys, monkeypatch):
    out = tmp_path / "run"
    assert finetune(model_dir, dev_only, out, *WINDOW_ARGS, "--epochs", "1", "--json") == 0
    results = read_json(out / "results.json")
    assert json.loads(capsys.readouterr().out) == results
    assert results["task"] == "squad" and results["main_metric"] == "f1"
    assert set(results["best"]) == set(results["final"]) == {"exact_match", "f1"}
    assert all(0.0 <= v <= 100.0 for v in [*results["best"].values(), *results["final"].values()])
    assert results["max_length"] == 96 and results["doc_stride"] == 24 and results["max_query_length"] == 64
    assert results["protocol"].startswith("dev split by article (no train set): 4 articles / 24 questions")
    assert results["files"] == ["predictions.json"]

    # The recipe defaults are SQuAD's where the user set nothing.
    spec = read_json(out / "spec.json")
    assert (spec["lr"], spec["batch_size"], spec["epochs"]) == (3e-5, 16, 1)

    # The article split, computed independently: train windows give the step count.
    task = SquadTask(max_length=96, stride=24)
    splits = task.load_splits(dev_only)
    tokenizer = load_tokenizer(str(model_dir))
    windows = len(task.prepare_train_features(splits.train, tokenizer))
    assert windows > len(splits.train)  # long contexts: several windows per question
    assert results["train_examples"] == windows and results["training_steps"] == math.ceil(windows / 16)
    assert results["eval_examples"] == {"dev": len(splits.eval)} == {"dev": 6}

    # predictions.json: the official form, every eval question, scores as in results.json.
    predictions = read_json(out / "predictions.json")
    assert set(predictions) == {example.id for example in splits.eval}
    contexts = {example.id: example.context for example in splits.eval}
    assert all(answer in contexts[qid] for qid, answer in predictions.items())
    assert compute_squad_metrics(predictions, splits.eval) == pytest.approx(results["final"])

    # A second run reads the windows from the cache: tokenising again would fail here.
    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr("ticketlab.data.squad_cache.prepare_train_features", no_tokenising)
    monkeypatch.setattr("ticketlab.data.squad_cache.prepare_eval_features", no_tokenising)
    again = tmp_path / "again"
    assert finetune(model_dir, dev_only, again, *WINDOW_ARGS, "--epochs", "1") == 0
    assert read_json(again / "predictions.json") == predictions  # same seed, same run
    assert read_json(again / "results.json")["final"] == results["final"]
    # Another stride is another key.
    with pytest.raises(AssertionError, match="tokenised again"):
        finetune(model_dir, dev_only, tmp_path / "other", "--max-length", "96", "--doc-stride", "16")


def test_training_learns_the_answers(tmp_path, model_dir, dev_only):
    """Answers are the "kappa ... lambda" spans: a tiny model trained through the loop finds them."""
    out = tmp_path / "run"
    args = [*WINDOW_ARGS, "--epochs", "6", "--lr", "3e-3", "--batch-size", "8", "--eval-every", "10"]
    assert finetune(model_dir, dev_only, out, *args) == 0
    results = read_json(out / "results.json")
    assert results["best"]["f1"] >= 80.0, results["best"]
    assert results["best"]["f1"] >= results["final"]["f1"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evaluations = [entry for entry in log if entry["event"] == "eval"]
    assert len(evaluations) >= 2 and results["best_step"] in {entry["step"] for entry in evaluations}


def test_mask_holds_and_official_train_file(tmp_path, model_dir, dev_only, document):
    from ticketlab.masks import save_mask
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune

    mask = prune(load_encoder(str(model_dir)), "omp", 0.5, scope="encoder", scheme="per-matrix")
    mask_path = save_mask(mask, tmp_path / "omp.safetensors")
    train = make_document(num_articles=2, questions_per_paragraph=2, context_words=120, seed=7)
    (dev_only / "train-v1.1.json").write_text(json.dumps(train), encoding="utf-8")
    out = tmp_path / "run"
    assert finetune(model_dir, dev_only, out, *WINDOW_ARGS, "--epochs", "1", "--mask", str(mask_path)) == 0
    results = read_json(out / "results.json")
    assert results["pruned_nonzero"] == 0 and results["sparsity"] == pytest.approx(mask.sparsity)
    assert results["protocol"] == "official train / dev"
    assert set(read_json(out / "predictions.json")) == {e.id for e in parse_squad_document(document)}


def test_recipe_defaults_follow_the_task():
    squad = FinetuneSpec(model="m", task="squad")
    assert (squad.lr, squad.batch_size, squad.epochs, squad.max_length, squad.doc_stride) == (
        3e-5,
        16,
        2,
        384,
        128,
    )
    glue = FinetuneSpec(model="m", task="rte")
    assert (glue.lr, glue.batch_size, glue.epochs, glue.max_length, glue.doc_stride) == (
        2e-5,
        32,
        3,
        128,
        None,
    )
    explicit = FinetuneSpec(model="m", task="squad", lr=1e-4, max_length=256, doc_stride=64)
    assert (explicit.lr, explicit.batch_size, explicit.max_length, explicit.doc_stride) == (1e-4, 16, 256, 64)
    # Spelling out the defaults is the same run.
    same = FinetuneSpec(model="m", task="squad", lr=3e-5, batch_size=16, epochs=2, max_length=384)
    assert same.digest() == squad.digest() != explicit.digest()
    assert FinetuneSpec.from_dict(squad.to_dict()) == squad
    with pytest.raises(TicketlabError, match="doc stride applies to SQuAD"):
        FinetuneSpec(model="m", task="rte", doc_stride=64)


def test_bad_input_is_one_line(tmp_path, model_dir, dev_only, capsys):
    assert finetune(model_dir, dev_only, tmp_path / "a", "--predict-test") == 2
    assert "task squad has no test splits to predict" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert finetune(model_dir, tmp_path / "empty", tmp_path / "b") == 2
    assert "data directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert finetune(model_dir, tmp_path / "empty", tmp_path / "c") == 2
    assert "dev-v1.1.json does not exist" in capsys.readouterr().err
    # the stride must leave room for context in a window
    assert finetune(model_dir, dev_only, tmp_path / "d", "--max-length", "96", "--doc-stride", "40") == 2
    err = capsys.readouterr().err.strip()
    assert "doc stride 40 must be below" in err and "\n" not in err
    assert not (tmp_path / "d" / "results.json").exists()


def test_hub_is_the_default_source(tmp_path, model_dir, document, monkeypatch):
    import datasets

    rows = {"train": make_document(num_articles=2, context_words=120, seed=5), "validation": document}

    def fake_load_dataset(path, split):
        assert path == "rajpurkar/squad"
        flat = [
            {
                "id": qa["id"] + ("-train" if split == "train" else ""),
                "title": article["title"],
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": {
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                },
            }
            for article in rows[split]["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
        return datasets.Dataset.from_list(flat)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "run"
    assert finetune(model_dir, None, out, *WINDOW_ARGS, "--epochs", "1", "--max-eval-samples", "7") == 0
    results = read_json(out / "results.json")
    assert results["protocol"] == "official train / dev" and results["eval_examples"] == {"dev": 7}
    assert len(read_json(out / "predictions.json")) == 7


class OracleQA(torch.nn.Module):
    """Start logits high on "kappa", end logits high on "lambda": every generated answer exactly."""

    def __init__(self, tokenizer):
        super().__init__()
        self.first, self.last = tokenizer.convert_tokens_to_ids([ANSWER_FIRST, ANSWER_LAST])
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        start = (input_ids == self.first).float() * 10 + self.anchor
        end = (input_ids == self.last).float() * 10 + self.anchor
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


def test_task_predict_matches_evaluate_squad(tmp_path, model_dir, dev_only):
    """The Task's batched, gathered prediction gives what the plain evaluation loop gives."""
    from accelerate import Accelerator
    from transformers import BertForQuestionAnswering

    from ticketlab.training.tasks import DataOptions, TaskEvaluator, get_task

    tokenizer = load_tokenizer(str(model_dir))
    task = get_task("SQuAD")
    options = DataOptions(
        max_length=96, doc_stride=24, data_dir=dev_only, cache_dir=tmp_path / "c", quiet=True
    )
    data = task.eval_data("dev", tokenizer, options)
    accelerator = Accelerator(cpu=True)
    model = tiny_model("bert", seed=3, model_class=BertForQuestionAnswering, max_position_embeddings=128)
    predicted = task.predict(model, data, accelerator, batch_size=5)
    metrics, reference = evaluate_squad(
        model, tokenizer, data.examples, 4, task=SquadTask(max_length=96, stride=24), sort_by_length=False
    )
    assert dict(zip(predicted.index, predicted.predictions)) == reference
    assert task.metrics({"dev": predicted}) == pytest.approx(metrics)

    evaluator = TaskEvaluator(task, {"dev": data}, batch_size=3)
    assert evaluator(OracleQA(tokenizer), accelerator) == {"exact_match": 100.0, "f1": 100.0}
    written = task.write_predictions(evaluator.predictions, tmp_path / "run")
    assert [p.name for p in written] == ["predictions.json"]
    assert read_json(written[0]) == {e.id: e.answer_texts[0] for e in data.examples}


# ---- real-data tier -------------------------------------------------------------------------------


@pytest.mark.real_data
def test_minilm_on_real_squad_dev_split(tmp_path):
    model = shared_path("models", "all-MiniLM-L6-v2")
    data = shared_path("data", "squad")
    out = tmp_path / "run"
    # 192-token windows (most contexts fit in one or two) keep this within a minute on two busy cores
    args = ["--max-train-samples", "64", "--max-eval-samples", "32", "--epochs", "1"]
    args += ["--max-length", "192", "--doc-stride", "64"]
    assert finetune(model, data, out, *args) == 0
    results = read_json(out / "results.json")
    assert all(0.0 <= results["final"][k] <= 100.0 for k in ("exact_match", "f1"))
    assert results["protocol"].startswith("dev split by article (no train set): 38 articles / 8309")
    assert results["eval_examples"] == {"dev": 32} and results["max_length"] == 192
    assert results["training_steps"] == math.ceil(results["train_examples"] / 16)
    predictions = read_json(out / "predictions.json")
    assert len(predictions) == 32


@pytest.mark.slow
def test_two_processes_predict_like_one(tmp_path, model_dir, dev_only):
    """torchrun with two CPU processes: windows sharded unevenly, logits gathered, the same answers
    as one process evaluating the same (untrained: lr 1e-12) model, and one predictions.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from accelerate.utils import set_seed

    from ticketlab.models import load_encoder

    out = tmp_path / "run"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ticketlab"]
    command += ["finetune", "--model", str(model_dir), "--task", "squad", "--data-dir", str(dev_only)]
    command += [*WINDOW_ARGS, "--epochs", "1", "--lr", "1e-12", "--eval-batch-size", "5", "--out", str(out)]
    completed = subprocess.run(
        [*command, "--quiet", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = read_json(out / "results.json")
    assert results["num_processes"] == 2 and results["eval_examples"] == {"dev": 6}

    task = SquadTask(max_length=96, stride=24)
    set_seed(0)  # as the run did before building the model: the same fresh QA head
    model = load_encoder(str(model_dir), model_class=task.model_class)
    examples = task.load_splits(dev_only).eval
    metrics, reference = evaluate_squad(model, load_tokenizer(str(model_dir)), examples, 4, task=task)
    assert read_json(out / "predictions.json") == reference
    assert results["final"] == pytest.approx(metrics)

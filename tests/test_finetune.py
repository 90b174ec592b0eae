"""``ticketlab finetune`` end to end on generated GLUE-layout data and a tiny BERT."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import shared_path
from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main

RESULT_KEYS = {
    "task",
    "main_metric",
    "best",
    "best_step",
    "final",
    "final_step",
    "sparsity",
    "scope",
    "scheme",
    "mask_sha256",
    "seed",
    "wall_seconds",
    "training_steps",
    "train_examples_per_second",
    "versions",
}


@pytest.fixture
def model_dir(tmp_path):
    return tiny_model_dir(tmp_path / "model")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


def finetune(model_dir, task, data_dir, out, *extra):
    args = ["finetune", "--model", str(model_dir), "--task", task, "--out", str(out), "--quiet"]
    args += ["--batch-size", "16", "--epochs", "1", "--lr", "1e-3"]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    return main([*args, *extra])


def read_tsv(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_rte_end_to_end(tmp_path, model_dir, capsys):
    data = write_glue_task(tmp_path / "glue", "rte", {"train": 48, "dev": 20, "test": 12})
    out = tmp_path / "run"
    assert finetune(model_dir, "RTE", data, out, "--predict-test", "--eval-every", "2", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    assert printed == results
    assert set(results) >= RESULT_KEYS
    assert results["task"] == "rte" and results["main_metric"] == "accuracy"
    assert set(results["best"]) == set(results["final"]) == {"accuracy"}
    assert results["training_steps"] == 3 and results["final_step"] == 3 and results["best_step"] in (2, 3)
    assert results["sparsity"] == 0.0 and results["mask_sha256"] is None and results["train_examples"] == 48
    assert results["versions"]["transformers"] and results["train_examples_per_second"] > 0
    assert json.loads((out / "spec.json").read_text())["task"] == "RTE"

    rows = read_tsv(out / "dev_predictions.tsv")
    assert rows[0] == ["index", "prediction", "label"] and len(rows) == 21
    gold = [line.split("\t")[3] for line in (data / "RTE" / "dev.tsv").read_text().splitlines()[1:]]
    assert [r[2] for r in rows[1:]] == gold
    accuracy = sum(r[1] == r[2] for r in rows[1:]) / 20
    assert accuracy == pytest.approx(results["final"]["accuracy"])

    submission = read_tsv(out / "submission" / "RTE.tsv")
    assert submission[0] == ["index", "prediction"] and [r[0] for r in submission[1:]] == [
        str(i) for i in range(12)
    ]
    assert {r[1] for r in submission[1:]} <= {"entailment", "not_entailment"}

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["event"] == "eval"] == [2, 3]
    assert [e["metrics"] for e in log if e["event"] == "eval"] == [
        e["metrics"] for e in results["evaluations"]
    ]
    assert log[-1]["event"] == "train_end"

    # Rerunning the same spec returns the finished run; another spec in the same folder is an error.
    before = (out / "results.json").read_text()
    assert finetune(model_dir, "RTE", data, out, "--predict-test", "--eval-every", "2") == 0
    assert "already holds this finished run" in capsys.readouterr().out
    assert (out / "results.json").read_text() == before
    assert finetune(model_dir, "RTE", data, out, "--seed", "1") == 2
    assert "different spec (differs in: eval_every, predict_test, seed)" in capsys.readouterr().err


def test_stsb_regression_and_mnli_submission(tmp_path, model_dir):
    data = tmp_path / "glue"
    write_glue_task(data, "stsb", {"train": 32, "dev": 16, "test": 8})
    write_glue_task(data, "mnli", {"train": 32, "dev": 16, "test": 8})
    assert finetune(model_dir, "STS-B", data, tmp_path / "stsb", "--predict-test") == 0
    results = json.loads((tmp_path / "stsb" / "results.json").read_text())
    assert set(results["final"]) == {"pearson", "spearman"} and results["main_metric"] == "pearson"
    rows = read_tsv(tmp_path / "stsb" / "submission" / "STS-B.tsv")
    assert len(rows) == 9 and all(isinstance(float(r[1]), float) for r in rows[1:])

    assert finetune(model_dir, "mnli", data, tmp_path / "mnli", "--predict-test") == 0
    results = json.loads((tmp_path / "mnli" / "results.json").read_text())
    assert set(results["best"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert results["eval_examples"] == {"dev_matched": 16, "dev_mismatched": 16}
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv"):
        rows = read_tsv(tmp_path / "mnli" / "submission" / name)
        assert len(rows) == 9 and {r[1] for r in rows[1:]} <= {"entailment", "neutral", "contradiction"}
    assert (tmp_path / "mnli" / "dev_mismatched_predictions.tsv").exists()


def test_ticket_is_held_and_recorded(tmp_path, model_dir, capsys):
    from ticketlab.masks import save_mask
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune

    mask = prune(load_encoder(str(model_dir)), "omp", 0.6, scope="encoder", scheme="per-matrix")
    mask_path = save_mask(mask, tmp_path / "omp.safetensors")
    data = write_glue_task(tmp_path / "glue", "cola", {"train": 32, "dev": 16})
    out = tmp_path / "run"
    assert finetune(model_dir, "cola", data, out, "--mask", str(mask_path), "--weight-decay", "0.1") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sparsity"] == pytest.approx(mask.sparsity) and results["pruned_nonzero"] == 0
    assert results["scope"] == "encoder" and results["scheme"] == "per-matrix"
    assert results["mask_sha256"] == hashlib.sha256(mask_path.read_bytes()).hexdigest()
    assert set(results["best"]) == {"matthews", "accuracy"}

    other = tiny_model_dir(tmp_path / "other", seed=1)  # same shapes, other weights
    assert finetune(other, "cola", data, tmp_path / "run2", "--mask", str(mask_path)) == 2
    assert "allow-fingerprint-mismatch" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "results.json").exists()
    assert (
        finetune(
            other, "cola", data, tmp_path / "run3", "--mask", str(mask_path), "--allow-fingerprint-mismatch"
        )
        == 0
    )


def test_same_seed_same_run(tmp_path, model_dir):
    data = write_glue_task(tmp_path / "glue", "mrpc", {"train": 32, "dev": 16})
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert finetune(model_dir, "mrpc", data, tmp_path / name, "--seed", seed, "--lr", "1e-2") == 0
        runs[name] = (
            (tmp_path / name / "dev_predictions.tsv").read_text(),
            (tmp_path / name / "log.jsonl").read_text(),
        )
    losses = {n: [json.loads(x).get("loss") for x in log.splitlines()] for n, (_, log) in runs.items()}
    assert runs["a"][0] == runs["b"][0] and losses["a"] == losses["b"]
    assert losses["a"] != losses["c"]


def test_spec_digest_names_the_non_default_fields():
    from ticketlab.experiments.finetune import FinetuneSpec

    spec = FinetuneSpec(model="bert-base-uncased", task="rte")
    # Pinned: a change here renames every run directory derived from a digest.
    assert spec.digest() == "8fed6bb0c4f87e4f"
    assert FinetuneSpec(model="bert-base-uncased", task="rte", lr=2e-5, seed=0).digest() == spec.digest()
    assert FinetuneSpec(model="bert-base-uncased", task="rte", seed=1).digest() != spec.digest()
    assert FinetuneSpec.from_dict(spec.to_dict()) == spec


def test_nan_loss_leaves_no_results(tmp_path, model_dir, capsys):
    data = write_glue_task(tmp_path / "glue", "sst2", {"train": 48, "dev": 8})
    out = tmp_path / "run"
    assert finetune(model_dir, "sst2", data, out, "--lr", "1e30") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ticketlab finetune: error: the training loss became") and "\n" not in err
    assert not (out / "results.json").exists() and not out.exists()  # nothing that looks like a run
    failed = tmp_path / ".run.failed" / "log.jsonl"  # the failed attempt's log is kept, and named
    assert str(failed) in err
    log = [json.loads(line) for line in failed.read_text().splitlines()]
    assert log[-1]["event"] == "error"
    assert finetune(model_dir, "sst2", data, out, "--lr", "1e-3") == 0  # the same --out, fixed: runs


def test_hub_is_the_default_source(tmp_path, model_dir, monkeypatch):
    import datasets

    from tests.glue_fixtures import sentence

    def fake_load_dataset(path, name, split):
        import random

        rng = random.Random(split)
        labels = [i % 2 for i in range(16)]
        return datasets.Dataset.from_dict(
            {"sentence": [sentence(rng, bool(y)) for y in labels], "label": labels, "idx": list(range(16))}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert finetune(model_dir, "sst2", None, tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["eval_examples"] == {"dev": 16}


def test_bad_input_is_one_line(tmp_path, model_dir, capsys):
    assert finetune(model_dir, "imdb", None, tmp_path / "a") == 2
    assert "unknown task 'imdb'" in capsys.readouterr().err
    assert finetune(model_dir, "rte", tmp_path / "missing", tmp_path / "b") == 2
    assert "data directory" in capsys.readouterr().err
    assert (
        main(
            [
                "finetune",
                "--model",
                str(model_dir),
                "--task",
                "rte",
                "--out",
                str(tmp_path / "c"),
                "--epochs",
                "0",
            ]
        )
        == 2
    )
    assert "epochs must be at least 1" in capsys.readouterr().err
    assert finetune(model_dir, "mnli", None, tmp_path / "d", "--main-metric", "accuracy") == 2
    assert (
        "no metric 'accuracy' (its metrics: accuracy_matched, accuracy_mismatched)" in capsys.readouterr().err
    )


@pytest.mark.real_data
@pytest.mark.parametrize(
    "task, metric, low, high",
    [("rte", "accuracy", 0.2, 0.8), ("stsb", "pearson", -1.0, 1.0), ("cola", "matthews", -1.0, 1.0)],
)
def test_minilm_on_real_glue(tmp_path, task, metric, low, high):
    model = shared_path("models", "all-MiniLM-L6-v2")
    data = shared_path("data", "glue")
    out = tmp_path / task
    args = ["--max-train-samples", "32", "--max-eval-samples", "32", "--max-length", "64", "--lr", "1e-4"]
    assert finetune(model, task, data, out, *args) == 0
    results = json.loads((out / "results.json").read_text())
    value = results["final"][metric]
    assert value is not None and low <= value <= high
    assert results["training_steps"] == 2 and results["eval_examples"] == {"dev": 32}
    assert len((out / "dev_predictions.tsv").read_text().splitlines()) == 33


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, model_dir):
    """torchrun with two CPU processes: DDP over gloo, one set of files, the mask held on both."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ticketlab.masks import save_mask
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune

    mask_path = save_mask(prune(load_encoder(str(model_dir)), "omp", 0.5), tmp_path / "omp.safetensors")
    data = write_glue_task(tmp_path / "glue", "rte", {"train": 32, "dev": 21, "test": 11})
    out = tmp_path / "run"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ticketlab"]
    command += ["finetune", "--model", str(model_dir), "--task", "rte", "--data-dir", str(data)]
    command += [
        "--mask",
        str(mask_path),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--predict-test",
        "--out",
        str(out),
    ]
    completed = subprocess.run(
        [*command, "--quiet", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2 and results["training_steps"] == 2  # 32 examples / (2 x 8)
    assert results["train_examples_seen"] == 32 and results["pruned_nonzero"] == 0
    assert results["eval_examples"] == {"dev": 21}  # the padding of uneven shards is dropped
    assert (
        len(read_tsv(out / "dev_predictions.tsv")) == 22
        and len(read_tsv(out / "submission" / "RTE.tsv")) == 12
    )
    assert json.loads(completed.stdout)["num_processes"] == 2  # one report, from the first process

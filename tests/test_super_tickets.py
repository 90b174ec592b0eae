"""Importance as a verb, and the super-ticket pipeline end to end on a tiny BERT and generated GLUE data."""

from __future__ import annotations

import json

import pytest
import torch

from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def world(tmp_path):
    """A tiny pre-trained model and MRPC-layout data (train 32, dev 16)."""
    model = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "mrpc", {"train": 32, "dev": 16})
    return model, data


RECIPE = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--log-every", "100"]


def test_finetune_saves_the_model_and_importance_scores_it(tmp_path, world, capsys):
    from ticketlab.pruning.importance import ImportanceScores

    model, data = world
    run = tmp_path / "run"
    args = ["finetune", "--model", str(model), "--task", "mrpc", "--data-dir", str(data), "--save-model"]
    assert main([*args, *RECIPE, "--out", str(run), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert "model" in results["files"] and (run / "model" / "model.safetensors").exists()
    capsys.readouterr()

    # The run directory gives the task, the data and the length; liang2021 scores on the training set.
    out = tmp_path / "scores.safetensors"
    assert main(["importance", "--model", str(run), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "liang2021 importance" in text and "32 examples" in text and f"wrote {out}" in text
    scores = ImportanceScores.load(out)
    assert scores.heads.shape == (2, 4) and scores.ffn.shape == (2,)
    assert scores.variant == "liang2021" and scores.num_examples == 32
    assert scores.info["task"] == "mrpc" and scores.info["split"] == "train"
    # L2-normalised per layer: every layer's head scores have unit norm.
    assert torch.allclose(scores.heads.norm(dim=1), torch.ones(2), atol=1e-5)

    # The same scores straight from compute_importance on the saved model and the same batches.
    from ticketlab.experiments.importance import importance_batches
    from ticketlab.models import load_tokenizer
    from ticketlab.pruning.importance import compute_importance
    from ticketlab.training.tasks import get_task

    task = get_task("mrpc")
    trained = task.build_model(str(run / "model"))
    batches = importance_batches(
        task, load_tokenizer(str(model)), split="train", batch_size=32, max_length=128, data_dir=data
    )
    direct = compute_importance(trained, batches, variant="liang2021")
    assert torch.allclose(direct.heads, scores.heads) and torch.allclose(direct.ffn, scores.ffn)

    # prasanna2020 scores on the dev set by default; --max-samples cuts it; --json has the scores.
    out2 = tmp_path / "dev.safetensors"
    argv = ["importance", "--model", str(run / "model"), "--task", "mrpc", "--data-dir", str(data)]
    argv += ["--variant", "prasanna2020", "--normalize", "minmax", "--max-samples", "10", "--out", str(out2)]
    assert main([*argv, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["variant"] == "prasanna2020" and payload["num_examples"] == 10
    assert payload["info"]["split"] == "dev" and payload["normalization"] == "minmax"
    heads = torch.tensor(payload["heads"])
    assert torch.allclose(heads.max(dim=1).values, torch.ones(2)) and torch.all(heads.min(dim=1).values == 0)


def test_importance_scores_the_fine_tuning_random_subset(tmp_path, world):
    """With max_samples and train_subset random, importance sees the examples fine-tuning trained on."""
    from ticketlab.experiments.importance import importance_batches
    from ticketlab.experiments.super_tickets import importance_options_for
    from ticketlab.models import load_tokenizer
    from ticketlab.training.tasks import DataOptions, get_task

    model, data = world
    task, tokenizer = get_task("mrpc"), load_tokenizer(str(model))
    options = importance_options_for("liang2021", {"max_train_samples": 10, "train_subset": "random"})
    assert options.train_subset == "random" and options.max_samples == 10

    def ids(batches):
        return [tuple(row[row != 0].tolist()) for batch in batches for row in batch["input_ids"]]

    kw = {"split": "train", "batch_size": 4, "max_length": 64, "data_dir": data, "max_samples": 10}
    scored = ids(importance_batches(task, tokenizer, train_subset="random", **kw))
    first = ids(importance_batches(task, tokenizer, **kw))
    trained = task.train_dataset(
        tokenizer, DataOptions(max_length=64, data_dir=data, max_train_samples=10, train_subset="random")
    )
    assert len(scored) == 10 and sorted(scored) == sorted(tuple(r) for r in trained["input_ids"])
    assert sorted(scored) != sorted(first)
    with pytest.raises(TicketlabError, match="train subset"):
        importance_options_for("liang2021", {"train_subset": "best"}).validate()


def test_importance_errors_are_one_line(tmp_path, world, capsys):
    model, data = world
    out = str(tmp_path / "s.safetensors")
    base = ["importance", "--task", "mrpc", "--data-dir", str(data), "--out", out, "--quiet"]
    # A pre-trained encoder has no trained task head.
    assert main([*base, "--model", str(model)]) == 2
    assert "no trained mrpc head" in capsys.readouterr().err
    # A fine-tuning run that did not keep its model.
    run = tmp_path / "run"
    assert main(["finetune", "--model", str(model), "--task", "mrpc", "--data-dir", str(data), *RECIPE, "--out", str(run), "--quiet"]) == 0  # fmt: skip
    assert main([*base, "--model", str(run)]) == 2
    assert "--save-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--model", str(run), "--variant", "magic"])
    assert "invalid choice: 'magic'" in capsys.readouterr().err
    # A model without --task and no run to take it from.
    assert main(["importance", "--model", str(model), "--out", out]) == 2
    assert "--task is needed" in capsys.readouterr().err
    assert main([*base, "--model", str(model), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "s.safetensors").exists()


def test_importance_refuses_a_head_of_another_task(tmp_path, world):
    from ticketlab.experiments.importance import load_task_model
    from ticketlab.training.tasks import get_task

    model, data = world
    classifier = get_task("mrpc").build_model(str(model))
    classifier.save_pretrained(tmp_path / "mrpc-model")
    with pytest.raises(TicketlabError, match="does not fit task stsb"):
        load_task_model(str(tmp_path / "mrpc-model"), get_task("stsb"))


class Crash(Exception):
    pass


def test_super_tickets_end_to_end_with_a_crash_and_resume(tmp_path, world, capsys, monkeypatch):
    import ticketlab.experiments.finetune as finetune_module
    from ticketlab.masks import load_mask
    from ticketlab.models import EncoderAdapter, load_encoder
    from ticketlab.training.tasks import get_task

    model, data = world
    out = tmp_path / "super"
    argv = ["super-tickets", "--model", str(model), "--task", "mrpc", "--data-dir", str(data)]
    argv += ["--levels", "0.25,0.5", "--seeds", "0,1", "--save-models", *RECIPE, "--out", str(out), "--quiet"]

    # Crash inside the 5th fine-tuning run (seed 0's third ticket), leaving a half-written step.
    real = finetune_module.run_finetune
    calls, crashed = [], []

    def crashing(spec, out_dir, **kwargs):
        calls.append(spec.mask)
        if len(calls) == 5 and not crashed:
            crashed.append(True)
            (out_dir / "log.jsonl").write_text("half")
            raise Crash
        return real(spec, out_dir, **kwargs)

    monkeypatch.setattr(finetune_module, "run_finetune", crashing)
    with pytest.raises(Crash):
        main(argv)
    finished = sorted(p.name for p in out.iterdir() if (p / "DONE").exists())
    # Order: seed 0's full model, importance, winning 0.25 and 0.5, random 0.25, then the crash.
    assert finished == [
        "full-seed0",
        "importance-seed0",
        "ticket-random-0.25-seed0",
        "ticket-winning-0.25-seed0",
        "ticket-winning-0.50-seed0",
    ]
    # The crashed step's half-written folder went with the exception, and so did its claim.
    assert not list(out.glob(".ticket-*.tmp")) and not list(out.glob(".*.claim"))
    stamp = (out / "ticket-winning-0.25-seed0" / "results.json").stat().st_mtime_ns

    calls.clear()
    assert main(argv) == 0  # resumes: only the unfinished steps run
    assert len(calls) == 2 + 2 * 3 * 2 - 4  # 2 full models and 12 tickets, less the 4 runs finished
    assert not list(out.glob(".*.tmp"))
    assert (out / "ticket-winning-0.25-seed0" / "results.json").stat().st_mtime_ns == stamp
    text = capsys.readouterr().out
    assert "super ticket: winning p=" in text and "full model:" in text
    summary = json.loads((out / "results.json").read_text())
    assert summary["super_ticket"]["kind"] == "winning" and (out / "phase_transition.png").stat().st_size > 0
    assert len(summary["points"]) == 6 and all(p["seeds"] == 2 for p in summary["points"])
    assert summary["full"]["n"] == 2 and len(summary["tickets"]) == 12
    # A finished run is summarised again without training.
    calls.clear()
    assert main([*argv, "--json"]) == 0 and calls == []
    assert json.loads(capsys.readouterr().out)["points"] == summary["points"]
    # ticketlab report reads it: the full model and one row per kind, columns by head fraction.
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "results.md").read_text()
    assert "Full model:" in table and "| super-losing |" in table and "| 25% | 50% |" in table

    # Exact counts: 2 and 4 of the 8 heads, at least one kept per layer; round(p x 10/12 x 2) FFN layers;
    # masks nested, random without repeats, the same counts for every kind.
    adapter = EncoderAdapter(load_encoder(str(model)))
    for seed in (0, 1):
        masks = {}
        for kind in ("winning", "random", "losing"):
            for level, heads, ffn in ((0.25, 2, 0), (0.5, 4, 1)):
                mask = load_mask(out / f"importance-seed{seed}" / "masks" / f"{kind}-{level:.2f}.safetensors")
                masks[kind, level] = mask
                assert int((~mask.heads).sum()) == heads and int((~mask.ffn).sum()) == ffn
                assert bool(mask.heads.any(dim=1).all())
            low, high = masks[kind, 0.25], masks[kind, 0.5]
            assert bool((high.heads <= low.heads).all()) and bool((high.ffn <= low.ffn).all())
        assert masks["winning", 0.5] != masks["losing", 0.5]

    # The fine-tuned ticket: pruned heads' Q/K/V rows and output columns are exactly zero, a pruned FFN
    # layer's weights too, and its output bias (gated off, so no gradient) is still the pre-trained one.
    step = out / "ticket-winning-0.50-seed0"
    record = json.loads((step / "ticket.json").read_text())
    mask = load_mask(out / "importance-seed0" / record["file"])
    tuned = EncoderAdapter(get_task("mrpc").build_model(str(step / "model")))
    results = json.loads((step / "results.json").read_text())
    assert (
        results["pruned_nonzero"] == 0
        and results["heads_pruned"] == 4
        and results["mask_kind"] == "structured"
    )
    d = adapter.head_dim
    for layer, head in torch.nonzero(~mask.heads).tolist():
        span = slice(head * d, (head + 1) * d)
        assert torch.count_nonzero(tuned.layer_linear(layer, "attention_output").weight[:, span]) == 0
        for role in ("query", "key", "value"):
            assert torch.count_nonzero(tuned.layer_linear(layer, role).weight[span]) == 0
    kept_layer, kept_head = torch.nonzero(mask.heads)[0].tolist()
    span = slice(kept_head * d, (kept_head + 1) * d)
    assert not torch.equal(  # the kept heads trained
        tuned.layer_linear(kept_layer, "query").weight[span],
        adapter.layer_linear(kept_layer, "query").weight[span],
    )
    for layer in torch.nonzero(~mask.ffn).flatten().tolist():
        assert torch.count_nonzero(tuned.layer_linear(layer, "ffn_in").weight) == 0
        assert torch.count_nonzero(tuned.layer_linear(layer, "ffn_out").weight) == 0
        assert torch.equal(
            tuned.layer_linear(layer, "ffn_out").bias, adapter.layer_linear(layer, "ffn_out").bias
        )
    # Weights remaining: a head owns 4 x hidden x head_dim weights, an FFN layer 2 x hidden x d_ff.
    total = sum(adapter.parameter(m.name).numel() for m in adapter.prunable_matrices("encoder"))
    expected = 1 - (4 * 4 * 32 * d + 1 * 2 * 32 * 64) / total
    assert record["weights_remaining"] == pytest.approx(expected)


def test_super_ticket_specs_are_checked(tmp_path, world):
    from ticketlab.experiments.super_tickets import SuperTicketSpec, run_super_tickets

    model, data = world
    bad = [
        (dict(levels=[0.0]), "levels are fractions"),
        (dict(levels=[0.5, 0.5]), "levels repeat"),
        (dict(kinds=["winning", "best"]), "unknown ticket kind 'best'"),
        (dict(variant="magic"), "unknown importance variant"),
        (dict(recipe={"learning_rate": 1}), "unknown recipe field"),
        (dict(levels=[0.9]), "leave a layer without heads"),
    ]
    for fields, message in bad:
        spec = SuperTicketSpec(model=str(model), task="mrpc", data_dir=str(data), **fields)
        with pytest.raises(TicketlabError, match=message):
            run_super_tickets(spec, tmp_path / "run", quiet=True, echo=lambda _: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_question_answering_losses_average_to_the_models_own_loss():
    from transformers import BertForQuestionAnswering

    from ticketlab.models.tiny import tiny_model
    from ticketlab.pruning.importance import question_answering_losses

    model = tiny_model("bert", seed=1, model_class=BertForQuestionAnswering)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 120, (4, 9), generator=generator),
        "attention_mask": torch.ones(4, 9, dtype=torch.long),
        "start_positions": torch.tensor([0, 3, 8, 2]),
        "end_positions": torch.tensor([1, 5, 8, 30]),  # 30 is past the window: ignored, as the model does
    }
    losses = question_answering_losses(model, batch)
    assert losses.shape == (4,)
    # Each example alone gives its own loss (with the model's loss for single examples in range).
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        assert torch.allclose(losses[i], model(**one).loss, atol=1e-6)
    ignored = {k: v[3:] for k, v in batch.items()}
    start = torch.nn.functional.cross_entropy(model(**ignored).start_logits, batch["start_positions"][3:])
    assert torch.allclose(losses[3], start / 2, atol=1e-6)


def test_minilm_importance_on_real_stsb(tmp_path):
    """Real-data tier: the scoring path reads the GLUE TSVs and scores MiniLM-L6's 6 x 12 heads."""
    from tests.conftest import shared_path
    from ticketlab.experiments.importance import ImportanceOptions, score_task_importance
    from ticketlab.models import load_tokenizer
    from ticketlab.training.tasks import get_task

    model_dir = shared_path("models", "all-MiniLM-L6-v2")
    glue = shared_path("data", "glue")
    model = get_task("stsb").build_model(str(model_dir))  # a fresh regression head is enough to score
    options = ImportanceOptions(variant="liang2021", max_samples=8, batch_size=4)
    scores = score_task_importance(
        model, "stsb", load_tokenizer(str(model_dir)), options, data_dir=glue, cache_dir=tmp_path, quiet=True
    )
    assert scores.heads.shape == (6, 12) and scores.ffn.shape == (6,)
    assert scores.num_examples == 8 and scores.num_batches == 2 and scores.info["split"] == "train"
    assert torch.allclose(scores.heads.norm(dim=1), torch.ones(6), atol=1e-5)
    assert bool((scores.ffn > 0).all())

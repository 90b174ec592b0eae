"""All tickets winning: the pruning loop with scripted scores and metrics (stopping rule, exact
counts, resume), and the pipeline end to end on a tiny BERT and generated GLUE-style data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.iterative_pruning import (
    ImportanceSchedule,
    MagnitudeSchedule,
    iterative_pruning,
    step_name,
)
from ticketlab.experiments.store import RunDirectory
from ticketlab.experiments.winning_tickets import WinningSpec
from ticketlab.masks import StructuredMask, UnstructuredMask, load_mask
from ticketlab.pruning.importance import ImportanceScores
from ticketlab.pruning.structured import last_step_above

L, H = 3, 4  # 12 heads, 3 FFN layers


class ScriptedScores:
    """Fixed random scores (pruned units score 0, as compute_importance), counting its calls."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.heads = torch.rand(L, H, generator=generator)
        self.ffn = torch.rand(L, generator=generator)
        self.calls = 0

    def __call__(self, mask: StructuredMask) -> ImportanceScores:
        self.calls += 1
        return ImportanceScores(self.heads * mask.heads, self.ffn * mask.ffn, variant="scripted")


def full_mask() -> StructuredMask:
    return StructuredMask(torch.ones(L, H, dtype=torch.bool), torch.ones(L, dtype=torch.bool))


def schedule(scores=None, per_step: int = 2, min_heads: int = 0) -> ImportanceSchedule:
    return ImportanceSchedule(
        scores or ScriptedScores(),
        full_mask,
        heads_per_step=lambda total: per_step,
        ffn_per_step=1,
        min_heads_per_layer=min_heads,
    )


def scripted(metrics: list[float], per_step: int = 2, crash_at: int | None = None):
    """Dev 'metric' of a mask: read from ``metrics`` by its step (heads pruned / per_step)."""

    def evaluate(mask):
        step = (L * H - int(mask.heads.sum())) // per_step
        if step == crash_at:
            raise KeyboardInterrupt  # killed while evaluating this step
        return {"accuracy": metrics[step]}

    return evaluate


def run_dir(tmp_path, name="run"):
    return RunDirectory.open(WinningSpec(model="m", task="sst2"), tmp_path / name)


def test_the_rule_keeps_the_step_before_the_first_below_90_percent(tmp_path):
    run = run_dir(tmp_path)
    metrics = [0.80, 0.79, 0.75, 0.73, 0.70, 0.60, 0.5]  # threshold 0.72: step 4 falls below
    trace, ticket = iterative_pruning(run, schedule(), scripted(metrics), metric="accuracy", echo=print)
    assert trace.reference == 0.80 and trace.threshold == pytest.approx(0.72)
    assert trace.stop_reason == "threshold" and trace.ticket_step == 3
    assert [s["metric"] for s in trace.steps] == metrics[:5]
    assert int(ticket.heads.sum()) == 12 - 3 * 2 and int(ticket.ffn.sum()) == 0
    assert ticket == load_mask(run.path / step_name(3) / "mask.safetensors")
    assert run.is_done(step_name(4)) and not (run.path / step_name(5)).exists()
    # The same rule as the one-line helper, on steps 1..n.
    assert 1 + last_step_above(metrics[1:5], 0.80) == 3


def test_each_step_prunes_exact_counts_of_the_least_important_survivors(tmp_path):
    scores = ScriptedScores(seed=3)
    trace, _ = iterative_pruning(
        run_dir(tmp_path), schedule(scores), scripted([0.8] * 8), metric="accuracy", echo=print
    )
    assert trace.stop_reason == "exhausted" and trace.ticket_step == 6  # everything pruned, rule never fired
    assert [s["heads_kept"] for s in trace.steps] == [12, 10, 8, 6, 4, 2, 0]
    assert [s["ffn_kept"] for s in trace.steps] == [3, 2, 1, 0, 0, 0, 0]
    # Each step removes the two lowest-scored surviving heads and the lowest-scored FFN layer.
    order = torch.argsort(scores.heads.reshape(-1)).tolist()
    ffn_order = torch.argsort(scores.ffn).tolist()
    masks = [load_mask(tmp_path / "run" / step_name(i) / "mask.safetensors") for i in range(7)]
    for index, (before, after) in enumerate(zip(masks, masks[1:])):
        removed = torch.nonzero((before.heads & ~after.heads).reshape(-1)).flatten().tolist()
        assert sorted(removed) == sorted(order[2 * index : 2 * index + 2])
        assert not (after.heads & ~before.heads).any()  # nested
        if index < 3:
            assert torch.nonzero(before.ffn & ~after.ffn).flatten().tolist() == [ffn_order[index]]


def test_one_head_per_layer_and_a_step_limit(tmp_path):
    trace, _ = iterative_pruning(
        run_dir(tmp_path, "min"), schedule(min_heads=1), scripted([0.8] * 8), metric="accuracy", echo=print
    )
    assert [s["heads_kept"] for s in trace.steps] == [12, 10, 8, 6, 4, 3]  # the last step prunes one
    assert trace.stop_reason == "exhausted"
    trace, ticket = iterative_pruning(
        run_dir(tmp_path, "cap"), schedule(), scripted([0.8] * 8), metric="accuracy", max_steps=2, echo=print
    )
    assert trace.stop_reason == "max_steps" and trace.ticket_step == 2 and int(ticket.heads.sum()) == 8


def test_a_nan_metric_counts_as_below_and_a_useless_reference_is_refused(tmp_path):
    trace, _ = iterative_pruning(
        run_dir(tmp_path, "nan"),
        schedule(),
        scripted([0.8, 0.8, math.nan, 0.8]),
        metric="accuracy",
        echo=print,
    )
    assert trace.ticket_step == 1 and trace.stop_reason == "threshold"
    assert last_step_above([0.9, math.nan], 1.0) == 0
    with pytest.raises(TicketlabError, match="positive reference"):
        iterative_pruning(run_dir(tmp_path, "zero"), schedule(), scripted([0.0] * 8), metric="accuracy")


def test_resume_after_a_kill_redoes_only_the_unfinished_step(tmp_path):
    metrics = [0.80, 0.79, 0.75, 0.74, 0.70, 0.6, 0.6]
    clean, clean_ticket = iterative_pruning(
        run_dir(tmp_path, "clean"), schedule(), scripted(metrics), metric="accuracy", echo=print
    )
    killed = ScriptedScores()
    with pytest.raises(KeyboardInterrupt):
        iterative_pruning(
            run_dir(tmp_path, "killed"), schedule(killed), scripted(metrics, crash_at=3), metric="accuracy"
        )
    path = tmp_path / "killed"
    assert run_dir(tmp_path, "killed").is_done(step_name(2)) and not (path / step_name(3)).exists()
    resumed = ScriptedScores()
    trace, ticket = iterative_pruning(
        run_dir(tmp_path, "killed"), schedule(resumed), scripted(metrics), metric="accuracy", echo=print
    )
    assert resumed.calls == 2  # steps 3 and 4 only: 1 and 2 were loaded
    assert not list(path.glob(".step_*"))  # the half-written step was cleaned up
    assert trace.to_dict() == clean.to_dict() and ticket == clean_ticket
    for i in range(5):
        a = load_mask(tmp_path / "clean" / step_name(i) / "mask.safetensors")
        assert a == load_mask(path / step_name(i) / "mask.safetensors")


def test_magnitude_steps_prune_a_tenth_of_the_remaining_weights(tmp_path, bert):
    from ticketlab.pruning import prune

    def prune_to(within, sparsity):
        params = {} if within is None else {"within": within}
        return prune(bert, "omp", sparsity, scope="encoder", scheme="global", **params)

    def evaluate(mask):
        return {"accuracy": 0.8 if mask.sparsity < 0.5 else 0.1}

    trace, ticket = iterative_pruning(
        run_dir(tmp_path), MagnitudeSchedule(prune_to, 0.1), evaluate, metric="accuracy", echo=print
    )
    masks = [load_mask(tmp_path / "run" / step_name(s["step"]) / "mask.safetensors") for s in trace.steps]
    kept = masks[0].num_weights()
    for before, after in zip(masks, masks[1:]):
        kept -= max(1, kept // 10)
        assert after.num_kept() == kept and (after - before).num_kept() == 0  # exact and nested
    assert isinstance(ticket, UnstructuredMask) and ticket.sparsity < 0.5 <= masks[-1].sparsity
    assert trace.steps[trace.ticket_step]["weights_remaining"] == pytest.approx(1 - ticket.sparsity)


def test_spec_checks_and_the_papers_head_count():
    spec = WinningSpec(model="m", task="mrpc")
    assert spec.heads_pruned_per_step(144) == 14 and spec.heads_pruned_per_step(72) == 7
    assert spec.heads_pruned_per_step(8) == 1  # at least one, as the paper's code
    assert WinningSpec(model="m", task="rte", heads_per_step=5).heads_pruned_per_step(144) == 5
    for bad in (
        {"task": "squad"},
        {"method": "movement"},
        {"seeds": [0, 0]},
        {"subnetworks": ["worst"]},
        {"threshold": 1.5},
        {"recipe": {"dropout": 0.2}},
    ):
        with pytest.raises(TicketlabError):
            WinningSpec(**{"model": "m", "task": "mrpc", **bad}).validate()


# -- end to end: tiny BERT, generated SST-2-layout data ------------------------------------------
RECIPE = ["--epochs", "10", "--batch-size", "16", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("winning")
    torch.set_num_threads(1)
    return {
        "root": root,
        "model": tiny_model_dir(root / "model", num_hidden_layers=3),
        "data": write_glue_task(root / "glue", "sst2", {"train": 64, "dev": 48, "test": 4}),
    }


def all_winning(world, out, *extra):
    args = ["all-winning", "--model", str(world["model"]), "--task", "sst2", "--data-dir", str(world["data"])]
    args += ["--cache-dir", str(world["root"] / "cache"), "--out", str(out), "--quiet", *RECIPE, *extra]
    return main(args)


@pytest.fixture(scope="module")
def importance_run(world):
    out = world["root"] / "importance"
    assert all_winning(world, out, "--seeds", "0,1", "--json") == 0
    return out


def test_importance_run_end_to_end(importance_run, capsys):
    results = json.loads((importance_run / "results.json").read_text())
    assert [s["seed"] for s in results["seeds"]] == [0, 1]
    for seed in results["seeds"]:
        trace = seed["pruning"]
        kept = [s["heads_kept"] for s in trace["steps"]]
        assert all(a - b == 1 for a, b in zip(kept, kept[1:]))  # max(1, floor(0.1 x 12)) per step
        ffn = [s["ffn_kept"] for s in trace["steps"]]
        assert ffn == [max(0, 3 - i) for i in range(len(ffn))]
        assert trace["stop_reason"] in ("threshold", "exhausted")
        # The rule: every step up to the ticket is at or above 0.9 x the full model, the next is not.
        for step in trace["steps"][1 : trace["ticket_step"] + 1]:
            assert step["metric"] >= 0.9 * trace["reference"]
        if trace["stop_reason"] == "threshold":
            assert trace["steps"][-1]["metric"] < 0.9 * trace["reference"]
        folder = importance_run / f"seed_{seed['seed']}"
        good, random, bad = (
            load_mask(folder / "subnetworks" / f"{k}.safetensors") for k in ("good", "random", "bad")
        )
        assert good == load_mask(folder / "ticket.safetensors")
        for other in (random, bad):
            assert int(other.heads.sum()) == int(good.heads.sum()) and int(other.ffn.sum()) == int(
                good.ffn.sum()
            )
        if int((~good.heads).sum()) >= int(good.heads.sum()):
            assert not (bad.heads & good.heads).any()  # drawn from the pruned heads only
        else:
            assert (bad.heads | good.heads).all()  # every pruned head, topped up with survivors
        for kind in ("good", "random", "bad"):
            retrained = json.loads((folder / f"retrain_{kind}" / "results.json").read_text())
            assert retrained["mask_kind"] == "structured" and retrained["pruned_nonzero"] == 0
            assert retrained["head_sparsity"] == pytest.approx(1 - int(good.heads.sum()) / 12)
        # The fine-tuned model's own final score is the rule's reference.
        full = json.loads((folder / "finetune" / "results.json").read_text())
        assert full["final"]["accuracy"] == pytest.approx(trace["reference"])
    report = importance_run / "report"
    for name in ("report.md", "report.json", "subnetworks.png", "pruning.png", "survival.png"):
        assert (report / name).stat().st_size > 0
    data = json.loads((report / "report.json").read_text())
    assert [r["subnetwork"] for r in data["table"]] == ["full", "good", "random", "bad"]
    assert all(r["n"] == 2 for r in data["table"])
    heads = data["stability"]["heads"]
    assert heads["raters"] == 2 and heads["units"] == 12
    tickets = [load_mask(importance_run / f"seed_{s}" / "ticket.safetensors") for s in (0, 1)]
    assert heads["kept_by_all"] == int((tickets[0].heads & tickets[1].heads).sum())


def test_rerun_skips_and_a_seed_alone_reproduces_its_ticket(world, importance_run, capsys):
    before = (importance_run / "seed_0" / "retrain_bad" / "results.json").read_text()
    assert all_winning(world, importance_run, "--seeds", "0,1") == 0  # everything done: nothing retrains
    assert (importance_run / "seed_0" / "retrain_bad" / "results.json").read_text() == before
    assert "| good |" in capsys.readouterr().out
    alone = world["root"] / "seed1-alone"
    assert all_winning(world, alone, "--seeds", "1", "--no-retrain") == 0
    a = json.loads((importance_run / "seed_1" / "pruning.json").read_text())
    b = json.loads((alone / "seed_1" / "pruning.json").read_text())
    assert a == b  # same seed, same fine-tuning, same scores, same steps
    assert load_mask(alone / "seed_1" / "ticket.safetensors") == load_mask(
        importance_run / "seed_1" / "ticket.safetensors"
    )
    assert not (alone / "seed_1" / "retrain_good").exists()


def test_magnitude_run_and_the_combined_report(world, importance_run, capsys):
    out = world["root"] / "magnitude"
    code = all_winning(
        world, out, "--method", "magnitude", "--max-steps", "3", "--no-retrain", "--threshold", "0.5"
    )
    assert code == 0
    seed = json.loads((out / "results.json").read_text())["seeds"][0]
    steps = seed["pruning"]["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3] and seed["pruning"]["stop_reason"] in (
        "max_steps",
        "threshold",
    )
    good, random, bad = (
        load_mask(out / "seed_0" / "subnetworks" / f"{k}.safetensors") for k in ("good", "random", "bad")
    )
    assert good.num_kept() == random.num_kept() == bad.num_kept()
    assert good.sparsity == pytest.approx(steps[seed["pruning"]["ticket_step"]]["sparsity"])
    capsys.readouterr()
    assert (
        main(
            [
                "all-winning-report",
                str(importance_run),
                str(out),
                "--out",
                str(world["root"] / "both"),
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in data["runs"]] == ["sst2 (importance)", "sst2 (magnitude)"]
    assert data["across_runs"]["heads"]["raters"] == 2
    assert (world["root"] / "both" / "survival_all.png").exists()


def test_bad_input_is_one_line(world, tmp_path, capsys):
    assert all_winning(world, tmp_path / "a", "--subnetworks", "good,worst") == 2
    assert "unknown subnetwork 'worst'" in capsys.readouterr().err
    assert main(["all-winning-report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a finished all-winning run" in capsys.readouterr().err


def test_real_data_minilm_on_mrpc_prunes_7_heads_and_one_ffn_per_step(tmp_path):
    from tests.conftest import shared_path

    model, glue = shared_path("models", "all-MiniLM-L6-v2"), shared_path("data", "glue", "MRPC")
    args = ["all-winning", "--model", str(model), "--task", "mrpc", "--data-dir", str(glue.parent)]
    args += ["--main-metric", "accuracy", "--max-train-samples", "32", "--max-eval-samples", "32"]
    args += ["--epochs", "1", "--lr", "1e-4", "--max-steps", "1", "--no-retrain", "--threshold", "0.1"]
    assert (
        main([*args, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    )
    trace = json.loads((tmp_path / "run" / "seed_0" / "pruning.json").read_text())
    assert [(s["heads_kept"], s["ffn_kept"]) for s in trace["steps"]] == [(72, 6), (65, 5)]
    assert trace["ticket_step"] == 1 and trace["stop_reason"] == "max_steps"
    # 7 heads of 4 x 384 x 32 weights and one FFN of 2 x 384 x 1536, over the encoder scope.
    scope = 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384
    expected = 1 - (7 * 4 * 384 * 32 + 2 * 384 * 1536) / scope
    assert trace["steps"][1]["weights_remaining"] == pytest.approx(expected)

"""TAMT in the ticket grid, search cost, and pre-training loss against downstream score in the report."""

import json
import random

import numpy as np
import pytest
import yaml
from scipy import stats

from tests.glue_fixtures import FILLER, one_thread, sentence, tiny_model_dir, write_glue_task  # noqa: F401
from ticketlab.analysis.aggregate import Cell
from ticketlab.analysis.pretrain_correlation import TicketLoss, correlation, correlations, loss_score_points
from ticketlab.analysis.search_cost import search_cost_of, summarize_search_costs
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.grid import GridSpec, tamt_spec_for
from ticketlab.experiments.imp import ImpSpec, level_name, run_imp
from ticketlab.experiments.store import spec_hash, spec_to_dict
from ticketlab.experiments.tamt import TamtSettings
from ticketlab.masks import read_header


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


# -- the spec ---------------------------------------------------------------------------------------
def test_new_sections_leave_existing_run_names_unchanged():
    # Hashes of grids made before the tamt and pretrain_loss sections existed: pinned.
    assert spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"])) == "a67b6d5f8d7e"
    older = dict(
        model="m",
        tasks=["stsb", "cola"],
        methods=["full", "omp", "random"],
        sparsities=[0.5, 0.7],
        scope="encoder+embeddings",
        scheme="per-matrix",
        recipe={"lr": 1e-4},
    )
    assert spec_hash(GridSpec(**older)) == "b0bb4f7c863b"
    with_tamt = GridSpec(**older, tamt={"text": "t.txt", "steps": 10})
    assert spec_hash(with_tamt) != "b0bb4f7c863b"
    # Only the section's own non-default settings count: a default spelt out changes nothing.
    same = GridSpec(**older, tamt=TamtSettings(text="t.txt", steps=10, objective="kd", lr=None))
    assert spec_hash(same) == spec_hash(with_tamt)
    # spec.json round trip (how the report reads a grid back)
    assert GridSpec(**json.loads(json.dumps(spec_to_dict(with_tamt)))) == with_tamt


def test_the_optimizer_setting_keeps_old_names_and_their_meaning(tmp_path):
    from ticketlab.experiments.tamt import TamtSpec

    text = tmp_path / "t.txt"
    text.write_text("the cat sat\n")
    base = dict(model="m", tasks=["rte"], methods=["omp", "tamt"], scope="encoder+embeddings")
    code_built = GridSpec(**base, tamt={"text": str(text), "steps": 10})  # as grids before the setting
    assert code_built.tamt.optimizer == "adamw"
    assert spec_hash(code_built) == spec_hash(GridSpec(**base, tamt=TamtSettings(text=str(text), steps=10)))
    files = {}
    for name, extra in (("silent", {}), ("adamw", {"optimizer": "adamw"})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "tamt": {"text": str(text), "steps": 10, **extra}}))
        files[name] = GridSpec.from_file(path)
    # A grid file that does not say gets the paper's optimizer, so it is another run directory;
    # one that says adamw is the old run (its directory and its meaning).
    assert (
        files["silent"].tamt.optimizer == "bertadam"
        and tamt_spec_for(files["silent"], 0.5).optimizer == "bertadam"
    )
    assert spec_hash(files["silent"]) != spec_hash(code_built)
    assert spec_hash(files["adamw"]) == spec_hash(code_built)
    # spec.json round trip keeps what ran
    assert GridSpec(**json.loads(json.dumps(spec_to_dict(files["silent"])))) == files["silent"]
    # The digest of a `ticketlab tamt` run with adamw is the one of runs before the setting (pinned).
    run = dict(model="m", objective="kd", sparsity=0.7, text="t.txt", steps=40, lr=5e-4)
    assert TamtSpec(**run, optimizer="adamw").digest() == "8bc6ca4951fdc76fa73a325f"
    assert TamtSpec(**run).optimizer == "bertadam" and TamtSpec(**run).digest() != "8bc6ca4951fdc76fa73a325f"


def test_tamt_spec_takes_the_grids_model_scope_and_scheme(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat\n")
    grid = GridSpec(
        model="m",
        tasks=["rte"],
        methods=["omp", "tamt"],
        scope="encoder+embeddings",
        scheme="per-matrix",
        tamt={"text": str(text), "steps": 7, "lr": 1},
    )
    grid.validate()
    spec = tamt_spec_for(grid, 0.7)
    assert (spec.model, spec.sparsity, spec.scope, spec.scheme) == (
        "m",
        0.7,
        "encoder+embeddings",
        "per-matrix",
    )
    assert (spec.objective, spec.steps, spec.text) == ("kd", 7, str(text))
    assert spec.lr == 1.0 and isinstance(spec.lr, float)  # YAML's 1 read as the float it stands for


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"methods": ["omp", "tamt"]}, "method tamt needs a tamt section"),
        ({"methods": ["tamt"], "tamt": {"text": "T", "stepz": 3}}, "tamt: unknown field 'stepz'"),
        (
            {"methods": ["tamt"], "tamt": {"text": "T", "steps": "ten"}},
            "tamt.steps: expected an integer, got 'ten'",
        ),
        ({"methods": ["tamt"], "tamt": {"text": "T", "objective": "mse"}}, "unknown TAMT objective 'mse'"),
        ({"methods": ["tamt"], "tamt": {"text": "T", "steps": 0}}, "steps must be at least 1"),
        ({"methods": ["tamt"], "tamt": {"text": "missing.txt"}}, "tamt.text: missing.txt is not a file"),
        ({"methods": ["tamt"], "tamt": ["T"]}, "tamt: expected a mapping"),
        ({"pretrain_loss": {"text": "T", "kd_loss": "l1"}}, "unknown distillation loss 'l1'"),
        ({"pretrain_loss": {"text": "nowhere.txt"}}, "pretrain_loss.text: nowhere.txt is not a file"),
        ({"task_recipes": {"cola": {"lr": 1e-4}}}, "task_recipes names 'cola', which is not one of"),
        ({"task_recipes": {"rte": {"learning_rate": 1e-4}}}, "unknown recipe field 'learning_rate'"),
    ],
)
def test_bad_tamt_and_pretrain_loss_sections_are_refused(tmp_path, extra, message):
    text = tmp_path / "T"
    text.write_text("the cat\n")
    extra = json.loads(json.dumps(extra))  # a copy: the parameters are shared between runs
    for section in ("tamt", "pretrain_loss"):
        if isinstance(extra.get(section), dict) and extra[section].get("text") == "T":
            extra[section]["text"] = str(text)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "sparsities": [0.5], **extra}))
    with pytest.raises(TicketlabError, match=message):
        GridSpec.from_file(path)


# -- correlations -----------------------------------------------------------------------------------
def test_correlations_match_scipy_and_hand_worked_values():
    # Ranks only: Spearman = Pearson = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8.
    hand = correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert hand["pearson"] == pytest.approx(0.8) and hand["spearman"] == pytest.approx(0.8)
    x = [0.12, 0.41, 0.20, 0.93, 0.55, 0.31]
    y = [0.81, 0.70, 0.74, 0.52, 0.72, 0.74]  # a tie in the scores
    result = correlation(x, y)
    assert result["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert result["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert result["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
    ranks_x, ranks_y = stats.rankdata(x), stats.rankdata(y)  # average ranks for the tie
    assert result["spearman"] == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1])
    assert result["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert result["n"] == 6 and result["pearson"] < -0.9
    assert correlation([1, 2], [3, 4])["pearson"] is None  # two points say nothing
    assert "all equal" in correlation([1, 2, 3], [5, 5, 5])["note"]


def test_points_average_losses_over_the_seeds_masks_and_report_missing_mlm():
    cells = [
        Cell("stsb", "full", 0.0, "pearson", [0.9, 0.8]),
        Cell("stsb", "omp", 0.5, "pearson", [0.7, 0.6]),
        Cell("stsb", "random", 0.5, "pearson", [0.2, 0.4]),
        Cell("stsb", "tamt", 0.5, "pearson", [0.75, 0.75]),
        Cell("stsb", "imp", 0.5, "pearson", [0.5, 0.5]),  # no losses measured: left out
    ]
    reason = "all-MiniLM has no MLM head"
    losses = [TicketLoss("stsb", "omp", 0.5, seed, 0.3, "mse", None, reason) for seed in (0, 1)] + [
        TicketLoss("stsb", "random", 0.5, 0, 0.9, "mse", None, reason),
        TicketLoss("stsb", "random", 0.5, 1, 1.1, "mse", None, reason),
        TicketLoss("stsb", "tamt", 0.5, 0, 0.1, "mse", None, reason),
        TicketLoss("stsb", "tamt", 0.5, 1, 0.1, "mse", None, reason),
    ]
    points = loss_score_points(cells, losses)
    assert [(p.method, p.kd_loss, p.score) for p in points] == [
        ("omp", 0.3, pytest.approx(0.65)),
        ("random", pytest.approx(1.0), pytest.approx(0.3)),
        ("tamt", 0.1, pytest.approx(0.75)),
    ]
    kd, mlm = correlations(points, reason)
    assert kd["available"] and kd["n"] == 3
    assert kd["pearson"] == pytest.approx(stats.pearsonr([0.3, 1.0, 0.1], [0.65, 0.3, 0.75]).statistic)
    assert kd["spearman"] == pytest.approx(-1.0)
    assert mlm == {
        "task": "stsb",
        "loss": "mlm_loss",
        "metric": "pearson",
        "available": False,
        "reason": reason,
    }


def test_the_table_says_where_a_lower_loss_did_not_give_a_better_ticket():
    from ticketlab.analysis.pretrain_correlation import correlation_markdown, lower_loss_worse_score

    # issue 18's figures at 50%: TAMT's KD loss below OMP's, its tickets fine-tuned like random ones
    cells = [
        Cell("stsb", "omp", 0.5, "pearson", [0.40, 0.466]),
        Cell("stsb", "tamt", 0.5, "pearson", [0.12, 0.132]),
        Cell("stsb", "random", 0.5, "pearson", [0.11, 0.122]),
        Cell("stsb", "omp", 0.7, "pearson", [0.30, 0.30]),
    ]
    losses = [
        TicketLoss("stsb", "omp", 0.5, 0, 0.076, "mse"),
        TicketLoss("stsb", "tamt", 0.5, 0, 0.067, "mse"),
        TicketLoss("stsb", "random", 0.5, 0, 0.34, "mse"),
        TicketLoss("stsb", "omp", 0.7, 0, 0.01, "mse"),  # another sparsity: never compared
    ]
    points = loss_score_points(cells, losses)
    found = lower_loss_worse_score(points)
    assert [(f["lower_loss"], f["better_score"], f["beyond_spread"]) for f in found] == [
        ("tamt", "omp", True)
    ]
    text = correlation_markdown(points, correlations(points))
    assert "A lower loss did not give a better ticket:** stsb at 50%, tamt has the lower KD loss" in text
    assert "than omp (12.60 vs 43.30, beyond the seeds' spread)" in text


# -- search cost ------------------------------------------------------------------------------------
def test_imp_masks_record_the_cumulative_cost_of_the_levels_before_them(tmp_path):
    from ticketlab.models.tiny import tiny_model

    costs = {0: (10, 320, 1.5), 1: (12, 384, 2.0), 2: (11, 352, 4.0)}

    def train(model, mask, seed, out):
        level = 0 if mask is None else (1 if mask.sparsity < 0.4 else 2)
        steps, examples, wall = costs[level]
        return {"training_steps": steps, "train_examples_seen": examples, "wall_seconds": wall}

    def build():
        from transformers import BertForSequenceClassification

        return tiny_model("bert", model_class=BertForSequenceClassification, seed=0)

    run_imp(ImpSpec(model="tiny", task="rte", levels=[0.3, 0.6]), tmp_path, build, train, echo=lambda _: None)
    first = read_header(tmp_path / level_name(1) / "mask.safetensors")["provenance"]["method_params"]
    second = read_header(tmp_path / level_name(2) / "mask.safetensors")["provenance"]["method_params"]
    assert first["search_cost"] == {"steps": 10, "examples": 320, "wall_time_s": 1.5, "levels": 1}
    assert second["search_cost"] == {"steps": 22, "examples": 704, "wall_time_s": 3.5, "levels": 2}
    rows = summarize_search_costs(
        [search_cost_of(read_header(p), p) for p in sorted(tmp_path.glob("level_*/mask.safetensors"))]
    )
    assert [(r["method"], r["source"], r["sparsity"], r["steps"]) for r in rows] == [
        ("imp", "rte", 0.3, 10),
        ("imp", "rte", 0.6, 22),
    ]


# -- end to end -------------------------------------------------------------------------------------
def _text(path, lines=60, seed=0):
    rng = random.Random(seed)
    path.write_text(
        "\n".join(sentence(rng, rng.random() < 0.5) + " " + " ".join(FILLER[:4]) for _ in range(lines))
    )
    return path


def test_grid_with_tamt_and_pretrain_losses_end_to_end(tmp_path, capsys):
    model_dir = tiny_model_dir(tmp_path / "model")
    # STS-B: a regression, so the tickets' dev Pearson differ and the correlation is defined.
    data = write_glue_task(tmp_path / "glue", "stsb", {"train": 32, "dev": 16})
    spec = {
        "model": str(model_dir),
        "tasks": ["stsb"],
        "data_dir": str(data),
        "seeds": [0, 1],
        "methods": ["full", "omp", "random", "imp", "tamt"],
        "sparsities": [0.5],
        "imp_levels": [0.5],
        "scope": "encoder+embeddings",
        "scheme": "per-matrix",
        "recipe": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "log_every": 100},
        "task_recipes": {"stsb": {"max_train_samples": 24}},
        "tamt": {
            "text": str(_text(tmp_path / "train.txt")),
            "steps": 4,
            "batch_size": 4,
            "max_length": 16,
            "lr": 0.01,
            "checkpoint_every": 2,
        },
        "pretrain_loss": {
            "text": str(_text(tmp_path / "valid.txt", lines=20, seed=1)),
            "max_length": 16,
            "mlm_head": "auto",
            "head_steps": 2,
        },
    }
    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "grid"
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert ("stsb", "tamt") in {(c["task"], c["method"]) for c in summary["cells"]}

    # One TAMT mask per sparsity, with its search cost, on the grid's scope and scheme.
    header = read_header(out / "tickets" / "tamt-0.50" / "mask.safetensors")
    assert header["provenance"]["scope"] == "encoder+embeddings"
    assert header["provenance"]["method_params"]["search_cost"]["steps"] == 4
    assert header["provenance"]["method_params"]["search_cost"]["examples"] == 16
    assert header["provenance"]["method_params"]["objective"] == "kd"
    tamt_cell = json.loads((out / "cells" / "stsb" / "tamt-0.50-seed1" / "results.json").read_text())
    assert tamt_cell["pruned_nonzero"] == 0 and tamt_cell["mask_method"] == "tamt"
    assert tamt_cell["train_examples"] == 24  # the task's recipe override

    # Pre-training losses beside every ticket, one MLM head built once and reused.
    loss_files = sorted(out.rglob("*.pretrain_loss.json"))
    # omp, random x2 seeds, tamt, imp x2 seeds
    assert len(loss_files) == 1 + 2 + 1 + 2
    head = out / "tickets" / "mlm_head"
    assert (head / "mlm_head.safetensors").exists() and (head / "DONE").is_file()  # a published step
    assert head.is_symlink() and head.resolve().parent.name == "mlm_head"  # kept in the store
    measured = [json.loads(p.read_text()) for p in loss_files]
    assert {m["mlm_head"]["source"] for m in measured} == {"file"}  # every ticket scored with that head
    assert all(m["mlm_head"]["built"] for m in measured)
    assert all(m["mlm_loss"] is not None and m["kd_loss"] > 0 for m in measured)
    assert len({json.dumps(m["mlm_loss_dense"]) for m in measured}) == 1  # the same head for all

    report = json.loads((out / "report" / "report.json").read_text())
    points = report["pretrain_loss"]["points"]
    assert {(p["method"], p["sparsity"]) for p in points} == {
        (m, 0.5) for m in ("omp", "random", "imp", "tamt")
    }
    kd = next(c for c in report["pretrain_loss"]["correlations"] if c["loss"] == "kd_loss")
    assert kd["n"] == 4
    xs, ys = [p["kd_loss"] for p in points], [p["score"] for p in points]
    assert np.ptp(ys) > 0
    assert kd["pearson"] == pytest.approx(stats.pearsonr(xs, ys).statistic)
    assert kd["spearman"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
    for loss in ("kd_loss", "mlm_loss"):
        assert (out / "report" / f"stsb_score_vs_{loss}.png").exists()
    cost = {(r["method"], r["sparsity"]): r for r in report["search_cost"]}
    assert cost[("tamt", 0.5)]["steps"] == 4 and cost[("tamt", 0.5)]["masks"] == 1
    level0 = [
        json.loads((out / "imp" / "stsb" / f"seed{k}" / "level_00" / "results.json").read_text())
        for k in (0, 1)
    ]
    assert cost[("imp", 0.5)]["masks"] == 2  # one IMP run per seed: the cost of its level 0, averaged
    assert cost[("imp", 0.5)]["steps"] == sum(r["training_steps"] for r in level0) / 2 > 0
    markdown = (out / "report" / "results.md").read_text()
    assert "### Search cost" in markdown and "### Pre-training loss against downstream score" in markdown

    # Rerun: nothing is trained or measured again.
    stamps = {p: p.stat().st_mtime_ns for p in loss_files + list((out / "tickets").rglob("*.safetensors"))}
    assert main(["grid", str(spec_path), "--out", str(out), "--quiet", "--json"]) == 0
    capsys.readouterr()
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())

    # A second grid on the same store, with one more seed, measures only its new tickets (a random
    # one, an IMP run's) and builds no second head: its place links to the first grid's.
    other = tmp_path / "other"
    head_file = head.resolve() / "mlm_head.safetensors"
    stamp = head_file.stat().st_mtime_ns
    grown = tmp_path / "grown.yaml"
    grown.write_text(yaml.safe_dump({**spec, "seeds": [*spec["seeds"], 7]}))
    argv = ["grid", str(grown), "--out", str(other), "--store", str(out / "steps"), "--quiet", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    assert (other / "tickets" / "mlm_head").resolve() == head.resolve()
    assert head_file.stat().st_mtime_ns == stamp
    assert len([p for p in (out / "steps" / "mlm_head").iterdir() if not p.name.startswith(".")]) == 1
    new = json.loads((other / "pretrain_loss" / "tickets--random-0.50-seed7.pretrain_loss.json").read_text())
    assert new["mlm_head"]["path"] == str(other / "tickets" / "mlm_head")

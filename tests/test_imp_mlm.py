"""IMP on the MLM objective on a tiny BERT and generated text: loss, nesting, resume, heads, CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.data.synthetic import build_tokenizer, pretraining_corpus
from ticketlab.data.text import load_text_blocks
from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import ImpSpec, level_name
from ticketlab.experiments.imp_dispatch import run_imp_on_task
from ticketlab.experiments.imp_mlm import MlmRecipe
from ticketlab.io import read_json
from ticketlab.masks import load_mask
from ticketlab.models.tiny import tiny_model
from ticketlab.reports.report import write_report
from ticketlab.training import loop
from ticketlab.training.objectives import MlmMasking

REAL_TRAIN = loop.train
RECIPE = {"steps": 40, "batch_size": 16, "max_length": 32, "lr": 2e-3}
LEVELS = [0.3, 0.6]


def write_model(path, with_head: bool):
    tokenizer = build_tokenizer(path)
    model_class = BertForMaskedLM if with_head else None
    tiny_model("bert", seed=0, model_class=model_class, vocab_size=len(tokenizer)).save_pretrained(path)
    return path


class HeadRecorder:
    """Wraps the training loop: records the MLM head's transform at the start of every level, and
    can crash the run inside a level (as a kill would) after some steps."""

    def __init__(self, crash_at_call=None, crash_at_step=3):
        self.heads, self.configs = [], []
        self.crash_at_call, self.crash_at_step = crash_at_call, crash_at_step

    def __call__(self, model, loader, evaluate, config, callbacks=(), **kwargs):
        self.heads.append(model.head.dense.weight.detach().clone())
        self.configs.append(config)
        callbacks = list(callbacks)
        if self.crash_at_call == len(self.heads) - 1:
            step = self.crash_at_step

            class Crash(loop.Callback):
                def on_step_end(self, state):
                    if state.step == step:
                        raise KeyboardInterrupt

            callbacks.append(Crash())
        return REAL_TRAIN(model, loader, evaluate, config, callbacks=callbacks, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny BERT with an MLM head, one without, generated text, and one clean IMP-on-MLM run."""
    root = tmp_path_factory.mktemp("imp_mlm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TICKETLAB_CACHE", str(root / "cache"))
        text = root / "train.txt"
        text.write_text("\n".join(pretraining_corpus(300, seed=0)) + "\n")
        with_head = write_model(root / "with_head", True)
        without_head = write_model(root / "without_head", False)
        recorder = HeadRecorder()
        patch.setattr(loop, "train", recorder)
        spec = ImpSpec(model=str(with_head), task="mlm", levels=LEVELS, recipe=dict(RECIPE), text=str(text))
        summary = run_imp_on_task(spec, root / "clean", quiet=True, echo=lambda _: None)
    torch.set_num_threads(threads)
    return {
        "root": root,
        "text": text,
        "with_head": with_head,
        "without_head": without_head,
        "spec": spec,
        "summary": summary,
        "run": root / "clean",
        "heads": recorder.heads,
    }


def test_loss_drops_masks_nest_with_exact_counts_and_record_the_search(world):
    run, summary = world["run"], world["summary"]
    levels = summary["levels"]
    assert [round(level["sparsity"], 2) for level in levels] == [0.0, 0.3, 0.6]
    assert levels[0]["final"]["mlm_loss"] < levels[0]["initial"]["mlm_loss"] - 0.3
    for level in levels:
        assert level["training_steps"] == 40 and level["train_examples_seen"] == 40 * 16
        assert level["search_cost"]["steps"] == 40 and level["search_cost"]["wall_time_s"] > 0
        assert level["pruned_nonzero"] == 0
        assert level["versions"]["torch"] == torch.__version__
    masks = [load_mask(run / level_name(i) / "mask.safetensors") for i in (1, 2)]
    for mask, target in zip(masks, LEVELS):
        assert mask.num_pruned() == int(mask.num_weights() * target)
        params = mask.provenance.method_params
        assert mask.provenance.method == "imp" and params["objective"] == "mlm" and params["task"] == "mlm"
        assert params["mlm_head"]["source"] == "checkpoint" and params["mlm_head"]["across_levels"] == "keep"
    assert (masks[1] - masks[0]).num_kept() == 0  # level 2 prunes inside level 1
    assert masks[0].provenance.method_params["search_cost"]["steps"] == 40
    assert masks[1].provenance.method_params["search_cost"] == {
        "levels": 2,
        "steps": 80,
        "examples": 80 * 16,
        "wall_time_s": pytest.approx(levels[0]["wall_seconds"] + levels[1]["wall_seconds"]),
    }
    versions = read_json(run / "versions.json")
    assert {"ticketlab", "torch", "transformers"} <= set(versions)


def test_held_out_loss_is_the_hugging_face_mlm_loss_at_level_0(world):
    """The rewound model's held-out loss equals BertForMaskedLM's own loss on the same corruption."""
    tokenizer = build_tokenizer(world["root"] / "tok")
    blocks = load_text_blocks(tokenizer, world["text"], max_length=32, progress=False)
    held = max(1, round(len(blocks) * MlmRecipe().eval_fraction))
    ids, attention = blocks.input_ids[-held:], blocks.attention_mask[-held:]
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=len(tokenizer))
    corrupted, labels = masking(ids, seed=0, keys=range(held))
    model = BertForMaskedLM.from_pretrained(world["with_head"]).eval()
    with torch.no_grad():
        reference = model(input_ids=corrupted, attention_mask=attention, labels=labels).loss.item()
    assert world["summary"]["levels"][0]["initial"]["mlm_loss"] == pytest.approx(reference, rel=1e-5)


def test_kept_head_carries_over_between_levels(world):
    run, heads = world["run"], world["heads"]
    for index in (1, 2):
        trained = load_file(run / level_name(index - 1) / "trained_head.safetensors")
        assert torch.equal(heads[index], trained["head.dense.weight"])
    assert world["summary"]["levels"][1]["mlm_head"]["start"] == "trained at the previous level"


def test_a_kill_inside_a_level_resumes_to_bit_identical_masks(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(world["root"] / "cache"))
    out = tmp_path / "killed"
    # Killed in the middle of level 1, whose pruning makes level 2's mask.
    monkeypatch.setattr(loop, "train", HeadRecorder(crash_at_call=1, crash_at_step=5))
    with pytest.raises(KeyboardInterrupt):
        run_imp_on_task(world["spec"], out, quiet=True, echo=lambda _: None)
    assert not (out / level_name(1)).exists() and not list(out.glob(f".{level_name(1)}.*"))
    monkeypatch.setattr(loop, "train", HeadRecorder())
    summary = run_imp_on_task(world["spec"], out, quiet=True, echo=lambda _: None)
    for index in (1, 2):
        clean = load_mask(world["run"] / level_name(index) / "mask.safetensors")
        assert load_mask(out / level_name(index) / "mask.safetensors") == clean
    assert [lv["final"] for lv in summary["levels"]] == [lv["final"] for lv in world["summary"]["levels"]]
    assert not list(out.glob(".*.tmp"))


def test_a_model_without_mlm_head_gets_a_tied_head_and_reinit_restarts_it(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(world["root"] / "cache"))
    recorder = HeadRecorder()
    monkeypatch.setattr(loop, "train", recorder)
    spec = ImpSpec(
        model=str(world["without_head"]),
        task="mlm",
        levels=[0.5],
        head="reinit",
        recipe={**RECIPE, "steps": 30, "head_steps": 20},
        text=str(world["text"]),
        lr_horizon="run",  # BERT-Tickets' schedule: each level's spans both levels' 30 steps
    )
    summary = run_imp_on_task(spec, tmp_path / "run", quiet=True, echo=lambda _: None)
    assert [config.horizon_factor for config in recorder.configs] == [2, 2]
    assert [level["lr_schedule"]["horizon_steps"] for level in summary["levels"]] == [60, 60]
    head_file = load_file(tmp_path / "run" / "mlm_head" / "mlm_head.safetensors")
    assert set(head_file) == {"dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"}
    # reinit: both levels start from the initial head (built, its transform trained for 20 steps)
    assert torch.equal(recorder.heads[0], head_file["dense.weight"])
    assert torch.equal(recorder.heads[1], head_file["dense.weight"])
    assert not torch.equal(head_file["dense.weight"], torch.eye(head_file["dense.weight"].shape[0]))
    level0 = summary["levels"][0]
    assert level0["final"]["mlm_loss"] < level0["initial"]["mlm_loss"]
    assert summary["levels"][1]["mlm_head"] == {"source": "built", "start": "initial", "head": "reinit"}
    params = load_mask(tmp_path / "run" / level_name(1) / "mask.safetensors").provenance.method_params
    assert params["mlm_head"]["source"] == "built" and params["mlm_head"]["built"] is True
    assert params["mlm_head"]["head_steps"] == 20 and params["mlm_head"]["across_levels"] == "reinit"
    assert params["lr_horizon"] == "run"


def test_report_on_an_mlm_run_treats_lower_loss_as_better(world, tmp_path):
    report = write_report([world["run"]], tmp_path / "report")
    cells = {(c["method"], round(c["sparsity"], 2)): c for c in report["cells"]}
    full = cells[("full", 0.0)]
    for key in (("imp", 0.3), ("imp", 0.6)):
        assert cells[key]["metric"] == "mlm_loss"
        assert cells[key]["matching"] == (cells[key]["mean"] <= full["mean"] + full["std"])


def cli(world, out, *extra):
    args = ["imp", "--model", str(world["with_head"]), "--task", "mlm", "--text", str(world["text"])]
    args += ["--levels", "0.3,0.6", "--steps", "40", "--batch-size", "16", "--max-length", "32"]
    return main([*args, "--lr", "2e-3", "--out", str(out), "--quiet", *extra])


def test_cli_resumes_a_finished_run_refuses_other_specs_and_stray_flags(world, capsys, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(world["root"] / "cache"))
    stamp = (world["run"] / level_name(2) / "results.json").stat().st_mtime_ns
    assert cli(world, world["run"], "--json") == 0
    assert json.loads(capsys.readouterr().out) == world["summary"]
    assert (world["run"] / level_name(2) / "results.json").stat().st_mtime_ns == stamp
    assert cli(world, world["run"], "--seed", "1") == 2
    assert "holds a different ImpSpec (fields that differ: seed)" in capsys.readouterr().err
    assert cli(world, world["run"], "--max-train-samples", "5") == 2
    assert "--max-train-samples is a flag of a task's fine-tuning" in capsys.readouterr().err
    sst2 = ["imp", "--model", "m", "--task", "sst2", "--out", "x", "--quiet"]
    assert main([*sst2, "--text", str(world["text"])]) == 2
    assert "--text and --eval-text are for task mlm" in capsys.readouterr().err
    assert main([*sst2, "--steps", "3"]) == 2
    assert "--steps is a flag of --task mlm" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("recipe", "message"),
    [({"learning_rate": 1}, "unknown MLM recipe field"), ({"eval_fraction": 1.0}, "eval fraction")],
)
def test_bad_mlm_recipes_are_refused(recipe, message, tmp_path):
    spec = ImpSpec(model="m", task="mlm", levels=[0.5], recipe=recipe, text="t.txt")
    with pytest.raises(TicketlabError, match=message):
        run_imp_on_task(spec, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_text_too_short_to_hold_out_is_refused(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    short = tmp_path / "short.txt"
    short.write_text("the ns1 vs2 the np3 .\n")
    spec = ImpSpec(model=str(world["with_head"]), task="mlm", levels=[0.5], text=str(short))
    with pytest.raises(TicketlabError, match="too few to hold some out"):
        run_imp_on_task(spec, tmp_path / "run", quiet=True)


def test_grid_transfers_the_mlm_ticket_to_every_task(world, tmp_path, monkeypatch, capsys):
    from ticketlab.data.synthetic import write_glue_tasks

    monkeypatch.setenv("TICKETLAB_CACHE", str(world["root"] / "cache"))
    data = write_glue_tasks(tmp_path / "glue", 32, 16)
    spec = {
        "model": str(world["with_head"]),
        "tasks": ["sst2"],
        "data_dir": str(data),
        "seeds": [0],
        "methods": ["full"],
        "sparsities": [0.5],
        "imp_levels": [0.5],
        "transfer_from": ["mlm"],
        "mlm_text": str(world["text"]),
        "mlm_recipe": {"steps": 10, "batch_size": 16, "max_length": 32, "lr": 2e-3},
        "recipe": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "max_length": 32, "log_every": 100},
    }
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "grid"
    assert main(["grid", str(path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {(c["task"], c["method"]) for c in summary["cells"]} == {("sst2", "full"), ("sst2", "imp@mlm")}
    cell = read_json(out / "cells" / "sst2" / "imp@mlm-0.50-seed0" / "results.json")
    ticket = out / "imp" / "mlm" / "seed0" / level_name(1) / "mask.safetensors"
    assert cell["mask"] == str(ticket) and cell["mask_method"] == "imp" and cell["pruned_nonzero"] == 0
    assert load_mask(ticket).provenance.method_params["objective"] == "mlm"
    assert "| mlm → sst2 | 50% |" in (out / "report" / "results.md").read_text()


def test_new_grid_and_imp_fields_leave_existing_run_names_unchanged():
    from ticketlab.experiments.grid import GridSpec
    from ticketlab.experiments.store import spec_hash

    # Hashes of these specs before the mlm fields existed: their run directories must keep their names.
    assert spec_hash(GridSpec(model="bert-base-uncased", tasks=["rte"])) == "a67b6d5f8d7e"
    grid = GridSpec(model="m", tasks=["rte", "sst2"], transfer_from=["rte"], recipe={"lr": 1e-4})
    assert spec_hash(grid) == "c5e78b2399f9"
    assert spec_hash(ImpSpec(model="bert-base-uncased", task="rte")) == "f3bd6a8c0f82"
    assert spec_hash(ImpSpec(model="m", task="rte", levels=[0.5], recipe={"epochs": 1})) == "8bb0df1c1156"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transfer_from": ["mlm"], "mlm_recipe": {"stepz": 1}}, "unknown MLM recipe field 'stepz'"),
        ({"mlm_text": "t.txt"}, "need 'mlm' in transfer_from"),
        ({"tasks": ["mlm"]}, "mlm is not a fine-tuning task"),
        ({"transfer_from": ["cola"]}, "transfer source 'cola' is not one of the grid's tasks"),
    ],
)
def test_bad_mlm_grid_specs_are_refused(fields, message, tmp_path):
    from ticketlab.experiments.grid import GridSpec

    path = tmp_path / "g.json"
    path.write_text(json.dumps({"model": "m", "tasks": ["rte"], "sparsities": [0.5], **fields}))
    with pytest.raises(TicketlabError, match=message):
        GridSpec.from_file(path)


def test_versions_of_the_first_run_are_kept_and_resumes_under_others_added(tmp_path, monkeypatch):
    from ticketlab.experiments import store

    spec = ImpSpec(model="m", task="rte", levels=[0.5])
    store.RunDirectory.open(spec, tmp_path / "run")
    first = read_json(tmp_path / "run" / "versions.json")
    assert first["torch"] == torch.__version__ and {"ticketlab", "transformers"} <= set(first)
    store.RunDirectory.open(spec, tmp_path / "run")
    assert read_json(tmp_path / "run" / "versions.json") == first
    monkeypatch.setattr(store, "versions", lambda: {**first, "torch": "9.9"})
    store.RunDirectory.open(spec, tmp_path / "run")
    store.RunDirectory.open(spec, tmp_path / "run")
    assert read_json(tmp_path / "run" / "versions.json") == {
        **first,
        "resumed_with": [{**first, "torch": "9.9"}],
    }

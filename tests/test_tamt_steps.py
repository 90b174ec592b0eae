"""TAMT as steps: budgets and the training published by the step protocol, the checkpoint inside
the claimed work, runs of an older layout adopted, damaged steps named, two ranks = one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.pretrain_fixtures import tiny_pretraining_setup
from tests.tamt_worker import run, spec_for
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.tamt import TamtSpec, run_tamt
from ticketlab.masks import load_mask
from ticketlab.models import load_encoder
from ticketlab.pruning import prune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    tiny_pretraining_setup(tmp_path, paragraphs=10)
    return tmp_path


def crash_at(step):
    def on_step(done, _):
        if done == step:
            raise KeyboardInterrupt

    return on_step


def listing(folder):
    """Every file and folder (hidden ones too: no temporary file or claim may be left)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_of_the_older_layout_is_adopted_and_resumes_to_the_same_masks(setup):
    spec = TamtSpec(**{**spec_for(setup).__dict__, "save_at": (2, 5)})
    whole = run_tamt(spec, setup / "whole", progress=False)
    # What an older ticketlab left when killed at step 5: the checkpoint of step 4 and the budget
    # masks beside each other in the folder, no steps.
    out = setup / "old"
    with pytest.raises(KeyboardInterrupt):
        run_tamt(spec, out, progress=False, on_step=crash_at(5))
    os.replace(out / ".final.partial" / "checkpoint.safetensors", out / "checkpoint.safetensors")
    for name in (".final.partial", "budget_000002", "budget_000005", ".steps.lock"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "mask-step2.safetensors",
        "mask-step5.safetensors",
    ]
    resumed = run_tamt(spec, out, progress=False)
    assert resumed["mask_digest"] == whole["mask_digest"]
    for step in ("2", "5"):
        assert load_mask(resumed["budget_masks"][step]) == load_mask(whole["budget_masks"][step])
    assert "adopted" in json.loads((out / "budget_000002" / "results.json").read_text())
    assert not (out / "checkpoint.safetensors").exists()
    assert listing(out) == listing(setup / "whole")

    # A finished run of the older layout (masks and results.json, no steps) is read as it is.
    for name in ("final", "budget_000002", "budget_000005"):
        shutil.rmtree(out / name)
    old = {k: v for k, v in resumed.items() if k not in ("steps_folder", "mask_digest", "num_processes")}
    (out / "results.json").write_text(json.dumps(old))
    assert run_tamt(spec, out, progress=False) == json.loads(json.dumps(old))
    assert not (out / "final").exists()
    (out / "mask-step5.safetensors").unlink()
    with pytest.raises(TicketlabError, match="mask-step5.safetensors, which is missing; redo it"):
        run_tamt(spec, out, progress=False)


def test_a_damaged_step_is_named_and_redo_trains_it_again(setup, capsys):
    spec = spec_for(setup)
    out = setup / "run.safetensors"
    first = run_tamt(spec, out, progress=False)
    steps = setup / "run.tamt"
    (steps / "final" / "mask.safetensors").write_bytes(b"")  # emptied (the summary link too)
    with pytest.raises(TicketlabError, match=r"step final in .*run.tamt is damaged: mask.safetensors has 0"):
        run_tamt(spec, out, progress=False)
    flags = ["--model", spec.model, "--objective", spec.objective, "--sparsity", "0.5", "--text", spec.text]
    flags += ["--steps", "6", "--batch-size", "4", "--max-length", "16", "--lr", "2e-2", "--save-at", "3"]
    flags += ["--checkpoint-every", "2", "--no-dropout", "--seed", "1", "--out", str(out), "--quiet"]
    assert main(["tamt", *flags]) == 2
    assert "--redo final" in capsys.readouterr().err
    assert main(["tamt", *flags, "--redo", "final", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["mask_digest"] == first["mask_digest"]
    assert load_mask(out) == load_mask(steps / "final" / "mask.safetensors")

    # Redoing a budget trains the run again to reach it (the same masks: same seed).
    assert main(["tamt", *flags, "--redo", "budget_000003", "--json"]) == 0
    out_text = capsys.readouterr().out
    assert "redo: budget_000003 removed" in out_text
    assert (steps / "budget_000003" / "DONE").is_file()
    assert load_mask(setup / "run-step3.safetensors") == load_mask(first["budget_masks"]["3"])


@pytest.mark.slow
def test_two_gloo_ranks_train_one_mask_equal_to_one_process(setup):
    """torchrun with two CPU processes: each trains on half of every batch with the score
    gradients averaged; both end with the same mask bits, the one-process run's, and the run
    directory is the one one process writes."""
    reference = run(setup, setup / "one")
    record = setup / "record"
    record.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "tests.tamt_worker", str(setup), str(setup / "two"), str(record)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["mask_digest"] == ranks[1]["mask_digest"] == reference["mask_digest"]
    assert ranks[0]["num_processes"] == 2 and reference["num_processes"] == 1
    budget = [
        json.loads((d / "budget_000003" / "results.json").read_text()) for d in (setup / "one", setup / "two")
    ]
    assert budget[0]["mask_digest"] == budget[1]["mask_digest"]
    # Every step's loss is the global batch's, on both ranks, as one process computes it.
    for key in ("loss", "mlm", "kd"):
        expected = [step[key] for step in reference["step_losses"]]
        for rank in ranks:
            assert [step[key] for step in rank["step_losses"]] == pytest.approx(expected, rel=1e-5)
    assert listing(setup / "two") == listing(setup / "one")
    one, two = (json.loads((setup / d / "results.json").read_text()) for d in ("one", "two"))
    stable = ("mask_digest", "num_pruned", "sparsity", "steps", "optimizer", "mlm_head", "spec_digest")
    assert {k: two[k] for k in stable} == {k: one[k] for k in stable}
    trained = load_mask(setup / "two" / "mask.safetensors")
    assert trained == load_mask(reference["mask"])
    omp = prune(
        load_encoder(str(setup / "model")), "omp", 0.5, scope=trained.provenance.scope, scheme="per-matrix"
    )
    assert any(not torch.equal(trained.tensors[n], omp.tensors[n]) for n in omp.tensors)  # it moved
    # One claimer published both steps; no private folder of the second rank is left.
    publishers = {
        json.loads((setup / "two" / step / "DONE").read_text())["published_by"]["pid"]
        for step in ("final", "budget_000003")
    }
    assert len(publishers) == 1


@pytest.mark.slow
def test_accelerate_launch_of_the_tamt_verb_on_two_processes_writes_the_one_process_run(setup):
    """The command a user types: ``accelerate launch --multi_gpu --num_processes 2 -m ticketlab
    tamt ...``. Accelerate starts the processes through torchrun (on a machine without GPUs too,
    which is how this test runs it); the run directory and mask bits are one process's."""
    spec = spec_for(setup)
    reference = run(setup, setup / "one")
    flags = ["--model", spec.model, "--objective", spec.objective, "--sparsity", "0.5", "--text", spec.text]
    flags += ["--steps", "6", "--batch-size", "4", "--max-length", "16", "--lr", "2e-2", "--save-at", "3"]
    flags += [
        "--checkpoint-every",
        "2",
        "--no-dropout",
        "--seed",
        "1",
        "--out",
        str(setup / "two"),
        "--quiet",
    ]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ticketlab"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    completed = subprocess.run(
        [*launch, "tamt", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = json.loads((setup / "two" / "results.json").read_text())
    assert two["num_processes"] == 2
    assert two["mask_digest"] == reference["mask_digest"]
    assert load_mask(setup / "two" / "mask.safetensors") == load_mask(reference["mask"])
    assert load_mask(setup / "two" / "mask-step3.safetensors") == load_mask(
        setup / "one" / "mask-step3.safetensors"
    )
    assert listing(setup / "two") == listing(setup / "one")


@pytest.mark.slow
def test_a_run_killed_with_kill_9_is_taken_over_and_resumed_from_its_checkpoint(setup):
    """A process killed inside the training leaves its claimed folder (with the checkpoint); the
    next process takes the dead claim over, continues from the checkpoint and ends with the masks
    of an uninterrupted run; no step is published without its files."""
    reference = run(setup, setup / "one")
    out = setup / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "tests.tamt_worker", str(setup), str(out), str(setup), "0.5"]
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob(".final.*.tmp/checkpoint.safetensors")):  # step 2 done
            assert worker.poll() is None and time.time() < deadline, worker.stderr.read()[-2000:]
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert not (out / "final").exists()
    resumed = run(setup, out)
    assert resumed["mask_digest"] == reference["mask_digest"]
    assert len(resumed["step_losses"]) < 6  # it continued from a checkpoint, not from step 0
    assert load_mask(out / "mask-step3.safetensors") == load_mask(setup / "one" / "mask-step3.safetensors")
    assert listing(out) == listing(setup / "one")

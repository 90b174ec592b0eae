"""`ticketlab imp` end to end on generated GLUE data: levels, resume, refusal to mix specs."""

import json

import pytest

from tests.glue_fixtures import one_thread, tiny_model_dir, write_glue_task  # noqa: F401 (autouse fixture)
from ticketlab.cli import main
from ticketlab.masks import load_mask


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))


def imp(model_dir, data, out, *extra):
    return main(
        [
            "imp",
            "--model",
            str(model_dir),
            "--task",
            "sst2",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--levels",
            "0.3,0.6",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--quiet",
            *extra,
        ]
    )


def test_imp_runs_levels_and_resumes(tmp_path, capsys):
    model_dir = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "sst2", {"train": 48, "dev": 16})
    out = tmp_path / "imp"
    assert imp(model_dir, data, out, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [round(level["sparsity"], 2) for level in summary["levels"]] == [0.0, 0.3, 0.6]
    assert all("accuracy" in level["best"] for level in summary["levels"])
    for level, target in ((1, 0.3), (2, 0.6)):
        mask = load_mask(out / f"level_{level:02d}" / "mask.safetensors")
        assert mask.num_pruned() == int(mask.num_weights() * target)
        assert json.loads((out / f"level_{level:02d}" / "results.json").read_text())["pruned_nonzero"] == 0
    assert json.loads((out / "spec.json").read_text())["spec"]["recipe"] == {
        "lr": 1e-3,
        "batch_size": 16,
        "epochs": 1,
    }

    # A finished run is not trained again; a half-finished level is redone.
    import shutil

    shutil.rmtree(out / "level_02")
    before = load_mask(out / "level_01" / "next_mask.safetensors")
    assert imp(model_dir, data, out) == 0
    assert "level" in capsys.readouterr().out
    assert load_mask(out / "level_02" / "mask.safetensors") == before

    assert imp(model_dir, data, out, "--seed", "1") == 2
    assert "holds a different ImpSpec" in capsys.readouterr().err


@pytest.mark.slow
def test_imp_under_torchrun_trains_on_both_ranks_and_writes_one_run(tmp_path):
    """`torchrun --nproc_per_node 2 -m ticketlab imp` (DDP over gloo): the first rank claims and
    publishes every level (the second used to crash renaming the same folder), one JSON report."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.glue_fixtures import tiny_model_dir, write_glue_task

    model = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "rte", {"train": 32, "dev": 16})
    out = tmp_path / "run"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "ticketlab",
        "imp",
    ]
    command += ["--model", str(model), "--task", "rte", "--data-dir", str(data), "--levels", "0.5"]
    command += ["--batch-size", "8", "--epochs", "1", "--out", str(out), "--quiet", "--json"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)  # one report: the other rank prints nothing
    assert [level["num_processes"] for level in summary["levels"]] == [2, 2]
    assert all(level["training_steps"] == 2 for level in summary["levels"])  # 32 examples / (2 x 8)
    assert sorted(p.name for p in out.iterdir()) == [
        ".steps.lock",
        "level_00",
        "level_01",
        "results.json",
        "spec.json",
        "versions.json",
    ]
    assert (out / "level_01" / "mask.safetensors").is_file() and (
        out / "level_00" / "next_mask.safetensors"
    ).is_file()


def _logged_rates(level_dir):
    lines = [json.loads(line) for line in (level_dir / "log.jsonl").read_text().splitlines()]
    return [line["lr"] for line in lines if line.get("event") == "train"]


@pytest.mark.parametrize("horizon", ["level", "run"])
def test_each_levels_learning_rates_with_the_level_or_the_run_as_horizon(tmp_path, capsys, horizon):
    """3 levels of 3 steps (48 examples, batch 16) at lr 1e-3, each level a fresh linear schedule:
    with horizon ``level`` the rate after step t of a level is 1e-3 x (1 - t/3); with ``run``
    (BERT-Tickets) the horizon is all 9 steps of the run, 1e-3 x (1 - t/9), so a level ends at 2/3."""
    model_dir = tiny_model_dir(tmp_path / "model")
    data = write_glue_task(tmp_path / "glue", "sst2", {"train": 48, "dev": 16})
    out = tmp_path / "imp"
    extra = ["--log-every", "1", "--json"] + (["--lr-horizon", "run"] if horizon == "run" else [])
    assert imp(model_dir, data, out, *extra) == 0
    summary = json.loads(capsys.readouterr().out)
    steps = 3 if horizon == "level" else 9
    by_hand = [1e-3 * (1 - t / steps) for t in (1, 2, 3)]
    for index, level in enumerate(summary["levels"]):
        assert _logged_rates(out / f"level_{index:02d}") == pytest.approx(by_hand, rel=1e-9, abs=1e-15)
        assert level["lr_schedule"] == {"horizon": horizon, "horizon_steps": steps, "fresh_per_level": True}
    spec = json.loads((out / "spec.json").read_text())
    assert ("lr_horizon" in spec["spec"]) and (spec["spec"]["lr_horizon"] == horizon)
    if horizon == "run":
        # More levels would change every earlier level's horizon: another run, not a growth.
        assert imp(model_dir, data, out, "--lr-horizon", "run", "--levels", "0.3,0.6,0.8") == 2
        assert "holds a different ImpSpec" in capsys.readouterr().err

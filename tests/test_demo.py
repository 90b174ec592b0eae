"""The demo's pipeline at toy size: every stage runs and the verdict is computed from the numbers."""

import json

from tests.glue_fixtures import one_thread  # noqa: F401 (autouse fixture)
from ticketlab.experiments.demo import DemoSettings, verdict
from ticketlab.reports.demo import run


def test_demo_runs_end_to_end_at_toy_size(tmp_path):
    settings = DemoSettings(
        hidden_size=32,
        layers=2,
        heads=2,
        ffn_size=64,
        pretrain_documents=60,
        pretrain_steps=10,
        train_examples=32,
        dev_examples=16,
        sparsities=(0.5,),
        seeds=(0,),
        finetune_epochs=1,
    )
    lines = []
    result = run(tmp_path / "demo", echo=lines.append, settings=settings)
    assert (tmp_path / "demo" / "report" / "cola_score_vs_sparsity.png").exists()
    assert any(line.startswith("plot written to") for line in lines)
    assert len(result["verdict"]) == 4  # (omp, imp) x (cola, sst2)
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["pretraining"]["steps"] == 10
    # Rerun: the pre-trained model and every finished cell are reused.
    lines.clear()
    run(tmp_path / "demo", echo=lines.append, settings=settings)
    assert any("pre-trained model found" in line for line in lines)


def test_verdict_needs_a_gap_beyond_the_spread_and_a_learned_task():
    def cells(full):
        return [
            {
                "task": "cola",
                "method": "full",
                "sparsity": 0.0,
                "metric": "matthews",
                "mean": full,
                "std": 0.01,
            },
            {
                "task": "cola",
                "method": "omp",
                "sparsity": 0.9,
                "metric": "matthews",
                "mean": 0.4,
                "std": 0.05,
            },
            {
                "task": "cola",
                "method": "random",
                "sparsity": 0.9,
                "metric": "matthews",
                "mean": 0.1,
                "std": 0.05,
            },
            {
                "task": "cola",
                "method": "imp",
                "sparsity": 0.9,
                "metric": "matthews",
                "mean": 0.15,
                "std": 0.05,
            },
        ]

    rows = {r["method"]: r for r in verdict({"cells": cells(0.6)}, 0.9)}
    assert rows["omp"]["magnitude_wins"] is True and abs(rows["omp"]["gap"] - 0.3) < 1e-12
    assert rows["imp"]["magnitude_wins"] is False  # a gap of 0.05 is within the spread of 0.1
    unlearned = verdict({"cells": cells(0.03)}, 0.9)
    assert all(r["magnitude_wins"] is None and not r["full_model_learned"] for r in unlearned)

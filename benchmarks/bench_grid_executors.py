"""The same tiny grid run serially and by the local executor with 2 workers, side by side.

A tiny BERT (built from a config, with the demo's word-level tokenizer) and the demo's two
generated tasks; methods full, omp and matched random at two sparsities, two seeds: 20 fine-tuning
cells plus their tickets (26 steps). Reports the wall times, the ratio local / serial (target for
2 workers: <= 0.6), whether both gave the same metrics, and the executor's own cost per step
(the local run's wall time beyond the steps' own fine-tuning seconds, spread over its steps).

    PYTHONPATH=src python benchmarks/bench_grid_executors.py [--workers 2] [--train 2400]

Each process runs on one thread (both executors), so 2 workers can use the two cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench_common import timed, write_results


def build_world(root: Path, train: int) -> tuple[Path, Path]:
    from ticketlab.data.synthetic import build_tokenizer, write_glue_tasks
    from ticketlab.models.tiny import tiny_model

    model_dir = root / "model"
    tokenizer = build_tokenizer(model_dir)
    tiny_model("bert", seed=0, vocab_size=len(tokenizer)).save_pretrained(model_dir)
    return model_dir, write_glue_tasks(root / "glue", train, 64, seed=0)


def grid_spec(model_dir: Path, data: Path):
    from ticketlab.experiments.grid import GridSpec

    return GridSpec(
        model=str(model_dir),
        tasks=["cola", "sst2"],
        data_dir=str(data),
        methods=["full", "omp", "random"],
        sparsities=[0.5, 0.7],
        seeds=[0, 1],
        recipe={"epochs": 2, "batch_size": 16, "lr": 1e-3, "max_length": 64, "log_every": 1000},
    )


def fine_tuning_seconds(root: Path) -> float:
    return sum(
        json.loads(p.read_text()).get("wall_seconds", 0.0) for p in root.glob("cells/*/*/results.json")
    )


def main() -> None:
    import torch

    from ticketlab.experiments.grid import GridRunner
    from ticketlab.experiments.grid.executors import run_grid_locally
    from ticketlab.experiments.grid.plan import plan_steps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train", type=int, default=2400, help="training examples per task")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_grid_executors."))
    try:
        model_dir, data = build_world(work, args.train)
        spec = grid_spec(model_dir, data)
        steps = len(plan_steps(spec))
        quiet = {"quiet": True, "echo": lambda _: None, "cache_dir": str(work / "cache")}
        # Warm the tokenisation cache once so neither run pays for it.
        warm = GridRunner(spec, work / "warm", **quiet)
        for step in plan_steps(spec):
            if step.kind == "cell" and step.cell.method == "full" and step.cell.seed == 0:
                warm.run_cell(step.cell)
        serial_s, serial = timed(lambda: GridRunner(spec, work / "serial", **quiet).run_all())
        local_s, local = timed(lambda: run_grid_locally(spec, work / "local", args.workers, **quiet))
        same = [c["values"] for c in serial["cells"]] == [c["values"] for c in local["cells"]]
        own_seconds = fine_tuning_seconds(work / "local")
        overhead = max(0.0, local_s * args.workers - own_seconds) / steps
        result = {
            "steps": steps,
            "cells": sum(1 for s in plan_steps(spec) if s.kind == "cell"),
            "workers": args.workers,
            "serial_s": serial_s,
            "local_s": local_s,
            "local_over_serial": local_s / serial_s,
            "target": 0.6,
            "same_metrics": same,
            "fine_tuning_s_per_cell": own_seconds / 20,
            "local_overhead_s_per_step": overhead,
        }
        print(json.dumps(result, indent=2))
        print(f"results written to {write_results('grid_executors', result)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The same tiny grid run serially, by the local executor and by the Ray executor (2 workers each).

A tiny BERT (built from a config, with the demo's word-level tokenizer) and the demo's two
generated tasks; methods full, omp and matched random at two sparsities, two seeds: 20 fine-tuning
cells plus their tickets (26 steps). Reports the wall times, the ratios local / serial and
ray / serial measured in one run (target for 2 workers: <= 0.6), whether all gave the same
metrics, and each executor's own cost per step (its wall time beyond the steps' own fine-tuning
seconds, spread over its steps). For the Ray path also the cost of one step's trip alone
(scheduling + the result's hand-back): a finished step submitted as a task, against the same
step read by the driver itself, and Ray's start (a local Ray, then its workers' first imports).

    PYTHONPATH=src python benchmarks/bench_grid_executors.py [--workers 2] [--train 2400] [--repeats 3] [--no-ray]

The executors run interleaved (serial, local, ray, serial, ...), each repeat in a fresh folder,
and the ratios are of the medians: the machine's speed drifts from one minute to the next (a
serial run took 38 s and 50 s ten minutes apart on the same two idle cores).

Each process runs on one thread (every executor), so 2 workers can use the two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

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


def ray_trip_seconds(spec, root: Path, cache_dir: str, workers: int) -> dict[str, float]:
    """Ray's own cost of one step: each finished step of ``root`` submitted as a task, one at a
    time (its trip: scheduling, the task reading the finished step, the record handed back),
    against the same read done by the driver; and the seconds Ray takes to start and to warm
    its workers (their first task imports ticketlab and torch)."""
    import ray

    from ticketlab.experiments.grid import GridRunner
    from ticketlab.experiments.grid.executors import run_one
    from ticketlab.experiments.grid.plan import plan_steps
    from ticketlab.experiments.grid.ray_executor import RayOptions, start_ray, step_task
    from ticketlab.experiments.store import spec_to_dict

    plan = plan_steps(spec)
    start_s, _ = timed(lambda: start_ray(RayOptions(workers=workers)))
    try:
        task = ray.remote(max_retries=0)(step_task)
        spec_ref = ray.put(spec_to_dict(spec))
        options = {"threads": 1, "cache_dir": cache_dir, "cwd": None, "run": "bench"}
        warm_s, _ = timed(
            lambda: ray.get([task.remote(spec_ref, str(root), plan[0], options) for _ in range(workers)])
        )
        trips = [
            timed(lambda s=step: ray.get(task.remote(spec_ref, str(root), s, options)))[0] for step in plan
        ]
    finally:
        ray.shutdown()
    runner = GridRunner(spec, root, cache_dir=cache_dir, quiet=True, echo=lambda _: None)
    reads = [timed(lambda s=step: run_one(runner, s))[0] for step in plan]
    return {
        "ray_start_s": start_s,
        "ray_workers_warm_s": warm_s,
        "ray_trip_s_per_step": sum(trips) / len(trips),
        "same_step_in_driver_s": sum(reads) / len(reads),
        "ray_overhead_s_per_step": (sum(trips) - sum(reads)) / len(trips),
    }


def main() -> None:
    import torch

    from ticketlab.experiments.grid import GridRunner
    from ticketlab.experiments.grid.executors import run_grid_locally
    from ticketlab.experiments.grid.plan import plan_steps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train", type=int, default=2400, help="training examples per task")
    parser.add_argument("--no-ray", action="store_true", help="serial and local only")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every executor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_grid_executors."))
    try:
        model_dir, data = build_world(work, args.train)
        spec = grid_spec(model_dir, data)
        steps = len(plan_steps(spec))
        cells = sum(1 for s in plan_steps(spec) if s.kind == "cell")
        # The live view of the parallel executors, one line per finished step, is not timed output.
        quiet = {"quiet": True, "echo": lambda _: None, "cache_dir": str(work / "cache")}
        parallel = {**quiet, "stream": open(os.devnull, "w")}  # noqa: SIM115 - closed with the process
        # Warm the tokenisation cache once so no run pays for it.
        warm = GridRunner(spec, work / "warm", **quiet)
        for step in plan_steps(spec):
            if step.kind == "cell" and step.cell.method == "full" and step.cell.seed == 0:
                warm.run_cell(step.cell)
        # Interleaved repeats (serial, local, ray, serial, ...), each in a fresh folder: the
        # machine's speed drifts between minutes, so the ratios are of medians over the repeats.
        times: dict[str, list[float]] = {"serial": [], "local": [], "ray": []}
        outcomes: dict[str, Any] = {}
        own: dict[str, list[float]] = {"local": [], "ray": []}
        executors = ["serial", "local"] + ([] if args.no_ray else ["ray"])
        for repeat in range(args.repeats):
            for name in executors:
                folder = work / f"{name}-{repeat}"
                if name == "serial":
                    seconds, outcome = timed(lambda f=folder: GridRunner(spec, f, **quiet).run_all())
                elif name == "local":
                    seconds, outcome = timed(
                        lambda f=folder: run_grid_locally(spec, f, args.workers, **parallel)
                    )
                else:
                    from ticketlab.experiments.grid.ray_executor import RayOptions, run_grid_on_ray

                    seconds, outcome = timed(
                        lambda f=folder: run_grid_on_ray(
                            spec, f, RayOptions(workers=args.workers), **parallel
                        )
                    )
                times[name].append(seconds)
                outcomes.setdefault(name, []).append([c["values"] for c in outcome["cells"]])
                if name != "serial":
                    own[name].append(fine_tuning_seconds(folder))
                print(
                    f"repeat {repeat + 1} {name}: {seconds:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True
                )
        serial_s = statistics.median(times["serial"])
        reference = outcomes["serial"][0]
        result = {
            "steps": steps,
            "cells": cells,
            "workers": args.workers,
            "train_examples_per_task": args.train,
            "repeats": args.repeats,
            "times_s": {k: v for k, v in times.items() if v},
            "serial_s": serial_s,
            "target": 0.6,
            "serial_same_metrics_every_repeat": all(o == reference for o in outcomes["serial"]),
        }
        for name in executors[1:]:
            median = statistics.median(times[name])
            result |= {
                f"{name}_s": median,
                f"{name}_over_serial": median / serial_s,
                f"{name}_over_serial_per_repeat": [t / s for t, s in zip(times[name], times["serial"])],
                f"{name}_same_metrics": all(o == reference for o in outcomes[name]),
                f"{name}_overhead_s_per_step": max(0.0, median * args.workers - statistics.median(own[name]))
                / steps,
            }
        result["fine_tuning_s_per_cell"] = statistics.median(own["local"]) / cells
        if not args.no_ray:
            result["ray_path"] = ray_trip_seconds(spec, work / "ray-0", quiet["cache_dir"], args.workers)
        result["load_average_after"] = list(os.getloadavg())
        print(json.dumps(result, indent=2))
        print(f"results written to {write_results('grid_executors', result)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

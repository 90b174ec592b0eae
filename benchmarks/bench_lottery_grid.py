"""BERT-Tickets on real data: MiniLM-L6 tickets by IMP, OMP and matched random on STS-B and CoLA.

One ticket grid per task (``ticketlab grid``'s code path, ``GridRunner``), then one report over
both (``ticketlab report``): the full model, IMP with rewinding at levels 0.1 ... 0.7, OMP and
random pruning matched per matrix to OMP at 0.5 and 0.7, each fine-tuned with 3 seeds. The grid
directories are kept, so a stopped benchmark resumes where it stopped (finished cells are skipped).

Scope ``encoder`` (BERT-Tickets'), ranked **per matrix** by default, not globally as BERT-Tickets
does: MiniLM-L6's pooler (which the classifier reads) was never trained by its sentence-embedding
recipe and its weights are 5-10x smaller than the encoder's (mean |w| 0.007 against 0.03-0.07), so
a global ranking prunes it first: 99.2% of it at 40% overall sparsity, all of it from 50%, and every
ticket from there on predicts a constant (docs/BENCHMARKS.md, second run). ``--scheme global``
runs BERT-Tickets' ranking.

On two CPU cores the full-size grid would take many hours (IMP alone is 8 fine-tunes per task and
seed), so by default the training sets are subsampled (a fixed random draw of N examples, a different N per
task, chosen so each task still learns something: CoLA needs more examples than STS-B) and the dev
sets cut to the first 500 examples; the output and the JSON say so. ``--full`` uses whole
training and dev sets (for the GPU machine). Two processes, one per task (``--tasks stsb`` and
``--tasks cola``, each with ``OMP_NUM_THREADS=1``), use both cores; ``--report-only`` then writes the
report over both grids.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_lottery_grid.py \\
        [--tasks stsb,cola] [--seeds 0,1,2] [--scheme per-matrix|global] [--out DIR] [--full]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS_DIR, relative_path, shared_dir, write_results

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"
LR = 1e-4  # ../shared/README.md: 2e-5 is too small for this 6-layer, 384-wide model
SPARSITIES = [0.5, 0.7]
IMP_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
# Subsampled recipe per task (CPU): training examples (a fixed random draw: GLUE files are ordered
# by source, so the first N are one genre; None: the whole set), epochs and batch size. The first
# run (first 400 STS-B x 3 epochs, first 1000 CoLA x 2) left even the full model untrained
# (docs/BENCHMARKS.md). Measured on one idle core: STS-B trains at about 12 examples/s; 1200 x 2
# epochs gives the full model Pearson 0.77 at batch 32 (75 steps), but an OMP ticket at 50% only
# 0.07: it needs more updates (0.58 after 4 epochs), and batch 16 gives them at the same cost
# (150 steps: 0.39). CoLA (about 43 examples/s) stays at the majority class (MCC 0) after 3000
# random examples at lr 1e-4 or 3e-4, batch 32 or 16; after one whole epoch at batch 32 it is
# seed-dependent (MCC 0.00 and 0.15), so: the whole set, one epoch, batch 16 (534 steps). Both
# about 205 s per fine-tune, 39 fine-tunes per task: about 2 h 15 min of one core each.
CPU_RECIPES: dict[str, dict[str, Any]] = {
    "stsb": {
        "max_train_samples": 1200,
        "epochs": 2,
        "batch_size": 16,
        "max_eval_samples": 500,
        "train_subset": "random",
    },
    "cola": {"max_train_samples": None, "epochs": 1, "batch_size": 16, "max_eval_samples": 500},
}


def grid_dir_name(task: str, seeds: list[int]) -> str:
    """``grid-<task>`` for the default seeds, else ``grid-<task>-seeds<a>_<b>``: a task's seeds can be
    run as separate processes (separate grids), and the report reads them together."""
    return f"grid-{task}" if seeds == [0, 1, 2] else f"grid-{task}-seeds{'_'.join(map(str, seeds))}"


def finetune_minutes(grid_dir: Path) -> dict[str, float]:
    """Minutes of fine-tuning a grid holds, from its runs' own records (IMP levels and cells; a cell
    taken over from IMP's level 0 counted once): the compute, whatever restarts the wall time saw."""
    runs = [json.loads(p.read_text()) for p in sorted(grid_dir.glob("**/results.json"))]
    runs = [r for r in runs if "wall_seconds" in r and "reused_from" not in r]
    return {"finetune_runs": len(runs), "minutes": round(sum(r["wall_seconds"] for r in runs) / 60, 1)}


def describe_recipe(task: str) -> str:
    recipe = CPU_RECIPES[task]
    count = recipe.get("max_train_samples")
    examples = f"{count} random examples" if count else "the whole training set"
    return f"{task} {examples} x {recipe['epochs']} epochs, batch {recipe['batch_size']}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="stsb,cola", help="GLUE tasks, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    parser.add_argument(
        "--out", default=str(RESULTS_DIR / "lottery_grid"), help="folder for grids and report"
    )
    parser.add_argument("--full", action="store_true", help="whole training and dev sets, 3 epochs")
    parser.add_argument(
        "--scheme",
        choices=("per-matrix", "global"),
        default="per-matrix",
        help="magnitude ranking (default per-matrix: a global one prunes MiniLM-L6's untrained pooler first)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="no training: the report over the tasks' existing grids"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="16 training and dev examples, 1 epoch: checks the plumbing"
    )
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def grid_spec(
    task: str, seeds: list[int], shared: Path, full: bool, smoke: bool = False, scheme: str = "per-matrix"
) -> dict[str, Any]:
    recipe: dict[str, Any] = {"lr": LR}
    if smoke:
        recipe.update(max_train_samples=16, max_eval_samples=16, epochs=1)
    elif not full:
        recipe.update({k: v for k, v in CPU_RECIPES.get(task, CPU_RECIPES["stsb"]).items() if v is not None})
    return {
        "model": str(shared / MODEL),
        "tasks": [task],
        "methods": ["full", "omp", "random", "imp"],
        "sparsities": SPARSITIES,
        "imp_levels": IMP_LEVELS,
        "scope": "encoder",
        "scheme": scheme,
        "seeds": seeds,
        "data_dir": str(shared / GLUE),
        "recipe": recipe,
    }


def main(argv: list[str] | None = None) -> int:
    import transformers

    from ticketlab.experiments.grid import GridRunner, GridSpec
    from ticketlab.reports.report import write_report

    args = parse_args(argv)
    transformers.logging.set_verbosity_error()  # as the CLI does: no load report per cell
    transformers.logging.disable_progress_bar()
    shared = shared_dir()
    if shared is None:
        print("TICKETLAB_SHARED is not set (or has no models/): nothing to benchmark", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = (
        "whole training and dev sets"
        if args.full
        else (
            "training sets subsampled: "
            + ", ".join(describe_recipe(t) for t in args.tasks if t in CPU_RECIPES)
            + "; dev sets cut to the first 500 examples"
        )
    )
    print(f"MiniLM-L6, lr {LR}, seeds {args.seeds}, encoder scope ranked {args.scheme}: {scale}", flush=True)
    started = time.time()
    timings: dict[str, float] = {}
    grid_dirs = []
    for task in args.tasks:
        if args.report_only:
            grid_dirs += sorted(p for p in out.glob(f"grid-{task}*") if (p / "spec.json").exists())
            continue
        spec = GridSpec(**grid_spec(task, args.seeds, shared, args.full, args.smoke, args.scheme))
        task_started = time.time()
        runner = GridRunner(spec, out / grid_dir_name(task, args.seeds), quiet=True)
        runner.run_all()
        timings[task] = time.time() - task_started
        grid_dirs.append(runner.root)
        print(f"{task}: grid done in {timings[task] / 60:.1f} min", flush=True)
    report = write_report(grid_dirs, out / "report")
    compute = {relative_path(d): finetune_minutes(Path(d)) for d in grid_dirs}
    wall = time.time() - started
    table = (out / "report" / "results.md").read_text()
    print(table)
    for grid, used in compute.items():
        print(
            f"{grid}: {used['finetune_runs']} fine-tuning runs, {used['minutes']} min of fine-tuning in all"
        )
    print(f"wall time {wall / 60:.1f} min; report in {out / 'report'}")
    result = {
        "benchmark": "lottery_grid",
        "scale": scale,
        "lr": LR,
        "scheme": args.scheme,
        "grid_minutes_this_run": {t: round(s / 60, 2) for t, s in timings.items()},
        "wall_minutes_this_run": round(wall / 60, 2),
        "finetune_minutes_per_grid": compute,
        "report": report,
    }
    write_results(f"lottery_grid-{'-'.join(args.tasks)}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

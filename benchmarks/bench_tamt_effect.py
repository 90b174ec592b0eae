"""TAMT's effect on real data: distillation loss and downstream scores of TAMT-KD, OMP and random tickets.

A thin script over the ticket grid. It writes a grid spec and runs it (``GridRunner`` and
``write_report``, the code path of ``ticketlab grid``):

- model: MiniLM-L6 (``$TICKETLAB_SHARED/models/all-MiniLM-L6-v2``; it has no MLM head, so the TAMT
  objective is ``kd`` and the report marks MLM loss as not available);
- tickets: ``full``, ``omp``, ``random`` (matched per matrix to OMP), ``tamt`` (TAMT-KD trained on
  WikiText-2 ``test.txt``, one mask per sparsity), at sparsities 0.5 and 0.7, TAMT's protocol
  (scope ``encoder+embeddings``, scheme ``per-matrix``);
- pre-training loss: each ticket's KD loss (MSE over layers, TAMT's evaluation) on WikiText-2
  ``valid.txt`` (held out from the TAMT text);
- downstream: STS-B (Pearson) and CoLA (Matthews corr.) from ``$TICKETLAB_SHARED/data/glue``,
  seeds 0, 1, 2, lr 1e-4 (the full model's lr for MiniLM-L6 on both, see ../shared/README.md),
  batch 16 (more updates for the same cost: see bench_lottery_grid.py), best dev score over the
  epoch-end evaluations.

It prints a table (KD loss, and downstream mean ± std per task, per method x sparsity), the
correlations between KD loss and downstream score, and the search cost of the TAMT masks, and
writes ``benchmarks/results/tamt_effect.json``. The grid's run directory (default
``runs/tamt-effect``) holds everything, with the report in ``<out>/report``; rerunning the same
command resumes (finished cells, masks and losses are skipped).

Size: on two CPU cores the full-size grid (42 fine-tuning runs of the whole training sets and
TAMT's 11k-22k steps) would take days, so the defaults subsample as ``bench_lottery_grid.py``
does (so the two compare): a fixed random draw of 3000 CoLA training examples for 1 epoch and of 600
STS-B ones for 2 (the first run of bench_lottery_grid.py, with the first examples of the files,
left even the full model untrained), the first 500 dev examples, TAMT-KD for 150 steps of 16 blocks x 128 tokens
(the paper's batch, a quarter of its length) at lr 5e-4 (25x the paper's 2e-5 so that the scores
cross within the budget: kept scores start 2c = 0.02 above pruned ones, and Adam moves each by
about lr per step, so the first crossings come after about 20 steps), and the KD loss on the
first 64 blocks x 128 tokens of valid.txt. ``--estimate`` prints the expected time of the chosen
sizes (idle two-core rates) and exits. On a GPU machine pass larger sizes (``--max-train-samples
0 --max-eval-samples 0 --tamt-steps ...``).

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_tamt_effect.py \\
        [--tasks stsb,cola] [--sparsities 0.5,0.7] [--seeds 0,1,2] [--max-train-samples N] \\
        [--tamt-steps 150] [--out runs/tamt-effect]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import markdown_table, shared_dir, write_results
from bench_lottery_grid import CPU_RECIPES as LOTTERY_RECIPES

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"
TAMT_TEXT = "data/wikitext-2/test.txt"
EVAL_TEXT = "data/wikitext-2/valid.txt"
METHODS = ["full", "omp", "random", "tamt"]
# Subsampled recipe per task (CPU): bench_lottery_grid.py's, so the two benchmarks' cells compare
# (the dev cut is this script's own --max-eval-samples).
CPU_RECIPES: dict[str, dict[str, Any]] = {
    task: {k: v for k, v in recipe.items() if k != "max_eval_samples"}
    for task, recipe in LOTTERY_RECIPES.items()
}
# Rates for --estimate (MiniLM-L6): fine-tuning examples/s on one idle core, measured by
# bench_lottery_grid.py's cells (CoLA about 43, STS-B about 12; their sentences are short and long),
# evaluation about 3x faster; two threads take it about TWO_THREAD_SPEEDUP faster. A TAMT-KD
# step, measured single-threaded as CPU time (which a busy machine does not inflate): 0.41 s for
# the exact per-matrix top-k over 22.5M scores plus 1.6 ms per token of the batch (1.27 s at 8 x 64,
# 3.6 s at 16 x 128); two idle threads take it about 1.6x faster.
TRAIN_RATE = {"cola": 43.0, "stsb": 12.0}
EVAL_RATE = {"cola": 200.0, "stsb": 80.0}
CELL_OVERHEAD_S = 4.0  # model load, data from the cache, writing results
TAMT_TOPK_CPU_S, TAMT_TOKEN_CPU_S, TWO_THREAD_SPEEDUP = 0.41, 0.0016, 1.6
KD_EVAL_S_PER_BLOCK = 0.15  # teacher + student forward of one 128-token block


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="stsb,cola", help="GLUE tasks, comma-separated")
    p.add_argument("--sparsities", default="0.5,0.7", help="ticket sparsities, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, comma-separated")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (every task)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: CoLA 1, STS-B 2)")
    p.add_argument(
        "--batch-size", type=int, help="fine-tuning batch size (default: 16, as bench_lottery_grid.py)"
    )
    p.add_argument(
        "--max-train-samples",
        type=int,
        help="N training examples of every task (0: all; default: CoLA 3000, STS-B 600, a random draw)",
    )
    p.add_argument("--max-eval-samples", type=int, default=500, help="first N dev examples (0: all)")
    p.add_argument("--tamt-steps", type=int, default=150, help="TAMT-KD steps per mask")
    p.add_argument("--tamt-batch-size", type=int, default=16, help="TAMT blocks per step")
    p.add_argument("--tamt-max-length", type=int, default=128, help="TAMT block length in tokens")
    p.add_argument("--tamt-lr", type=float, default=5e-4, help="TAMT learning rate (paper: 2e-5)")
    p.add_argument("--eval-max-sequences", type=int, default=64, help="valid.txt blocks for the KD loss")
    p.add_argument("--eval-max-length", type=int, default=128, help="their length in tokens")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default="runs/tamt-effect", help="the grid's run directory (resumed)")
    p.add_argument("--estimate", action="store_true", help="print the expected time and exit")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing more: the losses of the tickets made so far and the report over finished cells",
    )
    p.add_argument(
        "--results-name",
        default="tamt_effect",
        help="write benchmarks/results/<NAME>.json (smoke runs: another)",
    )
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def task_recipe(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """Training subsample (None: the whole set) and epochs of ``task``: the flags, else the CPU recipe."""
    default = CPU_RECIPES.get(task, {"max_train_samples": None, "epochs": 3})
    count = args.max_train_samples if args.max_train_samples is not None else default["max_train_samples"]
    recipe = {
        "max_train_samples": count or None,
        "epochs": args.epochs or default["epochs"],
        "batch_size": args.batch_size or default.get("batch_size", 32),
    }
    if recipe["max_train_samples"]:
        recipe["train_subset"] = default.get("train_subset", "random")
    return recipe


def grid_spec(args: argparse.Namespace, shared: Path) -> dict[str, Any]:
    """The grid the benchmark runs, as a spec file would hold it."""
    recipe: dict[str, Any] = {"lr": args.lr, "max_length": 128}
    if args.max_eval_samples:
        recipe["max_eval_samples"] = args.max_eval_samples
    return {
        "model": str(shared / MODEL),
        "tasks": args.tasks,
        "data_dir": str(shared / GLUE),
        "methods": METHODS,
        "sparsities": args.sparsities,
        "seeds": args.seeds,
        "scope": "encoder+embeddings",
        "scheme": "per-matrix",
        "recipe": recipe,
        "task_recipes": {task: task_recipe(args, task) for task in args.tasks},
        "tamt": {
            "objective": "kd",
            "text": str(shared / TAMT_TEXT),
            "steps": args.tamt_steps,
            "batch_size": args.tamt_batch_size,
            "max_length": args.tamt_max_length,
            "lr": args.tamt_lr,
            # What this benchmark ran (its run directory's hash is unchanged by saying so); the
            # paper's optimizer and its effect are bench_tamt_budgets.py's.
            "optimizer": "adamw",
        },
        "pretrain_loss": {
            "text": str(shared / EVAL_TEXT),
            "max_sequences": args.eval_max_sequences,
            "max_length": args.eval_max_length,
            "kd_loss": "mse",
        },
    }


def estimate_seconds(args: argparse.Namespace, dev_sizes: dict[str, int]) -> dict[str, float]:
    """Expected wall time on an idle two-core machine, by part (rough: see the rates above)."""
    tickets_per_seed = 1 + 3 * len(args.sparsities)  # full + omp, random, tamt per sparsity
    finetune = 0.0
    for task in args.tasks:
        recipe = task_recipe(args, task)
        train = recipe["max_train_samples"] or 8551  # CoLA's size, when the whole set is asked for
        dev = min(args.max_eval_samples or dev_sizes.get(task, 1500), dev_sizes.get(task, 1500))
        per_cell = (
            recipe["epochs"] * train / TRAIN_RATE.get(task, 12.0)
            + recipe["epochs"] * dev / EVAL_RATE.get(task, 80.0)
        ) / TWO_THREAD_SPEEDUP + CELL_OVERHEAD_S
        finetune += per_cell * tickets_per_seed * len(args.seeds)
    tokens = args.tamt_batch_size * args.tamt_max_length
    step = (TAMT_TOPK_CPU_S + TAMT_TOKEN_CPU_S * tokens) / TWO_THREAD_SPEEDUP
    tamt = len(args.sparsities) * (args.tamt_steps * step + 20.0)  # + loading the model and text
    masks = len(args.sparsities) * (2 + len(args.seeds))  # omp, tamt, random per seed
    kd = masks * (args.eval_max_sequences * KD_EVAL_S_PER_BLOCK + 3.0)
    return {"finetune_s": finetune, "tamt_s": tamt, "kd_loss_s": kd, "total_s": finetune + tamt + kd}


def results_table(report: dict[str, Any], tasks: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Rows method x sparsity: KD loss, then each task's dev score mean ± std (x100)."""
    points = {(p["method"], p["sparsity"]): p for p in report["pretrain_loss"]["points"]}
    cells = {(c["task"], c["method"], round(c["sparsity"], 4)): c for c in report["cells"]}
    header = ["method", "sparsity", "KD loss (MSE, valid.txt)"]
    header += [f"{t} {next((c['metric'] for c in report['cells'] if c['task'] == t), '')}" for t in tasks]
    keys = sorted(
        {(c["method"], round(c["sparsity"], 4)) for c in report["cells"]}, key=lambda k: (k[1], k[0])
    )
    rows = []
    for method, sparsity in keys:
        loss = points.get((method, sparsity))
        row: list[Any] = [method, f"{sparsity:.0%}", "0 (dense)" if method == "full" else ""]
        if loss is not None:
            row[2] = f"{loss['kd_loss']:.4f}"
        for task in tasks:
            cell = cells.get((task, method, sparsity))
            mark = " ✓" if cell and cell.get("matching") else ""
            row.append(f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}{mark}" if cell else "")
        rows.append(row)
    return header, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shared = shared_dir()
    if shared is None or not (shared / MODEL).is_dir():
        print("set TICKETLAB_SHARED to the folder with models/all-MiniLM-L6-v2 and data/", file=sys.stderr)
        return 2
    dev_sizes = {"cola": 1043, "stsb": 1500}
    estimate = estimate_seconds(args, dev_sizes)
    print(
        f"expected time on an idle 2-core machine: about {estimate['total_s'] / 60:.0f} min "
        f"(fine-tuning {estimate['finetune_s'] / 60:.0f}, TAMT {estimate['tamt_s'] / 60:.0f}, "
        f"KD losses {estimate['kd_loss_s'] / 60:.0f})"
    )
    if args.estimate:
        return 0

    import torch
    import transformers

    from ticketlab.experiments.grid import GridRunner, GridSpec
    from ticketlab.reports.report import write_report

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # as the CLI does: no load report per cell
    transformers.logging.disable_progress_bar()
    spec_data = grid_spec(args, shared)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.grid.json").write_text(json.dumps(spec_data, indent=2) + "\n")
    spec = GridSpec(**spec_data)
    started = time.perf_counter()
    runner = GridRunner(spec, out, quiet=True)
    if args.report_only:  # a stopped run: what is finished (the JSON says which cells)
        runner.measure_pretrain_losses()
    else:
        runner.run_all()
    report = write_report([runner.root], runner.root / "report")
    wall = time.perf_counter() - started

    header, rows = results_table(report, args.tasks)
    print(markdown_table(rows, header))
    print()
    for entry in report["pretrain_loss"]["correlations"]:
        if entry["loss"] == "kd_loss" and entry.get("pearson") is not None:
            print(
                f"{entry['task']}: KD loss vs dev {entry['metric']} over {entry['n']} tickets: "
                f"Pearson r = {entry['pearson']:.3f} (p = {entry['pearson_p']:.3f}), "
                f"Spearman rho = {entry['spearman']:.3f} (p = {entry['spearman_p']:.3f})"
            )
    for row in report["search_cost"]:
        print(
            f"search cost of {row['method']} at {row['sparsity']:.0%}: {row['steps']:g} steps, "
            f"{row['examples']:g} examples, {row['wall_time_s']:.0f} s"
        )
    print(f"\nwall time {wall / 60:.1f} min; report in {runner.root / 'report'}")
    path = write_results(
        args.results_name,
        {
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("estimate", "results_name", "report_only")
            },
            "finished": "finished cells only (--report-only)" if args.report_only else "every cell",
            "grid_spec": spec_data,
            "command": " ".join(["python", "benchmarks/bench_tamt_effect.py", *(argv or sys.argv[1:])]),
            "wall_seconds": wall,
            "estimate_idle_s": estimate,
            "table": {"header": header, "rows": rows},
            "correlations": report["pretrain_loss"]["correlations"],
            "pretrain_loss_points": report["pretrain_loss"]["points"],
            "search_cost": report["search_cost"],
            "cells": report["cells"],
            "run_dir": str(runner.root),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

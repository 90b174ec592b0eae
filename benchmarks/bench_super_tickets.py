"""Super tickets on real data: MiniLM-L6 on MRPC and STS-B, winning / random / losing, the phase transition.

For each task the script runs ``ticketlab.experiments.super_tickets.run_super_tickets`` (the code
path of ``ticketlab super-tickets``) on ``../shared/models/all-MiniLM-L6-v2`` (6 layers x 12 heads)
with the GLUE TSVs in ``../shared/data/glue``: per seed, fine-tune the full model, score its heads
and FFNs (liang2021: per token, on the training subset), build the nested masks at each level p
(floor(p x 72) heads, at least one kept per layer, with round(p x 10/12 x 6) = round(5 p) of the 6
FFN layers: 1, 2, 3, 4 at p = 0.2, 0.4, 0.6, 0.8, the paper's proportion of round(10 p) of 12), rewind
to the pre-trained weights with a fresh task head and fine-tune every ticket with its mask held.

Reported per task: dev score (MRPC accuracy, STS-B Pearson; the best evaluation, as the papers),
mean +- std over seeds, per kind and level, beside the fraction of encoder weights left and the
full model's score; the super ticket (the best winning level). Written to
``benchmarks/results/super_tickets.json`` after each task, with the phase-transition plots
``super_tickets_<task>.png`` beside it; a Markdown table is printed.

The runs live in ``--work-dir`` (default ``$TICKETLAB_CACHE/bench_super_tickets``, else
``~/.cache/ticketlab/bench_super_tickets``; it holds each seed's fine-tuned full model, about 90 MB
each): rerunning the same command resumes where a stopped run left off.

On two CPU cores a full-size run is far too slow (STS-B: 15 minutes per 3-epoch fine-tune), so the
defaults subsample: a fixed random draw (``train_subset`` random: GLUE files are ordered by source)
of 1200 STS-B training examples (bench_lottery_grid.py's draw, with which the full model learns)
and of 1200 MRPC ones, 2 epochs, the first 250 STS-B dev examples and MRPC's whole dev set (408:
its accuracies sit a few points above the majority class at this budget, so every example counts),
batch 16 (twice the updates of batch 32 for the same cost: tickets need them, see
bench_lottery_grid.py), lr 1e-4, an evaluation at each epoch end (the best is
reported); importance is scored on the same training examples. A first attempt with the first 320
STS-B and 128 MRPC examples x 3 epochs left the full model untrained (MRPC: the majority class,
0.685, for every ticket). That is 2 tasks x 3 seeds x (1 full + 3 kinds x 4 levels) = 78 fine-tuning
runs and 6 importance passes.

Time: measured on STS-B (2026-11-22), 150-200 s per fine-tuning run on one core (15 training
examples/s with the evaluations), 13 runs per seed: about 1 h 50 min per task on one core (the
earlier estimate from bench_finetune.py's dense throughput, 55 minutes, was too low); MRPC at 1200
x 2 210-250 s per run, 152 minutes of one core (results in docs/BENCHMARKS.md). Run the two tasks
as two processes, one per core (``--tasks stsb --threads 1`` and ``--tasks mrpc --threads 1``): each
writes its own task's entry of the results JSON. Progress is saved step by step: a stopped run
resumes with the same command.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_super_tickets.py \\
        [--tasks mrpc,stsb] [--levels 0.2,0.4,0.6,0.8] [--kinds winning,random,losing] [--seeds 0,1,2] \\
        [--lr 1e-4] [--epochs 2] [--max-train-samples stsb=1200,mrpc=1200] [--max-eval-samples stsb=250,mrpc=0]
        [--train-subset random] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS_DIR, markdown_table, require_shared, write_results

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"
# MRPC, full model, seed 0, lr 1e-4 (dev accuracy; majority class 0.685): 600 random x 2 epochs 0.695,
# 600 x 3 at lr 2e-4 0.715 then 0.685, 1200 x 2 0.725 (229 s on one core). MRPC barely learns on
# CPU budgets; the whole training set (3,668) is for the GPU machine.
DEFAULT_TRAIN = {"stsb": 1200, "mrpc": 1200}
DEFAULT_EVAL = {"stsb": 250, "mrpc": None}


def per_task(text: str, defaults: dict[str, int | None]) -> dict[str, int | None]:
    """``N`` (every task), or ``task=N,task=N`` (the others keep their defaults); 0 means all."""
    values: dict[str, int | None] = dict(defaults)
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            task, count = part.split("=", 1)
            values[task.strip().lower()] = int(count) or None
        else:
            values = {task: int(part) or None for task in values} | {"*": int(part) or None}
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mrpc,stsb", help="GLUE tasks, comma-separated")
    parser.add_argument("--levels", default="0.2,0.4,0.6,0.8", help="fractions of heads to prune")
    parser.add_argument("--kinds", default="winning,random,losing")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ffn-ratio", type=float, default=10 / 12, help="FFN layers = round(p x ratio x 6)")
    parser.add_argument("--variant", default="liang2021", help="importance variant")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (suits MiniLM-L6)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train-subset", default="random", help="which N training examples: first, or random (a fixed draw)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-train-samples", default="", help="N or task=N,...; 0 = all (defaults above)")
    parser.add_argument("--max-eval-samples", default="", help="N or task=N,...; 0 = all (defaults above)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--work-dir", help="run directories (resumable; default: under the ticketlab cache)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "super_tickets.json"), help="results JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.tasks = [t.strip().lower().replace("-", "") for t in args.tasks.split(",") if t.strip()]
    args.levels = [float(x) for x in args.levels.split(",") if x.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.train = per_task(args.max_train_samples, DEFAULT_TRAIN)
    args.eval = per_task(args.max_eval_samples, DEFAULT_EVAL)
    return args


def work_dir(args: argparse.Namespace) -> Path:
    if args.work_dir:
        return Path(args.work_dir)
    cache = os.environ.get("TICKETLAB_CACHE") or str(Path.home() / ".cache" / "ticketlab")
    return Path(cache) / "bench_super_tickets"


def timing(run_dir: Path) -> dict[str, Any]:
    """Seconds spent in the finished steps (from their own records), and training throughput."""
    from ticketlab.io import read_json

    runs = [read_json(p) for p in sorted(run_dir.glob("*-seed*/results.json"))]
    masks = [read_json(p) for p in sorted(run_dir.glob("importance-seed*/masks.json"))]
    train_rates = [r["train_examples_per_second"] for r in runs if r.get("train_examples_per_second")]
    return {
        "finetune_runs": len(runs),
        "finetune_seconds": sum(r["wall_seconds"] for r in runs),
        "train_seconds": sum(r["train_seconds"] for r in runs),
        "eval_seconds": sum(r["eval_seconds"] for r in runs),
        "importance_seconds": sum(m.get("seconds", 0.0) for m in masks),
        "train_examples_per_second_median": sorted(train_rates)[len(train_rates) // 2]
        if train_rates
        else None,
    }


def keep_other_tasks(out: Path, results: dict[str, Any], tasks: list[str]) -> None:
    """Tasks run as separate processes share the results file: just before writing, take over the
    other tasks' entries (read now, not at start: the other process may have written since) when
    they were measured with the same settings."""
    if not out.exists():
        return
    previous = json.loads(out.read_text())
    if previous.get("settings", {}) | {"threads": results["settings"]["threads"]} == results["settings"]:
        others = {t: v for t, v in previous.get("tasks", {}).items() if t not in tasks}
        results["tasks"] = others | {t: v for t, v in results["tasks"].items() if t in tasks}


def table(summary: dict[str, Any]) -> str:
    rows = []
    full = summary["full"]
    rows.append(["full", "-", 0, 0, "100.0%", f"{full['mean']:.4f} ± {full['std']:.4f}", ""])
    for p in sorted(summary["points"], key=lambda p: (p["level"], p["kind"])):
        rows.append(
            [
                p["kind"],
                f"{p['level']:g}",
                p["heads_pruned"],
                p["ffn_pruned"],
                f"{100 * p['weights_remaining']:.1f}%",
                "n/a" if p["mean"] is None else f"{p['mean']:.4f} ± {p['std']:.4f}",
                "✓" if p["matching"] else "",
            ]
        )
    header = ["ticket", "p", "heads pruned", "FFN layers", "weights left", summary["metric"], "matching"]
    return markdown_table(rows, header)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from ticketlab.experiments.super_tickets import PLOT_FILE, SuperTicketSpec, run_super_tickets

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no load reports for the fresh task heads
    if args.quiet:
        transformers.logging.disable_progress_bar()
    model, glue = require_shared("bench_super_tickets", MODEL, GLUE)
    out = Path(args.out)
    results: dict[str, Any] = {
        "settings": {
            "model": MODEL,
            "levels": args.levels,
            "kinds": args.kinds,
            "seeds": args.seeds,
            "ffn_ratio": args.ffn_ratio,
            "variant": args.variant,
            "lr": args.lr,
            "epochs": args.epochs,
            "train_subset": args.train_subset,
            "batch_size": args.batch_size,
            "max_length": 128,
            "threads": args.threads,
        },
        "tasks": {},
    }
    for task in args.tasks:
        train = args.train.get(task, args.train.get("*"))
        dev = args.eval.get(task, args.eval.get("*"))
        recipe = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "max_length": 128}
        recipe |= {"log_every": 50, "max_train_samples": train, "max_eval_samples": dev}
        if train:
            recipe["train_subset"] = args.train_subset
        spec = SuperTicketSpec(
            model=str(model),
            task=task,
            data_dir=str(glue),
            levels=args.levels,
            kinds=args.kinds,
            seeds=args.seeds,
            variant=args.variant,
            ffn_ratio=args.ffn_ratio,
            recipe={k: v for k, v in recipe.items() if v is not None},
        )
        run_dir = work_dir(args) / task
        started = time.perf_counter()
        print(
            f"== {task}: {train or 'all'} training / {dev or 'all'} dev examples; runs in {run_dir}",
            flush=True,
        )

        def echo(line: str, started: float = started) -> None:
            print(f"[{time.perf_counter() - started:7.0f}s] {line}", flush=True)

        summary = run_super_tickets(spec, run_dir, quiet=args.quiet, echo=echo)
        plot = out.with_name(f"{out.stem}_{task}.png")
        shutil.copyfile(run_dir / PLOT_FILE, plot)
        results["tasks"][task] = {
            "max_train_samples": train,
            "max_eval_samples": dev,
            "wall_seconds_this_invocation": time.perf_counter() - started,
            "timing": timing(run_dir),
            "plot": plot.name,
            **{k: summary[k] for k in ("metric", "full", "points", "super_ticket")},
        }
        keep_other_tasks(out, results, args.tasks)
        path = write_results(out.stem, results, out)
        print(f"\n### {task} ({summary['metric']}, dev, mean ± std over {len(args.seeds)} seeds)\n")
        print(table(summary))
        best = summary["super_ticket"]
        if best:
            print(
                f"\nsuper ticket: winning p={best['level']:g}, {100 * best['weights_remaining']:.1f}% of encoder "
                f"weights: {best['mean']:.4f} ± {best['std']:.4f} (full model {summary['full']['mean']:.4f})"
            )
        print(f"wrote {path} and {plot}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

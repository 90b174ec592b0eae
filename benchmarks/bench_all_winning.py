"""All tickets winning on real data: MiniLM-L6 on MRPC, importance (or magnitude) pruning with the 0.9
rule, then good, random and bad subnetworks retrained, over seeds.

The code path of ``ticketlab all-winning`` (``run_all_winning`` + ``report_run``). Per seed: the full
model is fine-tuned; iterative pruning without retraining (importance: 7 of MiniLM's 72 heads and
one of its 6 FFN layers per step, re-scored on dev with ``prasanna2020``) stops at the first step
whose dev accuracy falls below 0.9 x the full model's; the good, random and bad subnetworks of the
ticket's size are fine-tuned from the pre-trained weights. The rule reads **accuracy**, not MRPC's
default F1: a classifier that answers "paraphrase" for everything scores F1 0.81 on MRPC dev, above
0.9 x a good model's F1, so the F1 rule would never stop; its accuracy (0.68) falls below.

Written: the run directory (``--out``, resumable: rerun the same command to continue), its
``report/`` (Markdown, PNG, JSON) and ``benchmarks/results/all_winning.json`` (table, per-seed
pruning traces, stability, wall time, settings, machine).

Time: on two idle CPU cores MiniLM-L6 fine-tunes MRPC at about 16 examples/s (padded length ~79),
and a pruning step (importance: forward + backward over the dev subset, then an evaluation) costs
about 1.5 dev passes of training speed. The defaults (2 seeds, the first 500 training examples, 3
epochs, the whole dev set of 408) come to about 2 x (4 fine-tunes x 1500 examples / 16 per s +
~8 steps x 408 x 1.5 / 16 per s) = about 25 minutes; scale with ``--max-train-samples`` and
``--seeds``. The full-size run (the whole training set of 3,668, 3 seeds) is about 3.5 hours on
two cores: run that on a GPU machine.

    TICKETLAB_SHARED=../shared PYTHONPATH=src python benchmarks/bench_all_winning.py \\
        [--seeds 0,1] [--max-train-samples 500] [--epochs 3] [--lr 1e-4] [--method importance] \\
        [--out /tmp/all_winning_mrpc] [--threads 2]
    PYTHONPATH=src python benchmarks/bench_all_winning.py --smoke    # tiny model, generated data, ~1 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS_DIR, machine, shared_dir

MODEL = "models/all-MiniLM-L6-v2"
GLUE = "data/glue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mrpc", help="GLUE task (default: mrpc)")
    parser.add_argument("--seeds", default="0,1", help="seeds, comma-separated (default: 0,1)")
    parser.add_argument("--method", choices=("importance", "magnitude"), default="importance")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (suits MiniLM-L6)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-train-samples", type=int, default=500, help="the first N training examples (0: all)"
    )
    parser.add_argument("--max-eval-samples", type=int, default=0, help="the first N dev examples (0: all)")
    parser.add_argument(
        "--main-metric", default="accuracy", help="metric of the stopping rule and the table (MRPC: accuracy)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", help="run directory (default: a fresh temporary directory)")
    parser.add_argument(
        "--results", default=str(RESULTS_DIR / "all_winning.json"), help="results JSON (benchmark summary)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random BERT on generated data: checks the script runs"
    )
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def smoke_inputs(work: Path, args: argparse.Namespace) -> tuple[str, str]:
    """A tiny BERT (with its word-level tokenizer) and the generated SST-2-layout task."""
    from ticketlab.data.synthetic import LEXICON, build_tokenizer, write_glue_tasks
    from ticketlab.models.tiny import tiny_model

    model_dir = work / "tiny-bert"
    tiny_model("bert", seed=0, vocab_size=len(LEXICON.vocabulary()), num_hidden_layers=3).save_pretrained(
        model_dir
    )
    build_tokenizer(model_dir)
    data = write_glue_tasks(work / "glue", num_train=64, num_dev=48)
    args.task, args.epochs, args.lr, args.batch_size = "sst2", 10, 3e-3, 16
    args.max_train_samples, args.max_eval_samples, args.main_metric = 0, 0, "accuracy"
    return str(model_dir), str(data)


def real_inputs() -> tuple[str, str]:
    shared = shared_dir()
    if shared is None:
        sys.exit("bench_all_winning: set TICKETLAB_SHARED to the shared folder (../shared), or use --smoke")
    model, glue = shared / MODEL, shared / GLUE
    for path in (model, glue):
        if not path.is_dir():
            sys.exit(f"bench_all_winning: {path} is missing")
    return str(model), str(glue)


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    from ticketlab.analysis.winning import report_run, table_markdown
    from ticketlab.experiments.winning_tickets import WinningSpec, run_all_winning
    from ticketlab.io import write_json
    from ticketlab.training.metrics import json_safe

    transformers.logging.set_verbosity_error()  # no load reports between the progress lines
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_all_winning_"))
    model, data = smoke_inputs(work, args) if args.smoke else real_inputs()
    recipe: dict[str, Any] = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "main_metric": args.main_metric,
    }
    if args.max_train_samples:
        recipe["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        recipe["max_eval_samples"] = args.max_eval_samples
    spec = WinningSpec(
        model=model, task=args.task, data_dir=data, seeds=args.seeds, method=args.method, recipe=recipe
    )
    out = Path(args.out) if args.out else work / "run"
    start = time.perf_counter()
    results = run_all_winning(spec, out, cache_dir=str(work / "cache"), quiet=True)
    wall = time.perf_counter() - start
    report = report_run(out)
    print(table_markdown(report["table"]))
    for seed in results["seeds"]:
        trace = seed["pruning"]
        print(
            f"seed {seed['seed']}: reference {trace['reference']:.4f}, ticket at step {trace['ticket_step']} "
            f"({trace['stop_reason']}), {seed['ticket'].get('heads_kept', '-')} heads, "
            f"{seed['ticket'].get('ffn_kept', '-')} FFN layers, weights remaining "
            f"{seed['ticket']['weights_remaining']:.3f}"
        )
    print(f"wall time {wall / 60:.1f} min; report: {report['files']['markdown']}")
    if not args.smoke:
        write_json(
            args.results,
            json_safe(
                {
                    "benchmark": "all_winning",
                    "machine": machine(),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("results",)},
                    "wall_seconds": wall,
                    "run_dir": str(out),
                    "table": report["table"],
                    "stability": report["stability"],
                    "seeds": [
                        {"seed": s["seed"], "pruning": s["pruning"], "ticket": s["ticket"], "full": s["full"]}
                        for s in results["seeds"]
                    ],
                }
            ),
        )
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

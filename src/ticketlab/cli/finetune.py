"""``ticketlab finetune``: fine-tune a model or a ticket on a task and write a run directory."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_spec_arguments,
    declare_output,
    print_json,
    spec_from_args,
)


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import FinetuneSpec

    p = verbs.add_parser(
        "finetune",
        help="fine-tune a model or a ticket on a GLUE task or SQuAD; writes RUN_DIR/results.json",
        description=(
            "Fine-tune a pre-trained model, or a ticket of it (--mask: pruned weights start at zero and "
            "stay zero), on a GLUE task or SQuAD v1.1. Writes RUN_DIR/spec.json, log.jsonl, dev predictions "
            "(SQuAD: predictions.json) and, last, results.json. Recipe defaults follow the task (SQuAD: "
            "max length 384, doc stride 128, batch 16, lr 3e-5, 2 epochs). Multi-GPU and mixed "
            "precision: accelerate launch -m ticketlab finetune ..."
        ),
    )
    add_spec_arguments(p, FinetuneSpec)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument(
        "--cache-dir",
        help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)",
    )
    declare_output(p, Output("out", "run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_finetune_command)


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def run_finetune_command(args: argparse.Namespace) -> int:
    from ticketlab.experiments.finetune import FinetuneSpec, run_finetune_step

    results = run_finetune_step(
        spec_from_args(args, FinetuneSpec), args.out, cache_dir=args.cache_dir, quiet=args.quiet
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # in a multi-process launch only the first process reports
    if args.json:
        print_json(results)
        return 0
    if results.get("skipped"):
        print(f"{args.out} already holds this finished run; not training again")
    sparsity = results.get("sparsity") or 0.0
    print(
        f"{results['task']}: best {_format_metrics(results['best'])} at step {results['best_step']}; "
        f"final {_format_metrics(results['final'])}"
    )
    print(
        f"  sparsity {100 * sparsity:.2f}%, seed {results['seed']}, {results['training_steps']} steps, "
        f"{results['train_examples_per_second']:.1f} train examples/s, {results['wall_seconds']:.1f} s"
    )
    print(f"  wrote {args.out}/results.json")
    return 0

"""Verbs on the pre-training objective: ``pretrain-loss`` (MLM and KD loss of a ticket) and ``tamt``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_protocol_flags,
    add_redo_flag,
    add_spec_arguments,
    apply_redo,
    declare_output,
    format_table,
    is_mask_file,
    print_json,
    protocol_of,
    spec_from_args,
)


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.pretrain_loss import PretrainLossSpec

    p = verbs.add_parser(
        "pretrain-loss",
        help="MLM loss and distillation loss of a ticket (masked model) against the dense model",
        description=(
            "Measure a ticket's pre-training performance on held-out text: MLM loss with a fixed "
            "masking seed, and the distillation loss of the masked model's hidden states against the "
            "dense model's (MSE over layers by default)."
        ),
    )
    add_spec_arguments(p, PretrainLossSpec)
    declare_output(p, Output("save_head", "folder for the MLM head", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_pretrain_loss_cli)
    register_tamt(verbs)


def run_pretrain_loss_cli(args: argparse.Namespace) -> int:
    from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss

    spec = spec_from_args(args, PretrainLossSpec)
    results = run_pretrain_loss(spec, progress=not args.quiet)
    if args.json:
        print_json(results)
        return 0
    mlm = results["mlm_loss"]
    rows = [
        ["mlm_loss", f"{mlm:.4f}" if mlm is not None else f"n/a ({results.get('mlm_loss_reason')})"],
        [
            "mlm_loss (dense)",
            f"{results['mlm_loss_dense']:.4f}" if results["mlm_loss_dense"] is not None else "n/a",
        ],
        [f"kd_loss ({results['kd_loss_kind']})", f"{results['kd_loss']:.6f}"],
        ["sparsity", f"{100 * results['sparsity']:.2f}%"],
        ["text", f"{results['text']}: {results['num_sequences']} blocks, {results['num_tokens']:,} tokens"],
    ]
    if results["mlm_head"].get("built"):
        rows.append(["mlm head", f"built ({results['mlm_head'].get('steps')} steps, encoder frozen)"])
    print(format_table(rows, ["measure", "value"]))
    return 0


# What was measured, so the help does not promise more (docs/tamt.md has the tables and commands).
TAMT_MEASURED = """\
measured (MiniLM-L6, encoder+embeddings, per matrix; docs/tamt.md):
  - adamw is sign descent here: the score gradients (1e-7 to 1e-6) dwarf its epsilon 1e-8, so
    every score moves by about lr x sign(g); kept and pruned scores cross together and a large
    share of the kept weights swaps at once, blind to magnitude
    (a tiny BERT at the same lr and 20 steps: adamw 15.5% of the kept weights, bertadam 4.1%).
  - at the paper's lr 2e-5, 100 bertadam steps leave the OMP mask unchanged (the scores need
    thousands of steps to cross: the paper runs 11k-22k); whether TAMT's tickets then fine-tune
    better than OMP's is what benchmarks/bench_tamt_budgets.py measures (partial so far, no win
    shown yet). With adamw at 25x the paper's lr they fine-tuned like random tickets.
"""


def register_tamt(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.tamt import TamtSpec

    p = verbs.add_parser(
        "tamt",
        help="learn a mask on the pre-training objective with the weights frozen (TAMT)",
        description=(
            "Task-agnostic mask training: scores per weight, exact top-k mask at every step, "
            "straight-through gradients, dense model as online teacher. Resumes after a crash."
        ),
        epilog=TAMT_MEASURED,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every field of TamtSpec is a flag of its name, but scope and scheme (--protocol sets them).
    add_spec_arguments(p, TamtSpec, skip=("scope", "scheme"))
    add_protocol_flags(p, default="liu2022")  # TAMT's: encoder+embeddings, per matrix
    p.add_argument(
        "--out",
        required=True,
        help="NAME.safetensors (final mask; budgets beside it, the run's steps in NAME.tamt/) or a "
        "directory (the masks and the steps in it)",
    )
    add_redo_flag(p)
    declare_output(
        p,
        Output(
            "out",
            "ticketlab mask file",
            directory=None,
            ours=lambda path: path.is_dir() or is_mask_file(path) or _tamt_steps(path).is_dir(),
            inputs=("model", "text"),
        ),
    )
    add_output_flags(p)
    p.set_defaults(run=run_tamt_cli)


def _tamt_steps(out: Path) -> Path:
    """The steps of the TAMT run whose final mask is ``out`` (a damaged mask file is still ours)."""
    from ticketlab.experiments.tamt import TamtOutputs

    return TamtOutputs.for_out(out).store


def run_tamt_cli(args: argparse.Namespace) -> int:
    from ticketlab.experiments.tamt import TamtOutputs, TamtSpec, run_tamt
    from ticketlab.training.distributed import rank_and_world

    scope, scheme = protocol_of(args)
    # Budgets in step order, each once: --save-at 1000,500 is the run of --save-at 500,1000.
    save_at = tuple(sorted(set(args.save_at)))
    spec = spec_from_args(args, TamtSpec, scope=scope, scheme=scheme, save_at=save_at)
    if args.redo and rank_and_world()[0] == 0:
        # final (the training) or budget_<N> (a budget redone trains the run again to reach it)
        apply_redo(str(TamtOutputs.for_out(args.out).store), args.redo, print)
    results = run_tamt(spec, args.out, progress=not args.quiet)
    if args.json:
        print_json(results)
        return 0
    cost = results["search_cost"]
    print(
        f"wrote {results['mask']}: TAMT-{results['objective']}, {100 * results['sparsity']:.2f}% pruned, "
        f"{cost['steps']} steps, {cost['examples']} examples, {cost['wall_time_s']:.1f} s"
    )
    for step, path in results["budget_masks"].items():
        print(f"  after {step} steps: {path}")
    return 0

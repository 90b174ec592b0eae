"""Verbs on the pre-training objective: ``pretrain-loss`` (MLM and KD loss of a ticket)."""

from __future__ import annotations

import argparse

from ticketlab.cli.common import add_output_flags, format_table, print_json


def _add_text_flags(p: argparse.ArgumentParser, split: str) -> None:
    from ticketlab.data.text import DEFAULT_DATASET, DEFAULT_DATASET_CONFIG

    p.add_argument("--text", help="text file (WikiText-style or plain); default: the hub data set below")
    p.add_argument(
        "--dataset", default=DEFAULT_DATASET, help="hub text data set used when no --text is given"
    )
    p.add_argument("--dataset-config", default=DEFAULT_DATASET_CONFIG, help="its configuration")
    p.add_argument("--split", default=split, help=f"its split (default: {split})")
    p.add_argument("--max-sequences", type=int, help="use only the first N blocks of the text")
    p.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="block length in tokens, [CLS]/[SEP] included (paper: 512)",
    )


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.training.objectives import KD_LOSSES

    p = verbs.add_parser(
        "pretrain-loss",
        help="MLM loss and distillation loss of a ticket (masked model) against the dense model",
        description=(
            "Measure a ticket's pre-training performance on held-out text: MLM loss with a fixed "
            "masking seed, and the distillation loss of the masked model's hidden states against the "
            "dense model's (MSE over layers by default)."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local directory of the dense pre-trained model")
    p.add_argument("--mask", help="mask file of the ticket (default: none, the dense model itself)")
    _add_text_flags(p, split="validation")
    p.add_argument("--kd-loss", choices=KD_LOSSES, default="mse", help="distillation loss (default: mse)")
    p.add_argument(
        "--mlm-head",
        help="for a model without MLM head: a saved head (directory or file), or 'auto' to train one briefly",
    )
    p.add_argument("--head-steps", type=int, default=100, help="training steps of an --mlm-head auto head")
    p.add_argument("--head-text", help="text file to train an --mlm-head auto head on (default: the --text)")
    p.add_argument("--save-head", help="directory to save the --mlm-head auto head in, for reuse")
    p.add_argument(
        "--batch-size", type=int, default=16, help="blocks per forward pass (losses do not depend on it)"
    )
    p.add_argument(
        "--mlm-seed", type=int, default=0, help="seed of the MLM corruption (keep fixed across tickets)"
    )
    p.add_argument(
        "--allow-fingerprint-mismatch", action="store_true", help="apply the mask even if the weights differ"
    )
    add_output_flags(p)
    p.set_defaults(run=run_pretrain_loss_cli)


def run_pretrain_loss_cli(args: argparse.Namespace) -> int:
    from ticketlab.experiments.pretrain_loss import PretrainLossSpec, run_pretrain_loss

    spec = PretrainLossSpec(
        model=args.model,
        mask=args.mask,
        text=args.text,
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        split=args.split,
        max_sequences=args.max_sequences,
        max_length=args.max_length,
        batch_size=args.batch_size,
        kd_loss=args.kd_loss,
        mlm_head=args.mlm_head,
        head_steps=args.head_steps,
        head_text=args.head_text,
        save_head=args.save_head,
        mlm_seed=args.mlm_seed,
        allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
    )
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

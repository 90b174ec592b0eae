"""``ticketlab importance``: score the heads and FFNs of a fine-tuned model on a task's data."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_spec_arguments,
    declare_output,
    format_table,
    is_scores_file,
    print_json,
    spec_from_args,
)
from ticketlab.errors import TicketlabError


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.importance import ImportanceOptions

    p = verbs.add_parser(
        "importance",
        help="score the attention heads and FFNs of a fine-tuned model on a task (gate sensitivities)",
        description=(
            "Importance of each head and FFN layer: the expected absolute sensitivity of the task loss to a "
            "gate on it, with the model in eval mode. Variants: michel2019 (per example), liang2021 (super "
            "tickets: per token, summed), prasanna2020 (all tickets winning: per batch). --model is a "
            "fine-tuned model directory or a 'ticketlab finetune --save-model' run directory (its task, data "
            "directory and length are then the defaults). Writes the scores as safetensors (heads "
            "[layers, heads], ffn [layers]) with a JSON header; 'ticketlab structured-masks' and "
            "'ticketlab super-tickets' use them."
        ),
    )
    p.add_argument(
        "--model", required=True, help="fine-tuned model directory, hub id, or finetune run directory"
    )
    p.add_argument("--task", help="GLUE task or squad (default: the fine-tuning run's task)")
    p.add_argument(
        "--data-dir", help="local task data in the original layout (default: the run's, else the hub)"
    )
    add_spec_arguments(p, ImportanceOptions)  # how it scores: one flag per field
    p.add_argument("--max-length", type=int, help="tokens per example (default: the run's, else the task's)")
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="SCORES.safetensors", help="file to write the scores to")
    declare_output(
        p, Output("out", "ticketlab importance scores file", ours=is_scores_file, inputs=("model",))
    )
    add_output_flags(p)
    p.set_defaults(run=run_importance)


def _tokenizer(located: Any):
    """The tokenizer saved with the model, else the one of the run's pre-trained model."""
    from ticketlab.models import load_tokenizer

    try:
        return load_tokenizer(located.path)
    except TicketlabError:
        if not located.run_spec.get("model"):
            raise
        return load_tokenizer(located.run_spec["model"])


def run_importance(args: argparse.Namespace) -> int:
    from ticketlab.experiments.importance import (
        ImportanceOptions,
        load_task_model,
        locate_finetuned,
        score_task_importance,
    )
    from ticketlab.training.tasks import get_task

    options = spec_from_args(args, ImportanceOptions)
    options.validate()
    if args.out.endswith(os.sep):
        raise TicketlabError(f"--out {args.out!r} is a directory; give a file name (SCORES.safetensors)")
    located = locate_finetuned(args.model)
    task_name = args.task or located.run_spec.get("task")
    if not task_name:
        raise TicketlabError("--task is needed: the model is not a ticketlab finetune run directory")
    task = get_task(task_name)
    model = load_task_model(located.path, task)
    scores = score_task_importance(
        model,
        task.name,
        _tokenizer(located),
        options,
        max_length=args.max_length or located.run_spec.get("max_length"),
        data_dir=args.data_dir or located.run_spec.get("data_dir"),
        cache_dir=args.cache_dir,
        quiet=args.quiet or args.json,
    )
    scores.info["model"] = args.model
    scores.save(args.out)
    if args.json:
        print_json({"out": args.out, **scores.to_dict()})
        return 0
    print(
        f"{scores.variant} importance of {args.model} on {task.name} ({scores.info['split']}, "
        f"{scores.num_examples} examples, {scores.num_batches} batches; head scores "
        f"{'not normalised' if scores.normalization == 'none' else scores.normalization + '-normalised'} per layer)"
    )
    rows = []
    for layer in range(scores.heads.shape[0]):
        heads = scores.heads[layer]
        order = heads.argsort(descending=True, stable=True)
        rows.append(
            [
                layer,
                " ".join(f"{v:.3f}" for v in heads.tolist()),
                int(order[0]),
                f"{float(scores.ffn[layer].sum()):.4g}",
            ]
        )
    print(format_table(rows, ["layer", "head scores (head 0, 1, ...)", "top head", "FFN score"]))
    print(f"wrote {args.out}")
    return 0

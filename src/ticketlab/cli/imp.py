"""``ticketlab imp``: iterative magnitude pruning with rewinding on a task, resumable."""

from __future__ import annotations

import argparse
from typing import Any

from ticketlab.cli.common import add_output_flags, add_spec_arguments, format_table, print_json

# Fields of FinetuneSpec that IMP sets itself rather than taking as recipe overrides.
_NOT_RECIPE = (
    "model",
    "task",
    "data_dir",
    "mask",
    "seed",
    "predict_test",
    "allow_fingerprint_mismatch",
    "save_model",
)


def _levels(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated numbers, got {text!r}") from None


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import FinetuneSpec

    p = verbs.add_parser(
        "imp",
        help="iterative magnitude pruning with rewinding on a task (resumable); masks and results per level",
        description=(
            "BERT-Tickets' IMP: fine-tune, prune the trained weights by global magnitude to the next level, "
            "rewind the survivors to the pre-trained values, repeat. Each level's folder appears only when "
            "finished; rerunning the same command resumes. Recipe flags default to the fine-tuning defaults."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local directory of the pre-trained model")
    p.add_argument("--task", required=True, help="GLUE task name or squad")
    p.add_argument("--data-dir", help="local task data in the original layout (default: the hub)")
    p.add_argument(
        "--levels",
        type=_levels,
        default=[round(0.1 * i, 1) for i in range(1, 10)],
        help="total sparsity after each pruning step (default: 0.1,0.2,...,0.9)",
    )
    p.add_argument(
        "--head",
        choices=("keep", "reinit"),
        default="keep",
        help="task head at rewinding: keep the trained one (the paper) or re-initialise",
    )
    p.add_argument("--scope", choices=("encoder", "encoder+embeddings"), default="encoder")
    p.add_argument("--scheme", choices=("global", "per-matrix"), default="global")
    p.add_argument("--seed", type=int, default=0)
    add_spec_arguments(p, FinetuneSpec, skip=_NOT_RECIPE, overrides_only=True)
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    add_output_flags(p)
    p.set_defaults(run=run_imp_command)


def recipe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning recipe flags the user set (added with ``skip=_NOT_RECIPE, overrides_only=True``)."""
    from dataclasses import fields

    from ticketlab.experiments.finetune import FinetuneSpec

    return {
        f.name: getattr(args, f.name)
        for f in fields(FinetuneSpec)
        if f.name not in _NOT_RECIPE and getattr(args, f.name, None) is not None
    }


def run_imp_command(args: argparse.Namespace) -> int:
    from ticketlab.experiments.imp import ImpSpec, run_imp_on_task

    spec = ImpSpec(
        model=args.model,
        task=args.task,
        data_dir=args.data_dir,
        levels=args.levels,
        head=args.head,
        scope=args.scope,
        scheme=args.scheme,
        seed=args.seed,
        recipe=recipe_from_args(args),
    )
    echo = (lambda _: None) if args.quiet or args.json else print
    summary = run_imp_on_task(spec, args.out, cache_dir=args.cache_dir, quiet=args.quiet, echo=echo)
    if args.json:
        print_json(summary)
        return 0
    rows = []
    for level in summary["levels"]:
        metric = level.get("main_metric")
        best = level.get("best", {}).get(metric)
        rows.append(
            [
                level["level"],
                f"{100 * level['sparsity']:.1f}%",
                metric,
                "" if best is None else f"{best:.4f}",
                level.get("best_step"),
            ]
        )
    print(format_table(rows, ["level", "sparsity", "metric", "best", "best step"]))
    print(f"masks and results in {args.out}/level_*/ (mask.safetensors, results.json)")
    return 0

"""``ticketlab imp``: iterative magnitude pruning with rewinding on a task or on MLM, resumable."""

from __future__ import annotations

import argparse
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_protocol_flags,
    add_redo_flag,
    add_spec_arguments,
    apply_redo,
    declare_output,
    format_table,
    print_json,
    protocol_of,
    spec_from_args,
)


def _recipe_flags(spec_class: type, skip: tuple[str, ...] = ()) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(spec_class) if f.name not in skip]


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.imp import ImpSpec
    from ticketlab.experiments.imp_mlm import MlmRecipe

    p = verbs.add_parser(
        "imp",
        help="iterative magnitude pruning with rewinding on a task or MLM (resumable); masks and results per level",
        description=(
            "BERT-Tickets' IMP: fine-tune (or, with --task mlm, train on the masked-LM objective on --text), "
            "prune the trained weights by global magnitude to the next level, rewind the survivors to the "
            "pre-trained values, repeat. Each level's folder appears only when finished; rerunning the same "
            "command resumes. Recipe flags default to the fine-tuning defaults, or with --task mlm to the "
            "MLM ones (lr 5e-5, batch size 16, 1 epoch, max length 128)."
        ),
    )
    # ImpSpec's fields are flags of their names (scope and scheme: --protocol; recipe: the recipe flags).
    add_spec_arguments(p, ImpSpec, only=("model", "task", "data_dir", "levels", "head", "seed", "lr_horizon"))
    add_protocol_flags(p)
    add_spec_arguments(p, FinetuneSpec, only=RECIPE_FIELDS, overrides_only=True)
    mlm = p.add_argument_group("IMP on MLM (--task mlm)")
    add_spec_arguments(mlm, ImpSpec, only=("text", "eval_text"))
    add_spec_arguments(mlm, MlmRecipe, skip=RECIPE_FIELDS, overrides_only=True)
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    add_redo_flag(p)

    declare_output(p, Output("out", "run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_imp_command)


def _set_flags(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def recipe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning recipe flags the user set (added with ``only=RECIPE_FIELDS, overrides_only=True``)."""
    from ticketlab.experiments.finetune import RECIPE_FIELDS

    return _set_flags(args, list(RECIPE_FIELDS))


def run_imp_command(args: argparse.Namespace) -> int:
    from ticketlab.errors import TicketlabError
    from ticketlab.experiments.finetune import RECIPE_FIELDS
    from ticketlab.experiments.imp import MLM_TASK, ImpSpec
    from ticketlab.experiments.imp_dispatch import run_imp_on_task
    from ticketlab.experiments.imp_mlm import MlmRecipe

    finetune_flags = list(RECIPE_FIELDS)
    mlm_flags = _recipe_flags(MlmRecipe)
    wanted, other = (mlm_flags, finetune_flags) if args.task == MLM_TASK else (finetune_flags, mlm_flags)
    stray = sorted(set(_set_flags(args, other)) - set(wanted))
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        kind = "a task's fine-tuning" if args.task == MLM_TASK else "--task mlm"
        raise TicketlabError(f"{flag} is a flag of {kind}, not of --task {args.task}")
    recipe = _set_flags(args, wanted)
    scope, scheme = protocol_of(args)
    spec = spec_from_args(args, ImpSpec, scope=scope, scheme=scheme, recipe=recipe)
    echo = (lambda _: None) if args.quiet or args.json else print
    if args.redo:
        from ticketlab.experiments.store import RunDirectory

        spec.validate()
        RunDirectory.open(spec, args.out)  # refuses another run's directory before anything goes
        apply_redo(args.out, args.redo, echo)
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

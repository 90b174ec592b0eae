"""``ticketlab multitask``: multi-task training on GLUE tasks with a shared encoder, plain or with a
structured ticket per task (super tickets' ticket sharing), and the comparison of the two."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_spec_arguments,
    comma_separated,
    declare_output,
    format_table,
    print_json,
)
from ticketlab.errors import TicketlabError

HELP_ORDER = 61
_SET_BY_VERB = ("model", "tasks", "data_dir", "masks")


def _task_mask(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected TASK=MASK_FILE, got {text!r}")
    return task.strip(), path.strip()


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.multitask import MultitaskSpec

    p = verbs.add_parser(
        "multitask",
        help="multi-task training with a shared encoder: plain, or each task through its structured ticket",
        description=(
            "One shared encoder, one head per GLUE task; every epoch visits every batch of every task once "
            "in a seeded random order (tasks in proportion to their data). With --mask TASK=FILE, the "
            "task's structured ticket gates the encoder for its batches and its evaluation (ticket "
            "sharing); without masks it is plain multi-task training; --compare runs both (RUN_DIR/plain, "
            "RUN_DIR/tickets) and prints the difference. Writes RUN_DIR/results.json."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local directory of the pre-trained encoder")
    p.add_argument("--tasks", required=True, type=comma_separated(), help="GLUE tasks, comma-separated")
    p.add_argument("--data-dir", help="local GLUE data in the original layout (default: the hub)")
    p.add_argument(
        "--mask",
        action="append",
        type=_task_mask,
        default=[],
        metavar="TASK=MASK",
        help="a task's structured ticket (repeat for each task; a task without one uses the whole encoder)",
    )
    p.add_argument("--compare", action="store_true", help="also train without tickets and compare")
    add_spec_arguments(p, MultitaskSpec, skip=_SET_BY_VERB)
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (a finished run is reused)")
    declare_output(p, Output("out", "run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_multitask_command)


def run_multitask_command(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from ticketlab.experiments.multitask import MultitaskSpec, compare_multitask, run_multitask

    masks = dict(args.mask)
    if len(masks) != len(args.mask):
        raise TicketlabError("a task is given two masks")
    if args.compare and not masks:
        raise TicketlabError("--compare needs tickets to compare with: give --mask TASK=FILE")
    recipe: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in fields(MultitaskSpec) if f.name not in _SET_BY_VERB
    }
    echo = (lambda _: None) if args.quiet or args.json else print

    def run(with_masks: dict[str, str], out: Path) -> dict[str, Any]:
        spec = MultitaskSpec(
            model=args.model, tasks=args.tasks, data_dir=args.data_dir, masks=with_masks, **recipe
        )
        return run_multitask(spec, out, cache_dir=args.cache_dir, quiet=args.quiet, echo=echo)

    out = Path(args.out)
    if not args.compare:
        results = run(masks, out)
        if args.json:
            print_json(results)
            return 0
        rows = [
            [task, r["main_metric"], f"{r['best'][r['main_metric']]:.4f}", r["batches_per_epoch"]]
            for task, r in results["tasks"].items()
        ]
        print(format_table(rows, ["task", "metric", "best", "batches per epoch"]))
        print(f"average {results['best_average']:.4f} ({results['variant']}); results in {out}/results.json")
        return 0
    plain, tickets = run({}, out / "plain"), run(masks, out / "tickets")
    rows = compare_multitask(plain, tickets)
    if args.json:
        print_json({"comparison": rows, "plain": plain, "tickets": tickets})
        return 0

    def fmt(value: Any, signed: bool = False) -> str:
        return "n/a" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

    table = [
        [r["task"], r["metric"], fmt(r["plain"]), fmt(r["tickets"]), fmt(r["difference"], signed=True)]
        for r in rows
    ]
    print(format_table(table, ["task", "metric", "plain", "tickets", "tickets - plain"]))
    return 0

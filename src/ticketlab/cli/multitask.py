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
    spec_from_args,
    spec_overrides,
)
from ticketlab.errors import TicketlabError

HELP_ORDER = 61
_SET_BY_VERB = ("model", "tasks", "data_dir", "masks")


def _task_mask(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected TASK=MASK_FILE, got {text!r}")
    return task.strip(), path.strip()


def _task_level(text: str) -> tuple[str, float | None]:
    task, sep, level = text.partition("=")
    if not sep or not task.strip() or not level.strip():
        raise argparse.ArgumentTypeError(f"expected TASK=LEVEL (a winning level, or full), got {text!r}")
    if level.strip().lower() == "full":
        return task.strip(), None
    try:
        return task.strip(), float(level)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK=LEVEL (a number, or full), got {text!r}") from None


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
            "RUN_DIR/tickets) and prints the difference. Writes RUN_DIR/results.json. With "
            "--from-super-tickets RUN... the tickets come from each task's super-ticket sweep (the best "
            "winning level if it beats the full model, else the full model; --level TASK=P fixes one), "
            "written to RUN_DIR/tickets.json, and both runs are compared (RUN_DIR/comparison.md); with "
            "--super-tickets the sweeps of --tasks run first, into RUN_DIR/sweeps/<task> (resumable)."
        ),
    )
    p.add_argument(
        "--model", help="hub id or local directory of the pre-trained encoder (default: the sweeps')"
    )
    p.add_argument("--tasks", type=comma_separated(), help="GLUE tasks, comma-separated")
    p.add_argument(
        "--from-super-tickets",
        nargs="+",
        metavar="SWEEP_DIR",
        help="'ticketlab super-tickets' run directories, one per task: the tickets come from them",
    )
    p.add_argument(
        "--super-tickets",
        action="store_true",
        help="run each task's super-ticket sweep first (RUN_DIR/sweeps/<task>), then as --from-super-tickets",
    )
    p.add_argument(
        "--level",
        action="append",
        type=_task_level,
        default=[],
        metavar="TASK=LEVEL",
        help="use this winning level (or 'full': no mask) for a task instead of the best-mean rule",
    )
    p.add_argument(
        "--mask-seed", type=int, help="the sweep seed whose masks are used (default: --seed if swept)"
    )
    from ticketlab.experiments.multitask import SWEEP_DEFAULTS, SWEEP_FIELDS
    from ticketlab.experiments.super_tickets import SuperTicketSpec

    sweep = p.add_argument_group(
        "the super-ticket sweeps of --super-tickets (the fields of 'ticketlab super-tickets', prefixed)"
    )
    add_spec_arguments(
        sweep,
        SuperTicketSpec,
        only=SWEEP_FIELDS,
        overrides_only=True,
        prefix="super",
        defaults=SWEEP_DEFAULTS,
    )
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
    from ticketlab.experiments.multitask import MultitaskSpec, compare_multitask, run_multitask

    if args.from_super_tickets or args.super_tickets:
        return _from_super_tickets(args)
    if not args.model or not args.tasks:
        raise TicketlabError("give --model and --tasks (or --from-super-tickets SWEEP_DIR...)")
    masks = dict(args.mask)
    if len(masks) != len(args.mask):
        raise TicketlabError("a task is given two masks")
    if args.compare and not masks:
        raise TicketlabError("--compare needs tickets to compare with: give --mask TASK=FILE")
    echo = (lambda _: None) if args.quiet or args.json else print

    def run(with_masks: dict[str, str], out: Path) -> dict[str, Any]:
        spec = spec_from_args(args, MultitaskSpec, masks=with_masks)
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


def _from_super_tickets(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from ticketlab.experiments.multitask import (
        COMPARISON_TABLE,
        SWEEP_FIELDS,
        MultitaskSpec,
        run_multitask_from_super_tickets,
        run_super_ticket_sweeps,
    )
    from ticketlab.experiments.super_tickets import SuperTicketSpec

    if args.mask:
        raise TicketlabError("--mask and super-ticket sweeps exclude each other: the sweeps give the tickets")
    levels = dict(args.level)
    if len(levels) != len(args.level):
        raise TicketlabError("a task is given two levels")
    recipe: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in fields(MultitaskSpec) if f.name not in _SET_BY_VERB
    }
    echo = (lambda _: None) if args.quiet or args.json else print
    out = Path(args.out)
    if args.super_tickets:
        if args.from_super_tickets:
            raise TicketlabError(
                "give --super-tickets (run the sweeps) or --from-super-tickets (finished ones)"
            )
        if not args.model or not args.tasks:
            raise TicketlabError("--super-tickets needs --model and --tasks")
        sweeps = run_super_ticket_sweeps(
            args.model,
            args.tasks,
            out / "sweeps",
            recipe=recipe,
            settings=spec_overrides(args, SuperTicketSpec, only=SWEEP_FIELDS, prefix="super"),
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            quiet=args.quiet,
            echo=echo,
        )
    else:
        if args.model or args.tasks:
            raise TicketlabError(
                "with --from-super-tickets the model and tasks are the sweeps': drop --model/--tasks"
            )
        sweeps = list(args.from_super_tickets)
    comparison = run_multitask_from_super_tickets(
        sweeps,
        out,
        recipe=recipe,
        levels=levels,
        mask_seed=args.mask_seed,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        quiet=args.quiet,
        echo=echo,
    )
    if args.json:
        print_json(comparison)
        return 0
    print((out / COMPARISON_TABLE).read_text(), end="")
    print(f"tickets chosen: {out / 'tickets.json'}; comparison: {out / 'comparison.json'}")
    return 0

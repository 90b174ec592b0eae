"""``ticketlab super-tickets``: nested structured tickets, fine-tuned, and the phase transition."""

from __future__ import annotations

import argparse
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_spec_arguments,
    declare_output,
    format_table,
    print_json,
    spec_from_args,
)
from ticketlab.cli.imp import recipe_from_args
from ticketlab.errors import TicketlabError


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.super_tickets import SuperTicketSpec

    p = verbs.add_parser(
        "super-tickets",
        help="super tickets: nested head/FFN tickets (winning, random, losing) fine-tuned; the phase transition",
        description=(
            "Liang et al.'s super tickets, per seed: fine-tune the full model, score its heads and FFNs, "
            "prune at each level p the floor(p x heads) least (winning) or most (losing) important heads, "
            "at least one per layer, with round(p x ffn-ratio x layers) FFN layers, or the same counts at "
            "random; rewind to the pre-trained weights with a fresh task head and fine-tune each ticket "
            "with its mask held. Writes RUN_DIR/results.json (the phase transition and the super ticket: "
            "the best winning level) and RUN_DIR/phase_transition.png. Resumable: rerunning the same "
            "command skips finished steps. Recipe flags default to the fine-tuning defaults."
        ),
    )
    # SuperTicketSpec's fields are flags of their names (normalization: --normalize; recipe: the
    # recipe flags).
    add_spec_arguments(p, SuperTicketSpec, skip=("recipe",))
    add_spec_arguments(p, FinetuneSpec, only=RECIPE_FIELDS, overrides_only=True)
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    declare_output(p, Output("out", "run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_super_tickets_command)


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.4f}"


def print_summary(summary: dict[str, Any]) -> None:
    """The phase-transition table, the full model and the super ticket."""
    rows = []
    for point in summary["points"]:
        rows.append(
            [
                point["kind"],
                f"{point['level']:g}",
                point["heads_pruned"],
                point["ffn_pruned"],
                f"{100 * point['weights_remaining']:.1f}%",
                f"{_fmt(point['mean'])} ± {_fmt(point['std'])}",
                point["seeds"],
                "✓" if point["matching"] else "",
            ]
        )
    header = [
        "kind",
        "p",
        "heads pruned",
        "FFN layers pruned",
        "weights left",
        summary["metric"],
        "n",
        "matching",
    ]
    print(format_table(rows, header))
    full = summary["full"]
    print(f"full model: {summary['metric']} {_fmt(full['mean'])} ± {_fmt(full['std'])} (n={full['n']})")
    best = summary.get("super_ticket")
    if best:
        print(
            f"super ticket: winning p={best['level']:g} ({best['heads_pruned']} heads and {best['ffn_pruned']} "
            f"FFN layers pruned, {100 * best['weights_remaining']:.1f}% of encoder weights): "
            f"{summary['metric']} {_fmt(best['mean'])} ± {_fmt(best['std'])}"
        )
        print(f"  masks: {', '.join(best['masks'])}")
    if summary.get("plot"):
        print(f"wrote {summary['plot']}")


def run_super_tickets_command(args: argparse.Namespace) -> int:
    from ticketlab.experiments.super_tickets import SuperTicketSpec, run_super_tickets

    if args.importance_samples is not None and args.importance_samples < 1:
        raise TicketlabError(f"--importance-samples must be at least 1, got {args.importance_samples}")
    spec = spec_from_args(args, SuperTicketSpec, recipe=recipe_from_args(args))
    echo = (lambda _: None) if args.quiet or args.json else print
    summary = run_super_tickets(spec, args.out, cache_dir=args.cache_dir, quiet=args.quiet, echo=echo)
    if args.json:
        print_json(summary)
        return 0
    print_summary(summary)
    return 0

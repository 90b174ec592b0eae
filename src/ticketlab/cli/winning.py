"""``ticketlab all-winning`` (Prasanna et al.: iterative pruning with the 0.9 rule; good, random and
bad subnetworks retrained) and ``ticketlab all-winning-report`` (several runs: tasks, methods)."""

from __future__ import annotations

import argparse

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_protocol_flags,
    add_spec_arguments,
    declare_output,
    holds,
    print_json,
    protocol_of,
    spec_from_args,
    spec_overrides,
)
from ticketlab.errors import TicketlabError

HELP_ORDER = 60


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.winning_tickets import WinningSpec

    p = verbs.add_parser(
        "all-winning",
        help="all tickets winning: iterative pruning with the 0.9 rule; good/random/bad subnetworks retrained",
        description=(
            "Prasanna et al. 2020 on a GLUE task, per seed: fine-tune the full model; prune it step by step "
            "without retraining (importance: 10%% of the heads and one FFN layer per step, re-scored on dev; "
            "magnitude: 10%% of the remaining weights per step) until the dev metric falls below 0.9 x the "
            "full model's, keeping the previous mask; then retrain the good (that mask), random and bad "
            "subnetworks of the same size from the pre-trained weights. Resumable step by step; writes "
            "RUN_DIR/results.json and RUN_DIR/report/ (Markdown, PNG, JSON)."
        ),
    )
    # WinningSpec's fields are flags of their names (scope and scheme: --protocol; recipe: the
    # recipe flags; retrain: --no-retrain).
    add_spec_arguments(p, WinningSpec, skip=("scope", "scheme", "recipe"))
    add_protocol_flags(p)  # magnitude: scope and scheme (chen2020: the encoder, one global ranking)
    add_spec_arguments(p, FinetuneSpec, only=RECIPE_FIELDS, overrides_only=True)
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    declare_output(p, Output("out", "run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_all_winning_command)

    p = verbs.add_parser(
        "all-winning-report",
        help="one report over several all-winning runs (tasks, methods): table, plot, survival, stability",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished all-winning run directories")
    p.add_argument("--out", required=True, metavar="DIR", help="report directory")
    declare_output(
        p, Output("out", "report folder", directory=True, ours=holds("report.json"), inputs=("runs",))
    )
    add_output_flags(p)
    p.set_defaults(run=run_all_winning_report)


def run_all_winning_command(args: argparse.Namespace) -> int:

    from ticketlab.analysis.winning import report_run, table_markdown
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.winning_tickets import WinningSpec, run_all_winning

    recipe = spec_overrides(args, FinetuneSpec, only=RECIPE_FIELDS)
    scope, scheme = protocol_of(args)
    spec = spec_from_args(args, WinningSpec, recipe=recipe, scope=scope, scheme=scheme)
    echo = (lambda _: None) if args.quiet or args.json else print
    results = run_all_winning(spec, args.out, cache_dir=args.cache_dir, quiet=args.quiet, echo=echo)
    report = report_run(args.out)
    if args.json:
        print_json(
            {**results, "table": report["table"], "stability": report["stability"], "files": report["files"]}
        )
        return 0
    print(table_markdown(report["table"]))
    print(f"report: {report['files']['markdown']}")
    return 0


def run_all_winning_report(args: argparse.Namespace) -> int:
    from ticketlab.analysis.winning import load_run, summarize_run, table_markdown, write_combined_report

    if len(set(args.runs)) != len(args.runs):
        raise TicketlabError("a run directory is named twice")
    runs = []
    for run_dir in args.runs:
        results, tickets = load_run(run_dir)
        runs.append((summarize_run(results, tickets), tickets))
    data = write_combined_report(runs, args.out)
    if args.json:
        print_json(data)
        return 0
    for run in data["runs"]:
        print(f"{run['label']}:\n{table_markdown(run['table'])}\n")
    across = data.get("across_runs")
    if across:
        print(
            f"over every structured ticket: {across['heads']['kept_by_all']} heads and "
            f"{across['ffn']['kept_by_all']} FFN layers kept by all {across['heads']['raters']}"
        )
    print(f"report: {data['files']['markdown']}")
    return 0

"""``ticketlab all-winning`` (Prasanna et al.: iterative pruning with the 0.9 rule; good, random and
bad subnetworks retrained) and ``ticketlab all-winning-report`` (several runs: tasks, methods)."""

from __future__ import annotations

import argparse

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_protocol_flags,
    add_spec_arguments,
    comma_separated,
    declare_output,
    finite,
    holds,
    print_json,
    protocol_of,
    seeds,
    spec_overrides,
)
from ticketlab.errors import TicketlabError

HELP_ORDER = 60


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.winning_tickets import METHODS, SUBNETWORKS
    from ticketlab.pruning.importance import IMPORTANCE_VARIANTS, NORMALIZATIONS

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
    p.add_argument("--model", required=True, help="hub id or local directory of the pre-trained model")
    p.add_argument("--task", required=True, help="GLUE task name")
    p.add_argument("--data-dir", help="local GLUE data in the original layout (default: the hub)")
    p.add_argument(
        "--seeds",
        type=seeds,
        default=[0],
        help="comma-separated seeds (default: 0)",
    )
    p.add_argument("--method", choices=METHODS, default="importance", help="pruning (default: importance)")
    p.add_argument(
        "--importance",
        choices=sorted(IMPORTANCE_VARIANTS),
        default="prasanna2020",
        help="importance variant (default: prasanna2020, |dL/dgate| per batch on dev)",
    )
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="l2", help="head scores per layer")
    p.add_argument(
        "--head-fraction",
        type=finite,
        default=0.1,
        help="heads pruned per step: max(1, floor(fraction x all heads)) (default: 0.1, 14 of 144)",
    )
    p.add_argument("--heads-per-step", type=int, help="heads pruned per step (instead of --head-fraction)")
    p.add_argument(
        "--ffn-per-step", type=int, default=1, help="whole FFN layers pruned per step (default: 1)"
    )
    p.add_argument(
        "--min-heads-per-layer",
        type=int,
        default=0,
        help="heads every layer keeps (default: 0, a layer may lose all as in the paper)",
    )
    p.add_argument(
        "--magnitude-rate",
        type=finite,
        default=0.1,
        help="magnitude: fraction of the remaining weights pruned per step (default: 0.1)",
    )
    add_protocol_flags(p)  # magnitude: scope and scheme (chen2020: the encoder, one global ranking)
    p.add_argument(
        "--threshold",
        type=finite,
        default=0.9,
        help="stop at the first step below this fraction of the full model's dev metric (default: 0.9)",
    )
    p.add_argument("--max-steps", type=int, help="at most this many pruning steps")
    p.add_argument(
        "--subnetworks",
        type=comma_separated(),
        default=list(SUBNETWORKS),
        help="subnetworks to retrain (default: good,random,bad)",
    )
    p.add_argument("--no-retrain", action="store_true", help="stop after pruning and the masked evaluations")
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
    from dataclasses import fields

    from ticketlab.analysis.winning import report_run, table_markdown
    from ticketlab.experiments.finetune import RECIPE_FIELDS, FinetuneSpec
    from ticketlab.experiments.winning_tickets import WinningSpec, run_all_winning

    # Every WinningSpec field but these four has a flag of its own name.
    set_here = ("retrain", "recipe", "scope", "scheme")
    given = {f.name: getattr(args, f.name) for f in fields(WinningSpec) if f.name not in set_here}
    recipe = spec_overrides(args, FinetuneSpec, only=RECIPE_FIELDS)
    scope, scheme = protocol_of(args)
    spec = WinningSpec(**given, retrain=not args.no_retrain, recipe=recipe, scope=scope, scheme=scheme)
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

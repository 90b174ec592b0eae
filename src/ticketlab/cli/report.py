"""``ticketlab grid`` and ``ticketlab report``: run a ticket grid; turn run directories into tables and plots."""

from __future__ import annotations

import argparse
import sys

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_redo_flag,
    apply_redo,
    declare_output,
    finite,
    format_table,
    holds,
    print_json,
)
from ticketlab.errors import TicketlabError


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "grid",
        help="fine-tune tickets of several methods x sparsities x tasks x seeds from one spec (resumable)",
        description=(
            "Run the ticket grid described by a YAML or JSON spec (fields: see docs/experiments.md): tickets "
            "by OMP, random, IMP, TAMT and the controls, fine-tuned with every seed beside the full model, and "
            "optionally each ticket's pre-training losses. Finished cells are skipped on rerun; the aggregate "
            "goes to OUT/results.json and the report to OUT/report."
        ),
    )
    p.add_argument("spec", help="grid spec file (.yaml, .yml or .json)")
    p.add_argument("--out", required=True, help="grid run directory (resumed if it exists)")
    add_redo_flag(p)
    p.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default="serial",
        help="serial: one process, step after step; local: --workers processes on this machine sharing "
        "the run directory (one GPU each, round robin, when there are GPUs); ray: the steps as Ray tasks "
        "with their dependencies (pip install 'ticketlab[ray]'), on a local Ray or on the cluster at "
        "--address; the same results either way",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="local executor: workers, this process included (default: 2); ray executor without --address: steps at "
        "a time on the Ray it starts (default: as many CPUs as the machine has cores)",
    )
    p.add_argument(
        "--address",
        help="ray executor: the running cluster to use (auto, or HOST:PORT of its head); its nodes must "
        "share the file system of --out (default: start a Ray on this machine)",
    )
    p.add_argument(
        "--cpus-per-step",
        type=finite,
        help="ray executor: CPUs each step asks for, also its torch threads (default: 1)",
    )
    p.add_argument(
        "--gpus-per-step",
        type=finite,
        help="ray executor: GPUs each step asks for; a fraction shares a card (0.25: four steps on one "
        "GPU; default: 0)",
    )
    p.add_argument(
        "--store",
        metavar="DIR",
        help="keep the grid's steps in this store, named by the hash of what determines them, and "
        "share them with every grid that uses it (default: OUT/steps; fixed when the grid is made)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="run nothing: list every step of the grid with its state (done, running, ready, waiting)",
    )
    p.add_argument(
        "--cache-dir", help="tokenisation cache (default: $TICKETLAB_CACHE, else ~/.cache/ticketlab)"
    )
    declare_output(p, Output("out", "grid run directory", directory=True), force=False)
    add_output_flags(p)
    p.set_defaults(run=run_grid_command)

    p = verbs.add_parser(
        "report",
        help="tables (Markdown, CSV) and plots (PNG) from grid, IMP and fine-tuning run directories",
        description=(
            "Tables and plots of finished runs: score per method x sparsity (matching tickets marked), "
            "transfer, the search cost each ticket recorded, and, for grids with a pretrain_loss section, "
            "downstream score against pre-training loss with Pearson and Spearman correlations."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--out", default="report", help="folder for the tables and plots (default: report)")
    declare_output(
        p, Output("out", "report folder", directory=True, ours=holds("report.json"), inputs=("runs",))
    )
    add_output_flags(p)
    p.set_defaults(run=run_report_command)


def _print_status(states: list[dict], as_json: bool) -> int:
    from collections import Counter

    if as_json:
        print_json(states)
        return 0
    counts = Counter(s["state"] for s in states)
    rows = [[s["state"], s["kind"], s["step"], ", ".join(s.get("waiting_for", []))] for s in states]
    print(format_table(rows, ["state", "kind", "step", "waiting for"]))
    print(", ".join(f"{counts[k]} {k}" for k in ("done", "running", "ready", "waiting") if counts[k]))
    return 0


def run_grid_command(args: argparse.Namespace) -> int:
    from ticketlab.experiments.grid import GridRunner, GridSpec
    from ticketlab.reports.report import write_report

    spec = GridSpec.from_file(args.spec)
    echo = (lambda _: None) if args.quiet or args.json else print
    runner = GridRunner(
        spec, args.out, cache_dir=args.cache_dir, quiet=args.quiet, echo=echo, store=args.store
    )
    if args.status:
        return _print_status(runner.step_states(), args.json)
    apply_redo(args.out, args.redo, echo)
    ray_only = [f for f in ("address", "cpus_per_step", "gpus_per_step") if getattr(args, f) is not None]
    if ray_only and args.executor != "ray":
        flags = ", ".join("--" + f.replace("_", "-") for f in ray_only)
        raise TicketlabError(f"{flags}: only for --executor ray (the executor is {args.executor})")
    # The live view of the parallel executors; under --json stdout holds the JSON alone.
    view = {"quiet": args.quiet, "echo": echo, "stream": sys.stderr if args.json else sys.stdout}
    if args.executor == "local":
        from ticketlab.experiments.grid.executors import run_grid_locally

        summary = run_grid_locally(spec, args.out, args.workers or 2, cache_dir=args.cache_dir, **view)
    elif args.executor == "ray":
        from ticketlab.experiments.grid.ray_executor import RayOptions, run_grid_on_ray

        options = RayOptions(
            address=args.address,
            workers=args.workers,
            cpus_per_step=1.0 if args.cpus_per_step is None else args.cpus_per_step,
            gpus_per_step=args.gpus_per_step or 0.0,
        )
        summary = run_grid_on_ray(spec, args.out, options, cache_dir=args.cache_dir, **view)
    else:
        summary = runner.run_all()
    report = write_report([runner.root], runner.root / "report")
    if args.json:
        print_json(summary | {"report": report["files"]})
        return 0
    print((runner.root / "report" / "results.md").read_text())
    print(f"report written to {runner.root / 'report'}")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from ticketlab.reports.report import write_report

    summary = write_report(args.runs, args.out)
    if args.json:
        print_json(summary)
        return 0
    from pathlib import Path

    print((Path(args.out) / "results.md").read_text())
    for path in summary["files"]:
        print(f"wrote {path}")
    return 0

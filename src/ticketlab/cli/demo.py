"""``ticketlab demo``: the story offline, on the CPU, in minutes.

This first version builds a tiny BERT, finds tickets by magnitude and random pruning at several
sparsities, inspects and compares them, and fine-tunes masked copies on a generated task to show
that the mask holds. (The full lottery story, with IMP and a plot, grows here with the experiments.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ticketlab.cli.common import Output, declare_output, seed

HELP_ORDER = 90  # last in --help


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("demo", help="run the whole story offline on a tiny model, in minutes, on the CPU")
    p.add_argument("--out", default="ticketlab-demo", help="folder for the demo's model, masks and outputs")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--quiet", action="store_true")
    declare_output(p, Output("out", "demo folder", directory=True), force=False)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ticketlab.reports.demo import run

    run(Path(args.out), seed=args.seed, echo=print)
    return 0

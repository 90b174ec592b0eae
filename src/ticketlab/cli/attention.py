"""``ticketlab attention-maps`` and ``ticketlab attention-patterns``: every head's attention maps,
the attention-pattern CNN (train, classify), generated and hand-labelled maps, and the class shares
of the heads that structured tickets keep and prune."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ticketlab.cli.common import (
    add_output_flags,
    add_spec_arguments,
    format_table,
    print_json,
    seed,
    spec_from_args,
)
from ticketlab.errors import TicketlabError

HELP_ORDER = 70


def _ticket(text: str) -> tuple[str, list[str]]:
    name, sep, paths = text.partition("=")
    files = [p.strip() for p in paths.split(",") if p.strip()]
    if not sep or not name.strip() or not files:
        raise argparse.ArgumentTypeError(f"expected NAME=MASK[,MASK...], got {text!r}")
    return name.strip(), files


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "attention-maps",
        help="every head's attention maps on a fixed, seeded sample of inputs",
        description=(
            "Run the model (eager attention) on a seeded sample of a GLUE task's examples or of a text "
            "file's lines, optionally through a structured mask (pruned heads gated off), and write each "
            "input's [layers, heads, n, n] attention probabilities, cut to its length n (special tokens "
            "included): DIR/maps.safetensors, DIR/index.json, DIR/index.csv (see docs/attention-patterns.md)."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local directory of the model")
    p.add_argument("--mask", help="a structured (head/FFN) mask to apply through the gates")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="GLUE task whose examples are sampled")
    source.add_argument("--text", help="a text file: one input per non-blank line")
    p.add_argument("--data-dir", help="local GLUE data in the original layout (default: the hub)")
    p.add_argument("--split", default="dev", help="split of the task to sample (default: dev)")
    p.add_argument("--num-examples", type=int, default=20, help="inputs to sample (default: 20)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the sample (default: 0)")
    p.add_argument("--max-length", type=int, default=128, help="longest input in tokens (default: 128)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_output_flags(p)
    p.set_defaults(run=run_maps)

    p = verbs.add_parser(
        "attention-patterns",
        help="classify attention maps into Kovaleva et al.'s five patterns; shares among kept/pruned heads",
        description=(
            "The attention-pattern CNN of all tickets winning (after Kovaleva et al. 2019): classes vertical, "
            "diagonal, vertical+diagonal, block, heterogeneous. See docs/attention-patterns.md."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    from ticketlab.training.attention_classifier import ClassifierSettings

    a = actions.add_parser("train", help="train the CNN on labelled maps (a stratified validation split)")
    a.add_argument("--maps", required=True, help="maps folder: ticketlab's layout or a folder of .npy maps")
    a.add_argument("--labels", required=True, help="labels file: 'label = name1, name2, ...' lines")
    a.add_argument("--out", required=True, metavar="CLASSIFIER", help="output folder of the classifier")
    add_spec_arguments(a, ClassifierSettings)
    add_output_flags(a)
    a.set_defaults(run=run_train)

    a = actions.add_parser("classify", help="classify every map; per head the majority class over inputs")
    a.add_argument("--classifier", required=True, help="folder written by 'attention-patterns train'")
    a.add_argument("--maps", required=True, help="maps folder (ticketlab's layout or .npy maps)")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_output_flags(a)
    a.set_defaults(run=run_classify)

    a = actions.add_parser(
        "analyse", help="class shares of the heads structured tickets keep and prune; changes between models"
    )
    a.add_argument(
        "--classified", required=True, help="a 'classify' output folder (the model the tickets prune)"
    )
    a.add_argument(
        "--ticket",
        action="append",
        type=_ticket,
        default=[],
        required=True,
        metavar="NAME=MASK[,MASK...]",
        help="a ticket's structured masks, one per seed (repeat for each ticket)",
    )
    a.add_argument("--before", help="a 'classify' output folder of another model (e.g. the pre-trained one)")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_output_flags(a)
    a.set_defaults(run=run_analyse)

    a = actions.add_parser("generate", help="write generated maps of every class (.npy) and their labels.txt")
    a.add_argument("--per-class", type=int, default=100, help="maps per class (default: 100)")
    a.add_argument("--min-length", type=int, default=10, help="default: 10")
    a.add_argument("--max-length", type=int, default=40, help="default: 40")
    a.add_argument(
        "--noise", type=float, default=0.6, help="standard deviation of the logit noise (default: 0.6)"
    )
    a.add_argument("--seed", type=seed, default=0, help="default: 0")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_output_flags(a)
    a.set_defaults(run=run_generate)

    a = actions.add_parser(
        "label", help="a sheet of numbered thumbnails to label by eye, and a labels file to fill in"
    )
    a.add_argument("--maps", required=True, help="maps folder (ticketlab's layout or .npy maps)")
    a.add_argument("--sheet", help="PNG of thumbnails to write")
    a.add_argument(
        "--limit", type=int, default=64, help="maps on the sheet, sampled with --seed (default: 64)"
    )
    a.add_argument("--seed", type=seed, default=0, help="default: 0")
    a.add_argument("--classifier", help="pre-fill the labels file with this classifier's guesses")
    a.add_argument("--assignments", help="CSV of name,label rows (your labels) to turn into the labels file")
    a.add_argument("--out", required=True, metavar="LABELS", help="labels file to write")
    add_output_flags(a)
    a.set_defaults(run=run_label)


def _echo(args: argparse.Namespace):
    return (lambda _: None) if args.quiet or args.json else print


def run_maps(args: argparse.Namespace) -> int:
    from ticketlab.experiments.attention_maps import write_attention_maps

    maps = write_attention_maps(
        args.model,
        args.out,
        task=args.task,
        text=args.text,
        data_dir=args.data_dir,
        split=args.split,
        num_examples=args.num_examples,
        seed=args.seed,
        mask=args.mask,
        max_length=args.max_length,
    )
    summary = {
        "out": args.out,
        "examples": len(maps.maps),
        "layers": maps.num_layers,
        "heads": maps.num_heads,
        "lengths": [int(m.shape[-1]) for m in maps.maps],
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {len(maps.maps)} x {maps.num_layers} x {maps.num_heads} attention maps "
            f"(lengths {min(summary['lengths'])}-{max(summary['lengths'])}) to {args.out}"
        )
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ticketlab.data.attention_maps import labelled_maps, load_map_collection, read_labels
    from ticketlab.training.attention_classifier import ClassifierSettings, train_pattern_classifier

    collection, labels = labelled_maps(load_map_collection(args.maps), read_labels(args.labels), args.labels)
    settings = spec_from_args(args, ClassifierSettings)
    classifier = train_pattern_classifier(collection, labels, settings, quiet=args.quiet)
    classifier.info.update(maps=str(args.maps), labels=str(args.labels))
    classifier.save(args.out)
    if args.json:
        print_json(
            {"out": args.out, "classes": classifier.classes, "size": classifier.size, **classifier.info}
        )
        return 0
    report = classifier.info["validation"] or classifier.info["train"]
    which = "validation" if classifier.info["validation"] else "training (no validation split)"
    print(
        f"{which} maps: {report['n']}, accuracy {report['accuracy']:.3f} (best epoch {classifier.info['best_epoch']:g})"
    )
    print(report["report_text"])
    print(
        format_table(
            [[c, *row] for c, row in zip(report["confusion_labels"], report["confusion_matrix"])],
            ["true \\ predicted", *report["confusion_labels"]],
        )
    )
    print(f"wrote {args.out}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from ticketlab.data.attention_maps import load_map_collection
    from ticketlab.reports.attention_patterns import write_classification
    from ticketlab.training.attention_classifier import PatternClassifier

    classifier = PatternClassifier.load(args.classifier)
    summary = write_classification(
        classifier,
        load_map_collection(args.maps),
        args.out,
        info={"classifier": str(args.classifier), "maps": str(args.maps)},
    )
    if args.json:
        print_json(summary)
        return 0
    key = "head_shares" if "head_shares" in summary else "map_shares"
    what = f"{len(summary['heads'])} heads" if "heads" in summary else f"{summary['num_maps']} maps"
    rows = [[c, f"{100 * v:.1f}%"] for c, v in summary[key].items()]
    print(f"{what}:")
    print(format_table(rows, ["class", "share"]))
    print(f"wrote {args.out}")
    return 0


def run_analyse(args: argparse.Namespace) -> int:
    from ticketlab.reports.attention_patterns import write_pattern_analysis

    tickets: dict[str, list[str]] = {}
    for name, files in args.ticket:
        tickets.setdefault(name, []).extend(files)
    summary = write_pattern_analysis(args.classified, tickets, args.out, before=args.before)
    if args.json:
        print_json(summary)
        return 0
    print((Path(args.out) / "shares.md").read_text(), end="")
    if args.before:
        print((Path(args.out) / "changes.md").read_text(), end="")
    print(f"wrote {args.out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from ticketlab.data.attention_maps import format_labels
    from ticketlab.data.synthetic_attention import generate_maps

    collection, labels = generate_maps(
        args.per_class, lengths=(args.min_length, args.max_length), seed=args.seed, noise=args.noise
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in collection:
        np.save(out / f"{name}.npy", array)
    (out / "labels.txt").write_text(format_labels(dict(zip(collection.names, labels))))
    if args.json:
        print_json({"out": str(out), "maps": len(collection), "labels": str(out / "labels.txt")})
    else:
        print(f"wrote {len(collection)} maps and {out / 'labels.txt'}")
    return 0


def _read_assignments(path: str) -> dict[str, str]:
    from ticketlab.data.attention_maps import PATTERN_CLASSES, canonical_label

    assignments = {}
    try:
        with open(path, newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip() or row[0].strip().startswith("#"):
                    continue
                if len(row) != 2:
                    raise TicketlabError(
                        f"{path}, line {number}: expected 'name,label', got {','.join(row)!r}"
                    )
                name, label = row[0].strip(), canonical_label(row[1])
                if name == "name" and label == "label":
                    continue  # a header
                if label not in PATTERN_CLASSES:
                    raise TicketlabError(f"{path}, line {number}: unknown class {row[1].strip()!r}")
                assignments[name] = label
    except FileNotFoundError:
        raise TicketlabError(f"assignments file {path} does not exist") from None
    return assignments


def run_label(args: argparse.Namespace) -> int:
    import numpy as np

    from ticketlab.analysis.attention_plots import plot_label_sheet
    from ticketlab.data.attention_maps import format_labels, load_map_collection

    collection = load_map_collection(args.maps)
    if args.assignments:
        assignments = _read_assignments(args.assignments)
        unknown = [n for n in assignments if n not in set(collection.names)]
        if unknown:
            raise TicketlabError(f"{args.assignments}: {unknown[0]!r} is not a map in {args.maps}")
        text = format_labels(assignments)
        chosen = collection.select([n for n in collection.names if n in assignments])
    else:
        if args.limit < 1:
            raise TicketlabError(f"--limit must be at least 1, got {args.limit}")
        count = min(args.limit, len(collection))
        picked = sorted(
            np.random.default_rng(args.seed).choice(len(collection), size=count, replace=False).tolist()
        )
        chosen = collection.select([collection.names[i] for i in picked])
        if args.classifier:
            from ticketlab.training.attention_classifier import PatternClassifier

            guesses = PatternClassifier.load(args.classifier).predict(chosen.maps)
            text = "# guesses of the classifier: move each name to its right line\n" + format_labels(
                dict(zip(chosen.names, guesses))
            )
        else:
            text = (
                "# move each name from 'unlabelled' to its class's line (maps left there are not used)\n"
                + format_labels({})
                + f"# unlabelled = {', '.join(chosen.names)}\n"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    sheet = str(plot_label_sheet(chosen.names, chosen.maps, args.sheet)) if args.sheet else None
    if args.json:
        print_json({"labels": args.out, "sheet": sheet, "maps": len(chosen)})
    else:
        print(f"wrote {args.out}" + (f" and {sheet} ({len(chosen)} maps)" if sheet else ""))
    return 0

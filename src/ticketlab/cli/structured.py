"""Verbs for structured tickets: shrink, structured-masks (from saved scores), stability."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    declare_output,
    finite,
    format_table,
    holds,
    is_mask_file,
    is_png,
    print_json,
    seed,
)
from ticketlab.errors import TicketlabError


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "shrink",
        help="cut a structured mask's pruned heads and FFN neurons out of a model's weights",
        description=(
            "Physically remove the heads and FFN neurons a structured mask prunes, and save the smaller "
            "model (config.json, model.safetensors, ticketlab_shrunk.json). Reload it with "
            "ticketlab.models.shrink.load_shrunk; it computes what the gated full model computes."
        ),
    )
    p.add_argument(
        "--model", required=True, help="hub id or local model directory (a task model keeps its head)"
    )
    p.add_argument("--mask", required=True, help="structured mask file (.safetensors)")
    p.add_argument("--out", required=True, help="directory to write the shrunk model to")
    declare_output(
        p,
        Output(
            "out",
            "shrunk model folder",
            directory=True,
            ours=holds("ticketlab_shrunk.json"),
            inputs=("model", "mask"),
        ),
    )
    add_output_flags(p)
    p.set_defaults(run=run_shrink)

    p = verbs.add_parser(
        "structured-masks",
        help="nested structured masks (winning, losing, random) from saved importance scores",
        description=(
            "Super-ticket levels: at each head fraction p, prune floor(p x heads) heads (ranked globally, "
            "one kept per layer) and round(p x ratio x layers) whole FFN layers; winning prunes the least "
            "important, losing the most, random draws the same counts without replacement."
        ),
    )
    p.add_argument(
        "--scores", required=True, help="importance scores file (.safetensors, from compute_importance)"
    )
    p.add_argument(
        "--kinds",
        default="winning,losing,random",
        help="comma-separated: winning, losing, random (default: all)",
    )
    p.add_argument(
        "--levels",
        default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8",
        help="comma-separated fractions of heads to prune",
    )
    p.add_argument(
        "--ffn-ratio",
        type=finite,
        default=10 / 12,
        help="FFN layers pruned per level = round(p x ratio x layers); 10/12 gives the paper's round(10p) of 12",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the random tickets")
    p.add_argument("--out", required=True, help="directory for the mask files (<kind>-<level>.safetensors)")
    declare_output(
        p,
        Output(
            "out",
            "folder of mask files",
            directory=True,
            ours=lambda path: all(is_mask_file(f) for f in path.glob("*.safetensors")),
            inputs=("scores",),
        ),
    )
    add_output_flags(p)
    p.set_defaults(run=run_structured_masks)

    p = verbs.add_parser(
        "stability",
        help="survival maps and agreement (Cochran's Q, Fleiss' kappa, Krippendorff's alpha) of structured masks",
    )
    p.add_argument("masks", nargs="+", help="structured mask files, one per seed (or task)")
    p.add_argument("--plot", help="write the survival heat-map to this PNG file")
    declare_output(p, Output("plot", "PNG image", ours=is_png, inputs=("masks",)))
    add_output_flags(p)
    p.set_defaults(run=run_stability)


def _load_structured(path: str):
    from ticketlab.masks import StructuredMask, load_mask

    mask = load_mask(path)
    if not isinstance(mask, StructuredMask):
        raise TicketlabError(f"{path} is an unstructured mask; this verb needs a structured (head/FFN) mask")
    return mask


def _load_any_model(name_or_path: str):
    """The model as saved: its task class when config.architectures names one, else the bare encoder."""
    import transformers

    from ticketlab.models import load_encoder

    model_class = None
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
        for name in getattr(config, "architectures", None) or []:
            candidate = getattr(transformers, name, None)
            if isinstance(candidate, type) and issubclass(candidate, transformers.PreTrainedModel):
                model_class = candidate
                break
    except (OSError, ValueError):
        pass  # load_encoder reports the problem in one line
    return load_encoder(name_or_path, model_class)


def run_shrink(args: argparse.Namespace) -> int:
    from ticketlab.models import load_tokenizer
    from ticketlab.models.shrink import encoder_flops, save_shrunk, shrink

    mask = _load_structured(args.mask)
    model = _load_any_model(args.model)
    small = shrink(model, mask)
    save_shrunk(small, args.out, extra={"source_model": args.model, "mask": os.path.abspath(args.mask)})
    try:
        load_tokenizer(args.model).save_pretrained(args.out)
        tokenizer = True
    except (TicketlabError, OSError, ValueError):
        tokenizer = False
    plan = small.ticketlab_shrink_plan
    full_params = sum(p.numel() for p in model.parameters())
    small_params = sum(p.numel() for p in small.parameters())
    layers = len(plan.heads_kept)
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.dim
    flops_full = encoder_flops(
        [plan.original_num_heads] * layers, [plan.original_ffn_size] * layers, hidden, plan.head_dim, 128
    )
    flops_small = encoder_flops(plan.head_counts, plan.ffn_sizes, hidden, plan.head_dim, 128)
    summary: dict[str, Any] = {
        "out": args.out,
        "model_class": type(small).__name__,
        "parameters_full": full_params,
        "parameters_shrunk": small_params,
        "encoder_flop_ratio_at_128": flops_full / flops_small if flops_small else None,
        "heads_per_layer": plan.head_counts,
        "ffn_size_per_layer": plan.ffn_sizes,
        "tokenizer_saved": tokenizer,
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"wrote {args.out}: {type(small).__name__}, {small_params:,} of {full_params:,} parameters "
        f"({100 * small_params / full_params:.1f}%), encoder FLOPs / {summary['encoder_flop_ratio_at_128'] or float('inf'):.2f} at length 128"
    )
    rows = [[i, h, f] for i, (h, f) in enumerate(zip(plan.head_counts, plan.ffn_sizes))]
    print(format_table(rows, ["layer", "heads", "ffn neurons"]))
    return 0


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TicketlabError(f"{what} must be comma-separated numbers, got {text!r}") from None


def run_structured_masks(args: argparse.Namespace) -> int:
    from ticketlab.masks import save_mask
    from ticketlab.pruning.importance import ImportanceScores
    from ticketlab.pruning.structured import PRUNING_ORDERS, nested_structured_masks

    scores = ImportanceScores.load(args.scores)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in PRUNING_ORDERS]
    if unknown:
        raise TicketlabError(f"unknown kind {unknown[0]!r} (choose from {', '.join(PRUNING_ORDERS)})")
    levels = _floats(args.levels, "--levels")
    out = Path(args.out)
    written = []
    for kind in kinds:
        masks = nested_structured_masks(
            scores.heads,
            scores.ffn,
            kind=kind,
            head_fractions=levels,
            ffn_ratio=args.ffn_ratio,
            seed=args.seed,
        )
        for level, mask in masks.items():
            mask.provenance.method_params["scores"] = {
                "variant": scores.variant,
                "file": os.path.abspath(args.scores),
            }
            path = out / f"{kind}-{level:g}.safetensors"
            save_mask(mask, path)
            written.append(
                {
                    "kind": kind,
                    "level": level,
                    "path": str(path),
                    "heads_pruned": int((~mask.heads).sum()),
                    "ffn_pruned": int((~mask.ffn).sum()),
                }
            )
    if args.json:
        print_json({"masks": written})
        return 0
    rows = [[w["kind"], w["level"], w["heads_pruned"], w["ffn_pruned"], w["path"]] for w in written]
    print(format_table(rows, ["kind", "level", "heads pruned", "FFN layers pruned", "file"]))
    return 0


def run_stability(args: argparse.Namespace) -> int:
    from ticketlab.analysis.stability import plot_survival, structured_stability

    masks = [_load_structured(path) for path in args.masks]
    shapes = {(tuple(m.heads.shape), tuple(m.ffn.shape)) for m in masks}
    if len(shapes) > 1:
        raise TicketlabError("the masks are for models of different shapes")
    results = structured_stability(masks)
    if args.plot:
        plot_survival(results, args.plot, title=f"survival across {len(masks)} masks")
    data = {"masks": args.masks, "plot": args.plot, **{kind: r.to_dict() for kind, r in results.items()}}
    if args.json:
        print_json(data)
        return 0

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = []
    for kind in ("heads", "ffn"):
        d = data[kind]
        rows.append(
            [
                kind,
                d["units"],
                d["kept_by_all"],
                d["pruned_by_all"],
                f"{d['cochran_q']:.3f} (p={d['cochran_p']:.3g})",
                fmt(d["fleiss_kappa"]),
                fmt(d["krippendorff_alpha"]),
            ]
        )
    header = [
        "units",
        "count",
        "kept by all",
        "pruned by all",
        "Cochran's Q",
        "Fleiss' kappa",
        "Krippendorff's alpha",
    ]
    print(format_table(rows, header))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0

"""Verbs that make and read masks: prune, inspect, compare, import-mask."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ticketlab.cli.common import (
    Output,
    add_output_flags,
    add_protocol_flags,
    declare_output,
    finite,
    format_table,
    human_size,
    is_mask_file,
    print_json,
    protocol_of,
    seed,
)
from ticketlab.errors import MaskMismatchError, TicketlabError

HELP_ORDER = 10  # prune, inspect, compare, import-mask come first in --help


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.pruning import PRUNING_METHODS

    p = verbs.add_parser(
        "prune",
        help="find a one-shot mask (magnitude, random, ...) and write it as a mask file",
        description="Find a mask of a pre-trained model's weights and write it as a ticketlab mask file.",
    )
    p.add_argument("--model", required=True, help="hub id or local model directory")
    p.add_argument("--method", required=True, choices=sorted(PRUNING_METHODS), help="how weights are chosen")
    p.add_argument(
        "--sparsity", required=True, type=finite, help="fraction of the weights in scope to prune, in [0, 1)"
    )
    add_protocol_flags(p)
    p.add_argument("--seed", type=seed, default=0, help="random seed (random pruning; recorded for all)")
    p.add_argument("--reference", help="random pruning matched per matrix to the counts of this mask file")
    p.add_argument(
        "--group-size",
        type=int,
        help="--method nm: M, the group of consecutive inputs that keeps N = M x (1 - sparsity) (default 4: "
        "--sparsity 0.5 is 2:4)",
    )
    p.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    declare_output(p, Output("out", "ticketlab mask file", ours=is_mask_file, inputs=("reference",)))
    add_output_flags(p)
    p.set_defaults(run=run_prune)

    p = verbs.add_parser(
        "inspect", help="per-matrix, per-layer and total sparsity of a mask, and its provenance"
    )
    p.add_argument("mask", help="mask file")
    p.add_argument("--matrices", action="store_true", help="also list every matrix (always in --json)")
    add_output_flags(p)
    p.set_defaults(run=run_inspect)

    p = verbs.add_parser("compare", help="pairwise overlap of masks, against what random masks would share")
    p.add_argument("masks", nargs="+", help="two or more mask files over the same matrices")
    add_output_flags(p)
    p.set_defaults(run=run_compare)

    p = verbs.add_parser(
        "import-mask",
        help="convert an original BERT-Tickets or TAMT .pt mask into a ticketlab mask file",
        description="Import a BERT-Tickets (*.weight_mask float) or TAMT (*.weight bool) mask; no pickle code runs.",
    )
    p.add_argument("file", help="the original .pt mask file")
    p.add_argument("--model", required=True, help="hub id or local directory of the model the mask is for")
    p.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    declare_output(p, Output("out", "ticketlab mask file", ours=is_mask_file, inputs=("file",)))
    add_output_flags(p)
    p.set_defaults(run=run_import)


def _summary(mask, path: str) -> dict[str, Any]:
    return {
        "out": path,
        "method": mask.provenance.method,
        "scope": mask.provenance.scope,
        "scheme": mask.provenance.scheme,
        "sparsity": mask.sparsity,
        "num_weights": mask.num_weights(),
        "num_pruned": mask.num_pruned(),
        "nearly_pruned": mask.nearly_pruned(),
        "file_bytes": os.path.getsize(path),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"wrote {summary['out']}: {summary['method']}, {summary['num_pruned']:,} of {summary['num_weights']:,} "
        f"weights pruned ({100 * summary['sparsity']:.2f}%, {summary['scope']}, {summary['scheme']}), "
        f"{human_size(summary['file_bytes'])}"
    )


def run_prune(args: argparse.Namespace) -> int:
    from ticketlab.masks import load_mask, save_mask
    from ticketlab.models import load_encoder
    from ticketlab.pruning import prune, validate_sparsity

    validate_sparsity(args.sparsity)
    scope, scheme = protocol_of(args)
    params: dict[str, Any] = {}
    if args.reference:
        if args.method != "random":
            raise TicketlabError("--reference is for --method random (matched random pruning)")
        params["reference"] = load_mask(args.reference)
    if args.group_size is not None:
        if args.method != "nm":
            raise TicketlabError("--group-size is for --method nm (N:M pruning)")
        params["m"] = args.group_size
    model = load_encoder(args.model)
    try:
        mask = prune(
            model,
            args.method,
            args.sparsity,
            scope=scope,
            scheme=scheme,
            seed=args.seed,
            source_model=args.model,
            **params,
        )
    except MaskMismatchError as error:
        if not args.reference:
            raise
        raise MaskMismatchError(f"--reference {args.reference}: {error}") from None
    save_mask(mask, args.out)
    summary = _summary(mask, args.out)
    print_json(summary) if args.json else _print_summary(summary)
    if nearly := mask.nearly_pruned():  # on stderr: stdout stays the summary (or the JSON)
        print(f"ticketlab prune: warning: {_nearly_text(nearly)}", file=sys.stderr)
    return 0


def _nearly_text(nearly: dict[str, float]) -> str:
    listed = ", ".join(f"{name} ({100 * sparsity:.2f}%)" for name, sparsity in nearly.items())
    return f"{listed} pruned almost entirely: a model may be unable to learn through such a matrix"


def inspect_data(path: str) -> dict[str, Any]:
    """Everything ``inspect`` shows, as a dict (the ``--json`` output)."""
    from ticketlab.masks import StructuredMask, load_mask, read_header

    header = read_header(path)
    mask = load_mask(path)
    provenance = dict(header.get("provenance", {}))
    fingerprint = provenance.pop("fingerprint", {}) or {}
    provenance["model_fingerprint"] = fingerprint.get("model")
    data: dict[str, Any] = {
        "path": path,
        "kind": header["kind"],
        "format_version": header["format_version"],
        "ticketlab_version": header.get("ticketlab_version"),
        "provenance": provenance,
        "file_bytes": os.path.getsize(path),
    }
    if isinstance(mask, StructuredMask):
        data.update(
            sparsity=mask.head_sparsity(),
            head_sparsity=mask.head_sparsity(),
            ffn_sparsity=mask.ffn_sparsity(),
            ffn_granularity=mask.ffn_granularity,
            heads_kept_per_layer=mask.heads.sum(dim=1).tolist(),
            ffn_kept_per_layer=(mask.ffn.sum(dim=1) if mask.ffn.dim() == 2 else mask.ffn.int()).tolist(),
        )
        return data
    data.update(
        sparsity=mask.sparsity,
        num_weights=mask.num_weights(),
        num_pruned=mask.num_pruned(),
        fully_pruned=mask.fully_pruned(),
        nearly_pruned=mask.nearly_pruned(),
        per_layer=mask.layer_sparsity(),
        per_matrix={
            n: {
                "sparsity": s,
                "shape": list(mask.info[n].shape),
                "role": mask.info[n].role,
                "layer": mask.info[n].layer,
            }
            for n, s in mask.tensor_sparsity().items()
        },
    )
    return data


def run_inspect(args: argparse.Namespace) -> int:
    data = inspect_data(args.mask)
    if args.json:
        print_json(data)
        return 0
    prov = data["provenance"]
    print(
        f"{data['path']}: {data['kind']} mask, format v{data['format_version']}, {human_size(data['file_bytes'])}"
    )
    print(f"  method {prov.get('method')} {prov.get('method_params') or ''}".rstrip())
    print(
        f"  scope {prov.get('scope')}, scheme {prov.get('scheme')}, seed {prov.get('seed')}, "
        f"target sparsity {prov.get('target_sparsity')}"
    )
    print(f"  source model {prov.get('source_model')} (fingerprint {prov.get('model_fingerprint')})")
    for note in prov.get("notes") or []:
        print(f"  note: {note}")
    if data["kind"] == "structured":
        print(
            f"  heads pruned {100 * data['head_sparsity']:.2f}%, FFN ({data['ffn_granularity']}) "
            f"pruned {100 * data['ffn_sparsity']:.2f}%"
        )
        rows = [
            [i, h, f]
            for i, (h, f) in enumerate(zip(data["heads_kept_per_layer"], data["ffn_kept_per_layer"]))
        ]
        print(format_table(rows, ["layer", "heads kept", "ffn kept"]))
        return 0
    print(
        f"  total: {data['num_pruned']:,} of {data['num_weights']:,} weights pruned = {100 * data['sparsity']:.2f}%"
    )
    if data["fully_pruned"]:
        print(f"  warning: every weight of {', '.join(data['fully_pruned'])} is pruned")
    nearly = {n: s for n, s in data["nearly_pruned"].items() if n not in data["fully_pruned"]}
    if nearly:
        print(f"  warning: {_nearly_text(nearly)}")
    rows = [[k, f"{100 * v:.2f}%"] for k, v in data["per_layer"].items()]
    print(format_table(rows, ["layer", "sparsity"]))
    if args.matrices:
        rows = [
            [n, "x".join(map(str, m["shape"])), m["role"], f"{100 * m['sparsity']:.2f}%"]
            for n, m in data["per_matrix"].items()
        ]
        print(format_table(rows, ["matrix", "shape", "role", "sparsity"]))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ticketlab.analysis import pairwise_overlap
    from ticketlab.masks import StructuredMask, load_mask

    if len(args.masks) < 2:
        raise TicketlabError("compare needs at least two mask files")
    masks = {}
    for path in args.masks:
        mask = load_mask(path)
        if isinstance(mask, StructuredMask):
            raise TicketlabError(f"{path} is a structured mask; compare works on unstructured masks")
        masks[path] = mask
    pairs = pairwise_overlap(masks)
    warnings = _other_models(masks)
    for warning in warnings:
        print(f"ticketlab compare: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(
            {
                "masks": {p: {"sparsity": m.sparsity} for p, m in masks.items()},
                "pairs": [pair.to_dict() for pair in pairs],
                "warnings": warnings,
            }
        )
        return 0
    rows = [
        [p.a, p.b, f"{p.jaccard:.4f}", f"{p.jaccard_random:.4f}", f"{p.ratio_to_random:.2f}x"] for p in pairs
    ]
    print(format_table(rows, ["mask A", "mask B", "jaccard (kept)", "random masks", "vs random"]))
    return 0


def _other_models(masks: dict[str, Any]) -> list[str]:
    """Masks of the same shapes found on different models: their overlap compares unrelated
    weights. Told apart by the fingerprint of the source's dense weights, else the source name."""

    def source(mask) -> tuple[str | None, str | None]:
        return (mask.provenance.fingerprint or {}).get("model"), mask.provenance.source_model

    (first_path, first), *rest = masks.items()
    warnings = []
    for path, mask in rest:
        (digest_a, name_a), (digest_b, name_b) = source(first), source(mask)
        if (digest_a and digest_b and digest_a != digest_b) or (
            not (digest_a and digest_b) and name_a != name_b
        ):
            warnings.append(
                f"{first_path} and {path} were found on different models ({name_a} and {name_b}, "
                "whose weights differ): their overlap compares unrelated weights"
            )
    return warnings


def run_import(args: argparse.Namespace) -> int:
    from ticketlab.masks import fingerprint, import_original_mask, save_mask
    from ticketlab.models import load_encoder

    model = load_encoder(args.model)
    mask, report = import_original_mask(args.file, model)
    mask.provenance.source_model = args.model
    mask.provenance.fingerprint = fingerprint(mask, model)
    save_mask(mask, args.out)
    summary = _summary(mask, args.out) | {
        "source_format": report.source_format,
        "placed": len(report.placed),
        "unplaced_keys": report.unplaced,
        "not_in_file": report.not_in_file,
    }
    if args.json:
        print_json(summary)
        return 0
    _print_summary(summary)
    print(f"  {report.source_format} format: {len(report.placed)} matrices placed")
    if report.unplaced:
        print(
            f"  {len(report.unplaced)} keys could not be placed on this model: {', '.join(report.unplaced[:5])}"
            + (" ..." if len(report.unplaced) > 5 else "")
        )
    if report.not_in_file:
        print(f"  {len(report.not_in_file)} matrices of the scope were not in the file and stay dense")
    return 0

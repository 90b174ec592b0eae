"""The ``export`` verb: a ticket (model + mask) as a folder to ship: dense, CSR or 2:4."""

from __future__ import annotations

import argparse

from ticketlab.cli.common import add_output_flags, human_size, print_json

HELP_ORDER = 15  # right after the mask verbs


def register(verbs: argparse._SubParsersAction) -> None:
    from ticketlab.masks.export import EXPORT_FORMATS

    p = verbs.add_parser(
        "export",
        help="write a masked model: dense (plain transformers), csr (sparse CPU layers) or 2:4 (GPU)",
        description=(
            "Apply a mask to a model and write the result. dense: a standard save_pretrained folder with "
            "the pruned weights at zero and the ticket's provenance in config.json and README.md. csr: "
            "masked linear layers as sparse CSR matrices (load with ticketlab.models.sparse.load_sparse; "
            "CPU). 2:4: an N:M ticket (prune --method nm --sparsity 0.5) in a layout load_sparse turns "
            "into 2:4 semi-structured weights on a CUDA GPU."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local model directory (its own class is kept)")
    p.add_argument("--mask", required=True, help="mask file (.safetensors)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="export_format")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument(
        "--allow-fingerprint-mismatch",
        action="store_true",
        help="apply the mask although the kept weights differ from its source model's (a fine-tuned model)",
    )
    add_output_flags(p)
    p.set_defaults(run=run_export)


def _model_class(name_or_path: str):
    """The class the checkpoint was saved as (``architectures`` in its config), else ``AutoModel``."""
    import transformers

    from ticketlab.errors import TicketlabError

    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TicketlabError(f"could not read the config of {name_or_path!r}: {first_line}") from error
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def run_export(args: argparse.Namespace) -> int:
    from ticketlab.masks import load_mask
    from ticketlab.masks.export import export_ticket
    from ticketlab.models import load_encoder

    mask = load_mask(args.mask)
    model = load_encoder(args.model, model_class=_model_class(args.model))
    summary = export_ticket(
        model,
        mask,
        args.out,
        args.export_format,
        allow_fingerprint_mismatch=args.allow_fingerprint_mismatch,
        mask_file=args.mask,
    )
    if args.json:
        print_json(summary)
        return 0
    print(
        f"wrote {summary['out']}: {summary['format']}, {100 * summary['sparsity']:.2f}% of the masked "
        f"weights pruned, {human_size(summary['file_bytes'])}"
    )
    if summary.get("dense_matrices"):
        print(f"  kept dense (not linear layers): {', '.join(summary['dense_matrices'])}")
    if summary["skipped"]:
        print(f"  not masked: {', '.join(f'{n} ({why})' for n, why in summary['skipped'].items())}")
    if summary["format"] == "2:4":
        print("  runs on a CUDA GPU: ticketlab.models.sparse.load_sparse(folder) (dense=True on a CPU)")
    return 0

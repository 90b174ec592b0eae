"""A ticket as a model to ship: the masked model saved dense, as CSR sparse layers, or as 2:4.

``export_ticket(model, mask, out, "dense" | "csr" | "2:4")`` applies the mask (names, shapes and
fingerprint checked, pruned weights set to exactly zero) and writes a folder:

- ``dense``: ``save_pretrained`` as usual, loadable by plain transformers, with the ticket's
  provenance in ``config.json`` (``ticketlab_ticket``) and in the model card (``README.md``);
- ``csr``: the masked ``nn.Linear`` layers as compressed-sparse-row matrices that multiply on the
  CPU (:class:`ticketlab.models.sparse.CsrLinear`), read back by
  :func:`ticketlab.models.sparse.load_sparse`;
- ``2:4``: the masked layers in a device-independent N:M layout that ``load_sparse`` turns into
  ``torch.sparse.to_sparse_semi_structured`` weights on a CUDA GPU. Needs an N:M ticket
  (``prune(..., method="nm", sparsity=0.5)``); a mask with a group that keeps more than N is
  refused, naming the matrix, the row and the group.

Matrices that are not ``nn.Linear`` (the word embeddings of the ``encoder+embeddings`` scope) stay
dense, zeroed, in the sparse formats too; the header lists them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.io import write_directory
from ticketlab.masks.enforce import apply_mask
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter
from ticketlab.models.sparse import save_sparse, sparsify

EXPORT_FORMATS: tuple[str, ...] = ("dense", "csr", "2:4")
CONFIG_KEY = "ticketlab_ticket"


def ticket_metadata(mask: UnstructuredMask, mask_file: str | None = None) -> dict[str, Any]:
    """What travels with an exported ticket: provenance (without the per-matrix digests), counts."""
    provenance = mask.provenance.to_dict()
    fingerprint = provenance.pop("fingerprint", {}) or {}
    return {
        "mask_file": os.path.basename(mask_file) if mask_file else None,
        "sparsity": mask.sparsity,
        "num_weights": mask.num_weights(),
        "num_pruned": mask.num_pruned(),
        "num_matrices": len(mask.tensors),
        **provenance,
        "fingerprint_algorithm": fingerprint.get("algorithm"),
        "model_fingerprint": fingerprint.get("model"),
    }


def _model_card(metadata: dict[str, Any], export_format: str) -> str:
    # YAML front matter: the hub reads tags and library from it; the provenance goes in as JSON
    # (valid YAML too) so nothing needs a YAML writer.
    loader = {
        "dense": "transformers' `from_pretrained` (a standard checkpoint; pruned weights are 0.0)",
        "csr": "`ticketlab.models.sparse.load_sparse` (CSR sparse linear layers, CPU)",
        "2:4": "`ticketlab.models.sparse.load_sparse` (2:4 semi-structured weights on a CUDA GPU)",
    }[export_format]
    return (
        "---\n"
        "library_name: transformers\n"
        "tags: [ticketlab, lottery-ticket, sparse]\n"
        f"ticketlab_ticket: {json.dumps(metadata)}\n"
        "---\n\n"
        f"# A lottery ticket of {metadata.get('source_model') or 'a pre-trained model'}\n\n"
        f"Exported by ticketlab as `{export_format}`; load with {loader}.\n\n"
        f"- method: {metadata.get('method')} {json.dumps(metadata.get('method_params') or {})}\n"
        f"- sparsity: {100 * metadata['sparsity']:.2f}% of {metadata['num_weights']:,} weights "
        f"(scope {metadata.get('scope')}, scheme {metadata.get('scheme')})\n"
        f"- seed: {metadata.get('seed')}\n"
    )


def _n_m_of(mask: UnstructuredMask) -> tuple[int, int]:
    params = mask.provenance.method_params or {}
    if mask.provenance.method == "nm" and params.get("n") and params.get("m"):
        return int(params["n"]), int(params["m"])
    return 2, 4


def export_ticket(
    model: nn.Module,
    mask: UnstructuredMask,
    out: str | os.PathLike,
    export_format: str = "dense",
    *,
    allow_fingerprint_mismatch: bool = False,
    mask_file: str | None = None,
) -> dict[str, Any]:
    """Apply ``mask`` to ``model`` (in place) and write it to the folder ``out`` in ``export_format``.

    Returns a summary (format, folder, what was made sparse and what stayed dense).
    """
    if export_format not in EXPORT_FORMATS:
        raise TicketlabError(
            f"unknown export format {export_format!r} (choose from {', '.join(EXPORT_FORMATS)})"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"--out {str(out)!r} exists and is not a folder")
    enforcer = apply_mask(model, mask, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    enforcer.remove()  # the pruned weights are zero now; nothing will train them
    metadata = ticket_metadata(mask, mask_file)
    setattr(model.config, CONFIG_KEY, metadata)
    adapter = EncoderAdapter(model)
    sparse: dict[str, Any] = {}
    dense_matrices: list[str] = []
    for name in enforcer.report.names:
        path = adapter.full_name(name).removesuffix(".weight")
        if isinstance(model.get_submodule(path), nn.Linear):
            sparse[path] = mask.tensors[name]
        else:
            dense_matrices.append(name)
    summary: dict[str, Any] = {
        "format": export_format,
        "out": str(out),
        "sparsity": mask.sparsity,
        "skipped": dict(enforcer.report.skipped),
    }

    def write(folder: Path) -> None:
        if export_format == "dense":
            model.save_pretrained(folder)
        else:
            n, m = _n_m_of(mask)
            layers = sparsify(model, sparse, export_format, n=n, m=m)
            extra = {"ticket": metadata, "dense_matrices": dense_matrices}
            save_sparse(model, folder, export_format, layers, extra)
            summary["sparse_layers"] = len(layers)
            summary["dense_matrices"] = dense_matrices
        (folder / "README.md").write_text(_model_card(metadata, export_format))

    write_directory(out, write)
    summary["file_bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return summary

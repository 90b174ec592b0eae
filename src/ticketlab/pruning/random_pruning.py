"""Random pruning with exact counts: uniform over the scope, per matrix, or matched to a reference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.pruning.registry import PruningMethod, register
from ticketlab.pruning.selection import SCHEMES, num_to_prune


def _prune_uniform(total: int, k: int, generator: torch.Generator) -> torch.Tensor:
    keep = torch.ones(total, dtype=torch.bool)
    if k:
        keep[torch.randperm(total, generator=generator)[:k]] = False
    return keep


@register
class RandomPruning(PruningMethod):
    """Uniformly random masks, seeded, with exact counts.

    ``scheme="global"``: k = floor(n * sparsity) drawn uniformly over the whole scope.
    ``scheme="per-matrix"``: each matrix loses floor(n_i * sparsity).
    ``reference=mask``: "matched" random pruning, each matrix loses exactly as many weights as the
    reference mask pruned there (the sparsity argument is then ignored).
    """

    name = "random"
    description = "uniformly random weights, exact counts (global, per-matrix, or matched to --reference)"

    def __init__(self, reference: UnstructuredMask | None = None):
        self.reference = reference

    def select(
        self, weights: Mapping[str, torch.Tensor], sparsity: float, scheme: str, seed: int
    ) -> dict[str, torch.Tensor]:
        if scheme not in SCHEMES:
            raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
        generator = torch.Generator().manual_seed(int(seed))
        names = list(weights)
        sizes = [weights[n].numel() for n in names]
        if self.reference is not None:
            self._check_reference(weights)
            counts = [int((~self.reference.tensors[n]).sum()) for n in names]
            flats = [_prune_uniform(size, k, generator) for size, k in zip(sizes, counts)]
        elif scheme == "per-matrix":
            flats = [_prune_uniform(size, num_to_prune(size, sparsity), generator) for size in sizes]
        else:
            whole = _prune_uniform(sum(sizes), num_to_prune(sum(sizes), sparsity), generator)
            flats = list(torch.split(whole, sizes))
        return {n: flat.reshape(weights[n].shape) for n, flat in zip(names, flats)}

    def _check_reference(self, weights: Mapping[str, torch.Tensor]) -> None:
        """The reference must cover exactly these matrices with these shapes: counts taken from
        another model's matrices could exceed this one's (a mask of another width or depth)."""
        reference = self.reference.tensors
        source = self.reference.provenance.source_model or "another model"
        for name, weight in weights.items():
            if name not in reference:
                raise MaskMismatchError(
                    f"the reference mask has no matrix {name!r} (it was made for {source})"
                )
            if tuple(reference[name].shape) != tuple(weight.shape):
                raise MaskMismatchError(
                    f"the reference mask's {name!r} has shape {tuple(reference[name].shape)}, this model's "
                    f"has {tuple(weight.shape)} (the reference was made for {source})"
                )
        extra = [name for name in reference if name not in weights]
        if extra:
            raise MaskMismatchError(
                f"the reference mask has matrix {extra[0]!r}, which is not among the weights pruned here "
                f"(another model, or another --scope than the reference's {self.reference.provenance.scope!r})"
            )

    def params(self) -> dict[str, Any]:
        return {"variant": "matched" if self.reference is not None else "uniform"}

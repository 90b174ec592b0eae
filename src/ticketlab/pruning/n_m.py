"""N:M semi-structured magnitude pruning: in every group of M consecutive weights, keep the N largest.

Groups run along the input dimension (the last one of a ``[out, in]`` weight, consecutive in
memory), which is the layout GPUs' 2:4 sparse tensor cores accelerate
(``torch.sparse.to_sparse_semi_structured``; ``ticketlab export --format 2:4``). The sparsity
fixes N: ``N = M * (1 - sparsity)`` must be a whole number (2:4 is sparsity 0.5 with M = 4).

Every group keeps exactly N, so the mask prunes exactly ``floor(n * sparsity)`` of every matrix
and of the scope: the scheme (``global`` or ``per-matrix``) is moot, gives the same bits, and is
only recorded. Ties follow the rule of every ranking method: among equal ``|w|`` in a group, the
ones that come first are pruned first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ticketlab.errors import TicketlabError
from ticketlab.pruning.registry import PruningMethod, register
from ticketlab.pruning.selection import SCHEMES, validate_sparsity


def pruned_per_group(sparsity: float, m: int) -> int:
    """M - N: how many of each group of ``m`` weights the sparsity prunes (a whole number)."""
    sparsity = validate_sparsity(sparsity)
    pruned = sparsity * m
    if abs(pruned - round(pruned)) > 1e-9:
        choices = ", ".join(f"{i / m:g}" for i in range(m))
        raise TicketlabError(
            f"N:M pruning keeps a whole number of weights per group of {m}: sparsity {sparsity:g} "
            f"would keep {m - pruned:g}; choose one of {choices}"
        )
    return int(round(pruned))


def n_m_keep(weight: torch.Tensor, pruned: int, m: int, name: str = "weight") -> torch.Tensor:
    """Keep-bits of ``weight``: in each group of ``m`` along the last dimension, the ``m - pruned``
    largest ``|w|`` are kept (ties: the first ones pruned first)."""
    if weight.dim() < 1 or weight.shape[-1] % m:
        raise TicketlabError(
            f"N:M pruning needs the input dimension of {name!r} ({tuple(weight.shape)}) to be a "
            f"multiple of the group size {m}"
        )
    scores = weight.detach().cpu().float().abs().reshape(-1, m)
    if bool(scores.isnan().any()):
        raise TicketlabError(f"scores of {name!r} contain NaN")
    keep = torch.ones(scores.shape, dtype=torch.bool)
    if pruned:
        # A stable sort within each group: equal magnitudes keep their order, so the first go first.
        lowest = torch.sort(scores, dim=1, stable=True).indices[:, :pruned]
        keep.scatter_(1, lowest, False)
    return keep.reshape(weight.shape)


@register
class NMPruning(PruningMethod):
    """N:M magnitude pruning (2:4 at sparsity 0.5 with the default group size M = 4)."""

    name = "nm"
    description = "N:M semi-structured: keep the largest |w| of every M consecutive inputs (2:4 at 0.5)"

    def __init__(self, m: int = 4):
        if int(m) != m or m < 1:
            raise TicketlabError(f"the N:M group size must be a positive whole number, got {m}")
        self.m = int(m)
        self.n: int | None = None

    def select(
        self, weights: Mapping[str, torch.Tensor], sparsity: float, scheme: str, seed: int
    ) -> dict[str, torch.Tensor]:
        if scheme not in SCHEMES:
            raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
        pruned = pruned_per_group(sparsity, self.m)
        self.n = self.m - pruned
        return {name: n_m_keep(weight, pruned, self.m, name) for name, weight in weights.items()}

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "m": self.m, "groups": "consecutive along the input dimension"}

"""Magnitude pruning: prune the smallest |w|."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.pruning.registry import PruningMethod, register
from ticketlab.pruning.selection import lowest_k_mask


@register
class MagnitudePruning(PruningMethod):
    """One-shot magnitude pruning (OMP) of the given weights.

    With ``within`` (a mask already held), the weights it pruned rank below every surviving one,
    so the new mask contains the old: this is one level of iterative magnitude pruning.
    """

    name = "omp"
    description = "one-shot magnitude pruning: prune the smallest |w|"

    def __init__(self, within: UnstructuredMask | None = None):
        self.within = within

    def select(
        self, weights: Mapping[str, torch.Tensor], sparsity: float, scheme: str, seed: int
    ) -> dict[str, torch.Tensor]:
        if self.within is None:
            # Ranked by |w| chunk by chunk: no copy of the weights is made.
            return lowest_k_mask(
                {n: w.detach().cpu() for n, w in weights.items()}, sparsity, scheme, absolute=True
            )
        scores = {}
        for name, weight in weights.items():
            score = weight.detach().abs().float()
            # -1 sits below every |w| (>= 0): already-pruned weights are pruned first.
            score = score.masked_fill(~self.within.tensors[name].to(score.device), -1.0)
            scores[name] = score.cpu()
        return lowest_k_mask(scores, sparsity, scheme)

    def params(self) -> dict[str, Any]:
        return {"nested": self.within is not None}

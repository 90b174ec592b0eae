"""Exact selection of the k lowest scores, globally or per matrix, with deterministic ties.

Every method that ranks weights (magnitude, learned scores, importance) ends here. ``k`` is
``floor(n * sparsity)`` and exactly that many entries are pruned; among equal scores at the
threshold, the entries that come first (matrices in canonical order, then row-major index) are
pruned first, so the same scores give the same bits on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ticketlab.errors import TicketlabError

SCHEMES: tuple[str, ...] = ("global", "per-matrix")

# Above this many scores, the global threshold is found from a sampled bracket instead of one
# kthvalue over a copy of everything (a 340 MB copy for BERT-base).
_BRACKET_MIN_SIZE = 1 << 22
_SAMPLE_SIZE = 1 << 20
_BRACKET_MARGIN = 0.004  # in quantile units; ~8x the sampling error at 2^20 samples


def validate_sparsity(sparsity: float) -> float:
    sparsity = float(sparsity)
    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise TicketlabError(f"sparsity must be in [0, 1) (fraction of weights pruned), got {sparsity}")
    return sparsity


def num_to_prune(total: int, sparsity: float) -> int:
    # The small epsilon keeps floor(100 * 0.7) at 70 despite 0.7 being 0.69999... in binary.
    return int(math.floor(total * validate_sparsity(sparsity) + 1e-9))


def _kth_smallest_exact(flats: list[torch.Tensor], k: int) -> torch.Tensor:
    return torch.kthvalue(torch.cat(flats), k).values


def _kth_smallest(flats: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) over several flat tensors, without sorting them."""
    total = sum(f.numel() for f in flats)
    if total < _BRACKET_MIN_SIZE:
        return _kth_smallest_exact(flats, k)
    # Estimate a narrow bracket [lo, hi] around the target quantile from a seeded sample, then find
    # the exact value inside the bracket. The sample only decides the bracket, never the answer.
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([f.numel() for f in flats], dtype=torch.float64)
    sample = []
    for flat, size in zip(flats, sizes.tolist()):
        count = max(1, int(_SAMPLE_SIZE * size / total))
        sample.append(flat[torch.randint(flat.numel(), (count,), generator=generator)])
    sample = torch.sort(torch.cat(sample)).values
    q = k / total
    lo_i = int(max(0.0, q - _BRACKET_MARGIN) * (sample.numel() - 1))
    hi_i = int(math.ceil(min(1.0, q + _BRACKET_MARGIN) * (sample.numel() - 1)))
    lo, hi = sample[lo_i], sample[hi_i]
    below = 0
    band = []
    for flat in flats:
        below += int((flat < lo).sum())
        band.append(flat[(flat >= lo) & (flat <= hi)])
    band = torch.cat(band)
    if below < k <= below + band.numel():
        return torch.kthvalue(band, k - below).values
    return _kth_smallest_exact(flats, k)  # the bracket missed: rare, still exact


def _prune_lowest(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep-bits over flat score tensors with exactly ``k`` of the lowest scores pruned."""
    if k == 0:
        return [torch.ones(s.numel(), dtype=torch.bool) for s in scores]
    threshold = _kth_smallest(scores, k)
    keeps = [s > threshold for s in scores]
    # Entries equal to the threshold: prune as many as still needed, first ones first.
    needed = k - sum(int((~keep).sum()) - int((s == threshold).sum()) for s, keep in zip(scores, keeps))
    for score, keep in zip(scores, keeps):
        ties = torch.nonzero(score == threshold).flatten()
        if needed <= 0:
            keep[ties] = True
            continue
        keep[ties[needed:]] = True
        needed -= min(needed, ties.numel())
    return keeps


def lowest_k_mask(
    scores: Mapping[str, torch.Tensor], sparsity: float, scheme: str = "global"
) -> dict[str, torch.Tensor]:
    """Keep-bits with ``floor(n * sparsity)`` lowest scores pruned, over all (global) or per matrix."""
    if scheme not in SCHEMES:
        raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    validate_sparsity(sparsity)
    names = list(scores)
    flats = []
    for name in names:
        flat = scores[name].detach().reshape(-1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        if torch.isnan(flat).any():
            raise TicketlabError(f"scores of {name!r} contain NaN")
        flats.append(flat)
    if scheme == "global":
        keeps = _prune_lowest(flats, num_to_prune(sum(f.numel() for f in flats), sparsity))
    else:
        keeps = [_prune_lowest([f], num_to_prune(f.numel(), sparsity))[0] for f in flats]
    return {name: keep.reshape(scores[name].shape) for name, keep in zip(names, keeps)}

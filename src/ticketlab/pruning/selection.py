"""Exact selection of the k lowest scores, globally or per matrix, with deterministic ties.

Every method that ranks weights (magnitude, learned scores, importance) ends here. ``k`` is
``floor(n * sparsity)`` and exactly that many entries are pruned; among equal scores at the
threshold, the entries that come first (matrices in canonical order, then row-major index) are
pruned first, so the same scores give the same bits on any machine.

Speed (BERT-base, 85M scores, global): the threshold is bracketed from a sample, and the scores are
then read once, in cache-sized chunks, to write the keep-bits outside the bracket and collect the
few entries inside it. Magnitude pruning passes the weights themselves with ``absolute=True``, so
no full-size copy of |W| is ever made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from ticketlab.errors import TicketlabError

SCHEMES: tuple[str, ...] = ("global", "per-matrix")

# From this many scores on, the threshold is found from a sampled bracket and one chunked pass
# instead of one kthvalue over a copy of everything (a 340 MB copy for BERT-base, globally; with
# the per-matrix scheme, one copy and one kthvalue per matrix, 1.2-1.7 s for BERT-base).
_BRACKET_MIN_SIZE = 1 << 16
_SAMPLE_SIZE = 1 << 18  # at most; a matrix of n scores is sampled n / _SAMPLE_DIVISOR times
_SAMPLE_DIVISOR = 64
# The bracket's half-width in quantile units at _SAMPLE_SIZE samples (>= 5x the sampling error
# there), widened as 1/sqrt(samples) for smaller samples so it keeps the same confidence.
_BRACKET_MARGIN = 0.005
# Scores are processed in chunks of this many entries, so the temporaries of one chunk stay in cache.
_CHUNK_SIZE = 1 << 18


def validate_sparsity(sparsity: float) -> float:
    sparsity = float(sparsity)
    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise TicketlabError(f"sparsity must be in [0, 1) (fraction of weights pruned), got {sparsity}")
    return sparsity


def num_to_prune(total: int, sparsity: float) -> int:
    # The small epsilon keeps floor(100 * 0.7) at 70 despite 0.7 being 0.69999... in binary.
    return int(math.floor(total * validate_sparsity(sparsity) + 1e-9))


class _Scores:
    """One flat score tensor on the CPU, read as float32 (as its absolute value with ``absolute``)."""

    def __init__(self, name: str, scores: torch.Tensor, absolute: bool):
        self.name, self.absolute = name, absolute
        self.flat = scores.detach().reshape(-1).cpu()

    def numel(self) -> int:
        return self.flat.numel()

    def prepare(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` as float32 scores (a new tensor unless they already are; the input is unchanged)."""
        if values.dtype != torch.float32:
            values = values.float()
        return values.abs() if self.absolute else values

    def whole(self) -> torch.Tensor:
        return self.prepare(self.flat)

    def sample(self, picks: torch.Tensor) -> np.ndarray:
        """The float32 scores at positions ``picks``."""
        if self.flat.dtype == torch.float32:
            values = self.flat.numpy()[picks.numpy()]
            return np.abs(values, out=values) if self.absolute else values
        return self.prepare(self.flat[picks]).numpy()

    def chunks(self, buffer: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 scores) of consecutive chunks of at most ``buffer.size`` entries.

        NumPy, not torch, runs the per-chunk work: on chunks that fit in cache its single-threaded
        loops beat torch's per-call dispatch, and they do not contend for cores with other work.
        """
        size = buffer.size
        native = self.flat.numpy() if self.flat.dtype == torch.float32 else None
        for start in range(0, self.numel(), size):
            if native is not None:
                part = native[start : start + size]
                if not self.absolute:
                    yield start, part
                    continue
                values = np.abs(part, out=buffer[: part.size])
            else:  # float16/bfloat16/float64: convert the chunk through torch (NumPy has no bfloat16)
                part = self.flat[start : start + size]
                values = buffer[: part.numel()]
                torch.from_numpy(values).copy_(part)
                if self.absolute:
                    np.abs(values, out=values)
            yield start, values

    def check_no_nan(self, values: np.ndarray | torch.Tensor) -> None:
        # A sum is NaN when a NaN is present (or +inf meets -inf): only then look element-wise.
        with np.errstate(invalid="ignore"):  # inf - inf is not an error here
            if not math.isnan(float(values.sum())):
                return
        if isinstance(values, torch.Tensor) and not bool(values.isnan().any()):
            return
        if isinstance(values, np.ndarray) and not np.isnan(values).any():
            return
        raise TicketlabError(f"scores of {self.name!r} contain NaN")


def _keep_ties_beyond(
    keeps: list[torch.Tensor], tie_positions: list[torch.Tensor], needed: int
) -> list[torch.Tensor]:
    """Entries equal to the threshold are pruned so far: prune the first ``needed``, keep the rest."""
    for keep, ties in zip(keeps, tie_positions):
        if ties.numel() > needed:
            keep[ties[max(needed, 0) :]] = True
        needed -= ties.numel()
    return keeps


def _prune_lowest_exact(scores: list[_Scores], k: int) -> list[torch.Tensor]:
    """One kthvalue over a copy of all scores: simple, for small inputs and as the fallback."""
    wholes = [s.whole() for s in scores]
    for score, values in zip(scores, wholes):
        score.check_no_nan(values)
    threshold = torch.kthvalue(torch.cat(wholes), k).values
    below = sum(int(torch.count_nonzero(w < threshold)) for w in wholes)
    keeps = [w > threshold for w in wholes]
    ties = [torch.nonzero(w == threshold).flatten() for w in wholes]
    return _keep_ties_beyond(keeps, ties, k - below)


def _kth_smallest(values: np.ndarray, k: int) -> np.float32:
    """The k-th smallest (1-based) of ``values``, without sorting them."""
    return np.partition(values, k - 1)[k - 1]


def _sample_bracket(scores: list[_Scores], k: int, total: int) -> tuple[np.float32, np.float32]:
    """A narrow interval [lo, hi] that holds the k-th smallest score with near certainty."""
    generator = torch.Generator().manual_seed(0)
    size = max(1, min(_SAMPLE_SIZE, total // _SAMPLE_DIVISOR))
    sample = []
    for score in scores:
        count = max(1, int(size * score.numel() / total))
        sample.append(score.sample(torch.randint(score.numel(), (count,), generator=generator)))
    sample = np.concatenate(sample)
    q = k / total
    margin = _BRACKET_MARGIN * math.sqrt(_SAMPLE_SIZE / sample.size)
    lo_i = int(max(0.0, q - margin) * (sample.size - 1))
    hi_i = int(math.ceil(min(1.0, q + margin) * (sample.size - 1)))
    # The (i+1)-th smallest is sorted(sample)[i].
    return _kth_smallest(sample, lo_i + 1), _kth_smallest(sample, hi_i + 1)


def _prune_lowest_bracketed(scores: list[_Scores], k: int, total: int) -> list[torch.Tensor] | None:
    """As :func:`_prune_lowest_exact`, reading every score once; None if the bracket missed.

    A seeded sample brackets the k-th smallest score in [lo, hi]. One chunked pass then writes the
    keep-bits of everything above the bracket, counts what lies below it, and collects the positions
    and values inside it (about 1% of the scores); the exact threshold is found among those, and
    only they are revisited. The sample decides the bracket, never the answer.

    All of it runs in NumPy: single-threaded loops over cache-sized chunks are as fast as torch's
    threaded kernels here, and they do not stall when other processes hold the cores.
    """
    lo, hi = _sample_bracket(scores, k, total)
    buffer = np.empty(min(_CHUNK_SIZE, total), dtype=np.float32)
    at_least_lo = np.empty(buffer.shape, dtype=bool)
    in_band = np.empty(buffer.shape, dtype=bool)
    below = 0
    keeps, band_positions, band_values = [], [], []
    for score in scores:
        keep = torch.empty(score.numel(), dtype=torch.bool)
        keep_bits = keep.numpy()
        positions, values_in_band = [], []
        for start, values in score.chunks(buffer):
            size = values.size
            score.check_no_nan(values)
            above = np.greater(values, hi, out=keep_bits[start : start + size])  # kept
            at_least = np.greater_equal(values, lo, out=at_least_lo[:size])
            below += size - int(np.count_nonzero(at_least))
            # lo <= v <= hi is "at least lo and not above hi"; for bools, a > b is a and not b.
            index = np.flatnonzero(np.greater(at_least, above, out=in_band[:size]))
            positions.append(index + start)
            values_in_band.append(values[index])  # a copy: the buffer is reused
        keeps.append(keep)
        band_positions.append(np.concatenate(positions))
        band_values.append(np.concatenate(values_in_band))
    band = np.concatenate(band_values)
    if not below < k <= below + band.size:
        return None
    threshold = _kth_smallest(band, k - below)
    below += int(np.count_nonzero(band < threshold))
    needed = k - below  # entries equal to the threshold still to prune, first ones first
    for keep, position, value in zip(keeps, band_positions, band_values):
        keep_bits = keep.numpy()
        keep_bits[position[value > threshold]] = True
        ties = position[value == threshold]
        if ties.size > needed:
            keep_bits[ties[max(needed, 0) :]] = True
        needed -= ties.size
    return keeps


def _prune_lowest(scores: list[_Scores], k: int) -> list[torch.Tensor]:
    """Keep-bits over flat score tensors with exactly ``k`` of the lowest scores pruned."""
    if k == 0:
        for score in scores:
            score.check_no_nan(score.whole())
        return [torch.ones(s.numel(), dtype=torch.bool) for s in scores]
    total = sum(s.numel() for s in scores)
    if total >= _BRACKET_MIN_SIZE:
        keeps = _prune_lowest_bracketed(scores, k, total)
        if keeps is not None:
            return keeps
    return _prune_lowest_exact(scores, k)  # small, or the bracket missed (rare): still exact


def lowest_k_mask(
    scores: Mapping[str, torch.Tensor], sparsity: float, scheme: str = "global", *, absolute: bool = False
) -> dict[str, torch.Tensor]:
    """Keep-bits with ``floor(n * sparsity)`` lowest scores pruned, over all (global) or per matrix.

    With ``absolute=True`` the ranking is by ``|score|`` (magnitude pruning of the weights passed as
    scores), computed chunk by chunk without copying the tensors.
    """
    if scheme not in SCHEMES:
        raise TicketlabError(f"unknown scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    validate_sparsity(sparsity)
    names = list(scores)
    flats = [_Scores(name, scores[name], absolute) for name in names]
    if scheme == "global":
        keeps = _prune_lowest(flats, num_to_prune(sum(f.numel() for f in flats), sparsity))
    else:
        keeps = [_prune_lowest([f], num_to_prune(f.numel(), sparsity))[0] for f in flats]
    return {name: keep.reshape(scores[name].shape) for name, keep in zip(names, keeps)}

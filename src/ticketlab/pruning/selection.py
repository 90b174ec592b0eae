"""Exact selection of the k lowest scores, globally or per matrix, with deterministic ties.

Every method that ranks weights (magnitude, learned scores, importance) ends here. ``k`` is
``floor(n * sparsity)`` and exactly that many entries are pruned; among equal scores at the
threshold, the entries that come first (matrices in canonical order, then row-major index) are
pruned first, so the same scores give the same bits on any machine.

Speed (BERT-base, 85M scores, global): the threshold is bracketed from a sample, and the scores are
then read once, in cache-sized chunks, to write the keep-bits outside the bracket and collect the
few entries inside it; ties at either end of the bracket are counted per chunk, not collected, so
scores with huge tie groups (TAMT's start at two values) cost about one more pass, not a sort.
Magnitude pruning passes the weights themselves with ``absolute=True``, so no full-size copy of |W|
is ever made. Matrices are scanned (global) or selected (per matrix) on up to
``torch.get_num_threads()`` threads: NumPy's loops release the GIL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks.fingerprint import run_jobs

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

    def sample(self, picks: np.ndarray) -> np.ndarray:
        """The float32 scores at positions ``picks``."""
        if self.flat.dtype == torch.float32:
            values = self.flat.numpy()[picks]
            return np.abs(values, out=values) if self.absolute else values
        return self.prepare(self.flat[torch.from_numpy(picks)]).numpy()

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
    generator = np.random.default_rng(0)
    size = max(1, min(_SAMPLE_SIZE, total // _SAMPLE_DIVISOR))
    sample = []
    for score in scores:
        count = max(1, int(size * score.numel() / total))
        picks = generator.integers(0, score.numel(), count)
        sample.append(score.sample(picks))
    sample = np.concatenate(sample)
    q = k / total
    margin = _BRACKET_MARGIN * math.sqrt(_SAMPLE_SIZE / sample.size)
    lo_i = int(max(0.0, q - margin) * (sample.size - 1))
    hi_i = int(math.ceil(min(1.0, q + margin) * (sample.size - 1)))
    # sorted(sample)[i] for both ends from one partition.
    ends = np.partition(sample, [lo_i, hi_i])
    return ends[lo_i], ends[hi_i]


@dataclass
class _Scan:
    """What one pass over one score tensor found for a bracket [lo, hi]."""

    keep: torch.Tensor  # v >= hi
    at_most_lo: int
    below_hi: int
    inside_positions: np.ndarray  # lo < v < hi, in order
    inside_values: np.ndarray


def _scan(score: _Scores, lo: np.float32, hi: np.float32) -> _Scan:
    """One chunked pass over ``score`` (its own buffers: tensors are scanned on parallel threads)."""
    size = min(_CHUNK_SIZE, score.numel())
    buffer = np.empty(size, dtype=np.float32)
    above_lo = np.empty(size, dtype=bool)
    inside = np.empty(size, dtype=bool)
    at_most_lo = below_hi = 0
    keep = torch.empty(score.numel(), dtype=torch.bool)
    keep_bits = keep.numpy()
    positions, values_inside = [], []
    for start, values in score.chunks(buffer):
        size = values.size
        score.check_no_nan(values)
        at_least_hi = np.greater_equal(values, hi, out=keep_bits[start : start + size])
        below_hi += size - int(np.count_nonzero(at_least_hi))
        greater = np.greater(values, lo, out=above_lo[:size])
        at_most_lo += size - int(np.count_nonzero(greater))
        # lo < v < hi is "above lo and not at least hi"; for bools, a > b is a and not b.
        index = np.flatnonzero(np.greater(greater, at_least_hi, out=inside[:size]))
        positions.append(index + start)
        values_inside.append(values[index])  # a copy: the buffer is reused
    return _Scan(keep, at_most_lo, below_hi, np.concatenate(positions), np.concatenate(values_inside))


def _workers() -> int:
    """Threads for work over several tensors: torch's setting (NumPy's loops release the GIL)."""
    return max(1, torch.get_num_threads())


def _prune_lowest_bracketed(scores: list[_Scores], k: int, total: int) -> list[torch.Tensor] | None:
    """As :func:`_prune_lowest_exact`, reading every score once or twice; None if the bracket missed.

    A seeded sample brackets the k-th smallest score in [lo, hi]. One chunked pass writes the
    keep-bits ``v >= hi``, counts what lies at or below ``lo``, and collects the positions and
    values strictly inside the bracket (about 1% of the scores). The threshold is then one of three
    kinds, and only what it needs is revisited:

    - strictly inside: found among the collected entries, which alone are revisited;
    - equal to ``hi``: the first ties at ``hi`` (in order) are unset, chunk by chunk up to the one
      where the needed count is reached;
    - equal to ``lo`` (``lo < hi``): one more pass counts the entries below and at ``lo`` per chunk,
      then the ties beyond the needed count are set, chunk by chunk.

    Counting ties per chunk instead of collecting their positions keeps scores with huge tie
    groups cheap: TAMT's scores start at two values (``2c`` kept, 0 pruned) and the rows that get
    no gradient keep them, so the sample's bracket often ends exactly on one of those values. The
    sample decides the bracket, never the answer.

    All of it runs in NumPy: single-threaded loops over cache-sized chunks are as fast as torch's
    threaded kernels here, and they do not stall when other processes hold the cores. Several
    tensors are scanned on up to ``torch.get_num_threads()`` threads at once.
    """
    lo, hi = _sample_bracket(scores, k, total)
    scans = run_jobs(
        ((str(i), lambda score=score: _scan(score, lo, hi)) for i, score in enumerate(scores)),
        workers=_workers(),
    )
    keeps = [scans[str(i)].keep for i in range(len(scores))]
    inside_positions = [scans[str(i)].inside_positions for i in range(len(scores))]
    inside_values = [scans[str(i)].inside_values for i in range(len(scores))]
    at_most_lo = sum(scan.at_most_lo for scan in scans.values())
    below_hi = sum(scan.below_hi for scan in scans.values())
    buffer = np.empty(min(_CHUNK_SIZE, total), dtype=np.float32)  # for the tie passes below
    if lo < hi and at_most_lo < k <= below_hi:
        band = np.concatenate(inside_values)
        threshold = _kth_smallest(band, k - at_most_lo)
        below = at_most_lo + int(np.count_nonzero(band < threshold))
        needed = k - below  # entries equal to the threshold still to prune, first ones first
        for keep, position, value in zip(keeps, inside_positions, inside_values):
            keep_bits = keep.numpy()
            keep_bits[position[value > threshold]] = True
            ties = position[value == threshold]
            if ties.size > needed:
                keep_bits[ties[max(needed, 0) :]] = True
            needed -= ties.size
        return keeps
    if k > below_hi:
        return _prune_ties_at_hi(scores, keeps, buffer, hi, k - below_hi)
    if lo < hi:
        return _prune_ties_at_lo(scores, keeps, inside_positions, buffer, lo, k)
    return None


def _prune_ties_at_hi(
    scores: list[_Scores], keeps: list[torch.Tensor], buffer: np.ndarray, hi: np.float32, needed: int
) -> list[torch.Tensor] | None:
    """The threshold is ``hi`` and everything below it is pruned: of the entries equal to ``hi``
    (kept so far), prune the first ``needed``; None if there are fewer (the bracket missed)."""
    ties = np.empty(buffer.shape, dtype=bool)
    for score, keep in zip(scores, keeps):
        keep_bits = keep.numpy()
        for start, values in score.chunks(buffer):
            size = values.size
            at_hi = np.equal(values, hi, out=ties[:size])
            count = int(np.count_nonzero(at_hi))
            if count <= needed:
                np.greater(values, hi, out=keep_bits[start : start + size])
                needed -= count
            else:
                keep_bits[start + np.flatnonzero(at_hi)[:needed]] = False
                return keeps
            if needed == 0:
                return keeps
    return None


def _prune_ties_at_lo(
    scores: list[_Scores],
    keeps: list[torch.Tensor],
    inside_positions: list[np.ndarray],
    buffer: np.ndarray,
    lo: np.float32,
    k: int,
) -> list[torch.Tensor] | None:
    """The threshold is ``lo`` (``lo < hi``): the entries inside the bracket are kept, and of the
    entries equal to ``lo`` the first ``k - #(v < lo)`` are pruned, the rest kept. None when the
    threshold is below ``lo`` after all (``k`` or more entries below it: the bracket missed)."""
    for keep, position in zip(keeps, inside_positions):
        keep.numpy()[position] = True
    flags = np.empty(buffer.shape, dtype=bool)
    below, ties_per_chunk = 0, []
    for score in scores:
        for _, values in score.chunks(buffer):
            size = values.size
            below += int(np.count_nonzero(np.less(values, lo, out=flags[:size])))
            ties_per_chunk.append(int(np.count_nonzero(np.equal(values, lo, out=flags[:size]))))
    needed = k - below
    if not 0 < needed <= sum(ties_per_chunk):
        return None
    counts = iter(ties_per_chunk)
    for score, keep in zip(scores, keeps):
        keep_bits = keep.numpy()
        for start, values in score.chunks(buffer):
            count = next(counts)
            if count == 0:
                continue
            size = values.size
            at_lo = np.equal(values, lo, out=flags[:size])
            if needed <= 0:  # every tie from here on is kept
                np.logical_or(keep_bits[start : start + size], at_lo, out=keep_bits[start : start + size])
            elif count > needed:
                keep_bits[start + np.flatnonzero(at_lo)[needed:]] = True
            needed -= count
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
        # Matrices are independent: on up to torch.get_num_threads() threads, each one single-threaded.
        found = run_jobs(
            ((f.name, lambda f=f: _prune_lowest([f], num_to_prune(f.numel(), sparsity))[0]) for f in flats),
            workers=_workers(),
        )
        keeps = [found[name] for name in names]
    return {name: keep.reshape(scores[name].shape) for name, keep in zip(names, keeps)}

"""Generated attention maps of Kovaleva et al. 2019's five classes, for tests, the demo and the docs.

Each map is a softmax over rows (every row sums to 1, as a head's attention probabilities) of
logits that carry the class's structure plus Gaussian noise:

- ``vertical``: every token attends to the same one to three columns (``[CLS]``, ``[SEP]`` or a
  punctuation-like position);
- ``diagonal``: every token attends to itself, its predecessor or its successor (one or two of
  these offsets);
- ``vertical+diagonal``: both, each a little weaker;
- ``block``: the input falls into two or three contiguous segments (sentence pairs), and tokens
  attend within their own segment, nearly uniformly;
- ``heterogeneous``: no structure: either independent random logits per row (speckled), or broad,
  nearly uniform attention with a weak preference that varies from row to row (diffuse).

Lengths vary (special tokens are part of a real map's length too). The real labelled maps of the
original are not redistributable here; these stand in for them so that the classifier can be
trained and checked without hand labelling, and a classifier trained on them labels real maps
only approximately: judge its labels by eye (docs/attention-patterns.md).
"""

from __future__ import annotations

import numpy as np

from ticketlab.data.attention_maps import PATTERN_CLASSES, MapCollection
from ticketlab.errors import TicketlabError


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def _vertical(logits: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    n = logits.shape[0]
    candidates = [0, n - 1, *rng.choice(np.arange(1, n - 1), size=2, replace=False).tolist()]
    count = int(rng.integers(1, 4))
    columns = rng.choice(candidates, size=count, replace=False)
    for column in columns:
        logits[:, column] += strength * rng.uniform(0.8, 1.2)


def _diagonal(logits: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    n = logits.shape[0]
    offsets = rng.choice([-1, 0, 1], size=int(rng.integers(1, 3)), replace=False)
    rows = np.arange(n)
    for offset in offsets:
        columns = np.clip(rows + offset, 0, n - 1)
        logits[rows, columns] += strength * rng.uniform(0.8, 1.2)


def _block(logits: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    n = logits.shape[0]
    segments = int(rng.integers(2, 4))
    cuts = np.sort(rng.choice(np.arange(3, n - 2), size=segments - 1, replace=False))
    edges = [0, *cuts.tolist(), n]
    for start, stop in zip(edges[:-1], edges[1:]):
        logits[start:stop, start:stop] += strength * 0.8


def generate_map(
    kind: str, length: int, rng: np.random.Generator, *, noise: float = 0.6, strength: float = 5.0
) -> np.ndarray:
    """One ``length x length`` float32 map of class ``kind``; rows sum to 1."""
    if kind not in PATTERN_CLASSES:
        raise TicketlabError(f"unknown attention pattern {kind!r} (classes: {', '.join(PATTERN_CLASSES)})")
    if length < 8:
        raise TicketlabError(f"generated maps need at least 8 tokens, got {length}")
    logits = rng.normal(0.0, noise, size=(length, length))
    if kind == "vertical":
        _vertical(logits, rng, strength)
    elif kind == "diagonal":
        _diagonal(logits, rng, strength)
    elif kind == "vertical+diagonal":
        _vertical(logits, rng, 0.8 * strength)
        _diagonal(logits, rng, 0.8 * strength)
    elif kind == "block":
        _block(logits, rng, strength)
    elif rng.random() < 0.5:  # heterogeneous, speckled: unstructured, peakier rows than the noise alone
        logits += rng.normal(0.0, 1.5, size=(length, length))
    else:  # heterogeneous, diffuse: broad attention with a weak, row-by-row varying preference
        logits *= 0.5
        logits += np.outer(rng.normal(0.0, 0.5, size=length), rng.normal(0.0, 1.0, size=length))
    return _softmax_rows(logits).astype(np.float32)


def generate_maps(
    per_class: int,
    *,
    lengths: tuple[int, int] = (10, 32),
    seed: int = 0,
    noise: float = 0.6,
    classes: tuple[str, ...] = PATTERN_CLASSES,
) -> tuple[MapCollection, list[str]]:
    """``per_class`` maps of every class, lengths drawn uniformly from ``lengths`` (inclusive),
    shuffled; returns the maps (named ``syn<i>``) and their labels."""
    if per_class < 1:
        raise TicketlabError(f"maps per class must be at least 1, got {per_class}")
    low, high = lengths
    if not 8 <= low <= high:
        raise TicketlabError(f"lengths must satisfy 8 <= low <= high, got {lengths}")
    rng = np.random.default_rng(seed)
    kinds = [kind for kind in classes for _ in range(per_class)]
    order = rng.permutation(len(kinds))
    maps, labels = [], []
    for index in order:
        kind = kinds[index]
        maps.append(generate_map(kind, int(rng.integers(low, high + 1)), rng, noise=noise))
        labels.append(kind)
    names = [f"syn{i:04d}" for i in range(len(maps))]
    return MapCollection(names, maps), labels

"""Attention patterns of heads, and how they spread over the heads a structured ticket keeps.

After all tickets winning (Prasanna et al. 2020, after Kovaleva et al. 2019): classify every head's
map on a sample of inputs, take each head's class as the majority over the inputs, then compare
the share of each class among the heads a ticket keeps with its share among the heads it prunes,
over seeds. Pure functions over plain data: predictions keyed by map id, and head masks as
``[layers, heads]`` boolean arrays.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ticketlab.data.attention_maps import PATTERN_CLASSES, parse_map_id
from ticketlab.errors import TicketlabError

Head = tuple[int, int]  # (layer, head)


@dataclass(frozen=True)
class HeadPattern:
    """A head's class (the majority over inputs) and its votes."""

    layer: int
    head: int
    pattern: str
    votes: dict[str, int]

    @property
    def agreement(self) -> float:
        """The share of inputs on which the head got its majority class."""
        return self.votes[self.pattern] / sum(self.votes.values())


def head_patterns(
    predictions: Mapping[str, str], classes: Sequence[str] = PATTERN_CLASSES
) -> dict[Head, HeadPattern]:
    """Each head's majority class over its inputs, from ``{map id: class}`` (ties go to the class
    listed first in ``classes``, so the result never depends on input order)."""
    votes: dict[Head, Counter] = defaultdict(Counter)
    for name, label in predictions.items():
        parsed = parse_map_id(name)
        if parsed is None:
            raise TicketlabError(f"{name!r} is not a map id of the form e<example>-l<layer>-h<head>")
        _, layer, head = parsed
        votes[layer, head][label] += 1
    order = {c: i for i, c in enumerate(classes)}
    result = {}
    for (layer, head), counter in sorted(votes.items()):
        pattern = min(counter, key=lambda c: (-counter[c], order.get(c, len(order)), c))
        result[layer, head] = HeadPattern(layer, head, pattern, dict(counter))
    return result


def pattern_grid(patterns: Mapping[Head, HeadPattern]) -> np.ndarray:
    """The classes as a ``[layers, heads]`` array of strings."""
    layers = 1 + max(layer for layer, _ in patterns)
    heads = 1 + max(head for _, head in patterns)
    grid = np.full((layers, heads), "", dtype=object)
    for (layer, head), p in patterns.items():
        grid[layer, head] = p.pattern
    if (grid == "").any():
        raise TicketlabError("the predictions do not cover every head of the model")
    return grid


def shares(labels: Iterable[str], classes: Sequence[str] = PATTERN_CLASSES) -> dict[str, float]:
    """The fraction of each class among ``labels`` (NaN for all when there are none)."""
    counter = Counter(labels)
    total = sum(counter.values())
    return {c: (counter[c] / total if total else float("nan")) for c in classes}


@dataclass(frozen=True)
class ShareRow:
    """One ticket's kept or pruned heads: the class shares, mean and std over its masks (seeds)."""

    ticket: str
    group: str  # "kept" or "pruned"
    heads: float  # mean number of heads in the group
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]


def ticket_pattern_shares(
    grid: np.ndarray,
    tickets: Mapping[str, Sequence[np.ndarray]],
    classes: Sequence[str] = PATTERN_CLASSES,
) -> list[ShareRow]:
    """For each ticket (its head masks over seeds, ``True`` = kept), the share of each class among
    its kept and its pruned heads, mean and sample std over the masks; plus an ``all heads`` row."""
    rows = [
        ShareRow(
            "all heads",
            "all",
            float(grid.size),
            1,
            shares(grid.ravel(), classes),
            dict.fromkeys(classes, 0.0),
        )
    ]
    for name, masks in tickets.items():
        if not masks:
            raise TicketlabError(f"ticket {name!r} has no masks")
        for group, keep in (("kept", True), ("pruned", False)):
            per_seed, sizes = [], []
            for heads in masks:
                heads = np.asarray(heads, dtype=bool)
                if heads.shape != grid.shape:
                    raise TicketlabError(
                        f"ticket {name!r}: a head mask of shape {heads.shape} does not fit the model's "
                        f"{grid.shape[0]} layers x {grid.shape[1]} heads"
                    )
                chosen = grid[heads == keep]
                sizes.append(chosen.size)
                if chosen.size:
                    per_seed.append(shares(chosen, classes))
            mean = {
                c: float(np.mean([s[c] for s in per_seed])) if per_seed else float("nan") for c in classes
            }
            std = {
                c: float(np.std([s[c] for s in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0
                for c in classes
            }
            rows.append(ShareRow(name, group, float(np.mean(sizes)), len(masks), mean, std))
    return rows


@dataclass(frozen=True)
class PatternChange:
    layer: int
    head: int
    before: str
    after: str


def pattern_changes(
    before: Mapping[Head, HeadPattern], after: Mapping[Head, HeadPattern]
) -> list[PatternChange]:
    """The heads whose class differs between two models (e.g. pre-trained and fine-tuned)."""
    if set(before) != set(after):
        raise TicketlabError("the two models' predictions cover different heads")
    return [
        PatternChange(layer, head, before[layer, head].pattern, after[layer, head].pattern)
        for layer, head in sorted(before)
        if before[layer, head].pattern != after[layer, head].pattern
    ]


def transition_counts(
    before: Mapping[Head, HeadPattern],
    after: Mapping[Head, HeadPattern],
    classes: Sequence[str] = PATTERN_CLASSES,
) -> np.ndarray:
    """``counts[i, j]``: heads of class ``classes[i]`` before and ``classes[j]`` after."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for key, p in before.items():
        counts[index[p.pattern], index[after[key].pattern]] += 1
    return counts

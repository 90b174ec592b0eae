"""Structured masks from importance scores: nested super-ticket levels, iterative steps, and the
good / random / bad subnetworks of "all tickets winning".

Every selection walks the units in one order and prunes them one by one, skipping a head when it
is the last one left in its layer. Which order:

- ``winning``: least important first (stable: among equal scores the lower index goes first);
- ``losing``: most important first;
- ``random``: a seeded uniform permutation, so the counts are exact and nothing is drawn twice
  (the super-tickets code drew with replacement and so pruned fewer units than it said).

Because the order does not depend on the level, the masks of increasing levels are nested.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks.provenance import Provenance
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter

# Super tickets: head fractions 0.1 ... 0.8, each with round(10 p) of 12 FFN layers.
DEFAULT_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_FFN_RATIO = 10 / 12


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 0.5 to 0 and 2.5 to 2)."""
    return int(math.floor(value + 0.5 + 1e-9))


def ffn_layers_for_level(head_fraction: float, num_layers: int, ffn_ratio: float = DEFAULT_FFN_RATIO) -> int:
    """FFN layers pruned with ``head_fraction`` of the heads: round(p * ratio * layers).

    The default ratio 10/12 gives the paper's round(10 p) of BERT-base's 12 layers.
    """
    return min(num_layers, round_half_up(head_fraction * ffn_ratio * num_layers))


# -- unit orders --------------------------------------------------------------------------------
OrderFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _winning(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.sort(scores.reshape(-1).double(), stable=True).indices


def _losing(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = scores.reshape(-1).double()
    # Stable descending with ties broken by the lower index first, like winning.
    return torch.sort(-flat, stable=True).indices


def _random(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(scores.numel(), generator=generator)


PRUNING_ORDERS: dict[str, OrderFn] = {"winning": _winning, "losing": _losing, "random": _random}


def _check_kind(kind: str) -> OrderFn:
    try:
        return PRUNING_ORDERS[kind]
    except KeyError:
        raise TicketlabError(
            f"unknown ticket kind {kind!r} (choose from {', '.join(PRUNING_ORDERS)})"
        ) from None


def _prune_heads(keep: torch.Tensor, order: torch.Tensor, count: int, min_per_layer: int) -> torch.Tensor:
    """Prune ``count`` kept heads of ``keep`` [L, H] in ``order`` (flat indices), leaving ``min_per_layer``."""
    keep = keep.clone()
    flat = keep.view(-1)
    heads_per_layer = keep.shape[1]
    left = keep.sum(dim=1)
    pruned = 0
    for index in order.tolist():
        if pruned == count:
            break
        layer = index // heads_per_layer
        if not flat[index] or left[layer] <= min_per_layer:
            continue
        flat[index] = False
        left[layer] -= 1
        pruned += 1
    if pruned < count:
        raise TicketlabError(
            f"cannot prune {count} heads while keeping {min_per_layer} per layer (only {pruned} could go)"
        )
    return keep


def _prune_units(keep: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    keep = keep.clone()
    flat = keep.view(-1)
    candidates = [i for i in order.tolist() if flat[i]]
    if count > len(candidates):
        raise TicketlabError(f"cannot prune {count} FFN units: only {len(candidates)} are left")
    flat[candidates[:count]] = False
    return keep


def _ffn_layer_scores(ffn_scores: torch.Tensor) -> torch.Tensor:
    return ffn_scores if ffn_scores.dim() == 1 else ffn_scores.sum(dim=1)


def structured_mask_from_scores(
    head_scores: torch.Tensor,
    ffn_scores: torch.Tensor,
    num_heads_pruned: int,
    num_ffn_pruned: int,
    *,
    kind: str = "winning",
    seed: int = 0,
    min_heads_per_layer: int = 1,
    within: StructuredMask | None = None,
) -> StructuredMask:
    """Prune exactly ``num_heads_pruned`` heads and ``num_ffn_pruned`` FFN layers.

    ``head_scores`` ``[L, H]`` are ranked globally; FFN layers are ranked separately on
    ``ffn_scores`` (``[L]``, or ``[L, d_ff]`` summed per layer). ``within`` (a mask already held)
    restricts pruning to its surviving units, whose pruned units stay pruned (iterative pruning);
    the counts are then *additional* units.
    """
    order_fn = _check_kind(kind)
    layers, heads = head_scores.shape
    ffn_layer_scores = _ffn_layer_scores(ffn_scores)
    if ffn_layer_scores.shape != (layers,):
        raise TicketlabError(f"FFN scores of shape {tuple(ffn_scores.shape)} do not match {layers} layers")
    keep_heads = torch.ones(layers, heads, dtype=torch.bool)
    keep_ffn = torch.ones(layers, dtype=torch.bool)
    if within is not None:
        if within.ffn_granularity != "layer":
            raise TicketlabError(
                "structured selection prunes whole FFN layers; the held mask has FFN neurons"
            )
        keep_heads, keep_ffn = within.heads.clone(), within.ffn.clone()
    generator = torch.Generator().manual_seed(int(seed))
    head_order = order_fn(head_scores, generator)
    ffn_order = order_fn(ffn_layer_scores, generator)
    mask = StructuredMask(
        _prune_heads(keep_heads, head_order, int(num_heads_pruned), min_heads_per_layer),
        _prune_units(keep_ffn, ffn_order, int(num_ffn_pruned)),
    )
    mask.provenance = Provenance(
        method=f"importance-{kind}",
        method_params={
            "heads_pruned": int((~mask.heads).sum()),
            "ffn_pruned": int((~mask.ffn).sum()),
            "min_heads_per_layer": min_heads_per_layer,
        },
        scope="encoder",
        scheme="structured",
        target_sparsity=mask.head_sparsity(),
        seed=int(seed),
    )
    return mask


@dataclass(frozen=True)
class StructuredLevel:
    """One pruning level: a fraction of the heads and a number of whole FFN layers."""

    head_fraction: float
    num_heads_pruned: int
    num_ffn_pruned: int


def check_head_fractions(
    levels: Sequence[float], ffn_ratio: float, *, levels_name: str = "levels", ratio_name: str = "ffn_ratio"
) -> None:
    """One-line errors for a sweep's levels (fractions of the heads in (0, 1), no repeats) and its
    FFN ratio (a finite number at least 0); the names say which setting is wrong."""
    for level in levels:
        if not 0.0 < level < 1.0:
            raise TicketlabError(f"{levels_name} are fractions of the heads in (0, 1), got {level}")
    if len({round(lv, 9) for lv in levels}) < len(levels):
        raise TicketlabError(f"{levels_name} repeat: {list(levels)}")
    if not ffn_ratio >= 0 or not math.isfinite(ffn_ratio):
        raise TicketlabError(f"{ratio_name} must be a number at least 0, got {ffn_ratio}")


def structured_levels(
    num_layers: int,
    num_heads: int,
    head_fractions: Sequence[float] = DEFAULT_LEVELS,
    ffn_ratio: float = DEFAULT_FFN_RATIO,
    *,
    min_heads_per_layer: int = 1,
) -> list[StructuredLevel]:
    """The levels of a sweep: floor(p x all heads) heads with round(p x ratio x layers) FFN layers.

    A level that cannot keep ``min_heads_per_layer`` heads in every layer is refused.
    """
    levels = []
    for fraction in head_fractions:
        if not 0.0 <= fraction < 1.0:
            raise TicketlabError(f"head fractions must be in [0, 1), got {fraction}")
        count = int(math.floor(fraction * num_layers * num_heads + 1e-9))
        if count > num_layers * (num_heads - min_heads_per_layer):
            raise TicketlabError(f"pruning {fraction:.0%} of the heads would leave a layer without heads")
        levels.append(
            StructuredLevel(float(fraction), count, ffn_layers_for_level(fraction, num_layers, ffn_ratio))
        )
    return levels


def nested_structured_masks(
    head_scores: torch.Tensor,
    ffn_scores: torch.Tensor,
    *,
    kind: str = "winning",
    head_fractions: Sequence[float] = DEFAULT_LEVELS,
    ffn_ratio: float = DEFAULT_FFN_RATIO,
    seed: int = 0,
) -> dict[float, StructuredMask]:
    """Super-ticket masks at each head fraction (nested: a higher level prunes a superset)."""
    layers, heads = head_scores.shape
    masks = {}
    for level in structured_levels(layers, heads, head_fractions, ffn_ratio):
        mask = structured_mask_from_scores(
            head_scores, ffn_scores, level.num_heads_pruned, level.num_ffn_pruned, kind=kind, seed=seed
        )
        mask.provenance.method_params["head_fraction"] = level.head_fraction
        masks[level.head_fraction] = mask
    return masks


def level_steps(
    level_counts: Sequence[tuple[int, int]], heads_per_step: int, ffn_per_step: int = 1
) -> list[tuple[int, int]]:
    """The cumulative (heads, FFN layers) pruned after each step of an iterative sweep that passes
    exactly through every level's counts (the ticket grid's ``allwin-*`` levels).

    From one level's counts to the next (from none pruned to the first), the sweep takes as many
    steps as the heads need at ``heads_per_step`` each or the FFN layers at ``ffn_per_step`` each,
    whichever is more, and spreads both evenly over them (integer division): no step prunes more
    than ``heads_per_step`` heads or ``ffn_per_step`` FFN layers, every step prunes at least one
    unit, and the last step of a level lands on its counts. Levels with equal counts share a step.
    """
    if heads_per_step < 1 or ffn_per_step < 1:
        raise TicketlabError("a sweep prunes at least one head and one FFN layer per step")
    steps: list[tuple[int, int]] = []
    heads, ffn = 0, 0
    for target_heads, target_ffn in sorted(set(level_counts)):
        grow_heads, grow_ffn = target_heads - heads, target_ffn - ffn
        if grow_heads < 0 or grow_ffn < 0:
            raise TicketlabError(f"level counts must grow together, got {sorted(set(level_counts))}")
        count = max(-(-grow_heads // heads_per_step), -(-grow_ffn // ffn_per_step))
        steps += [(heads + grow_heads * i // count, ffn + grow_ffn * i // count) for i in range(1, count + 1)]
        heads, ffn = target_heads, target_ffn
    return steps


def iterative_step(
    current: StructuredMask,
    head_scores: torch.Tensor,
    ffn_scores: torch.Tensor,
    *,
    head_step_fraction: float = 0.1,
    ffn_step: int = 1,
    min_heads_per_layer: int = 1,
    num_heads: int | None = None,
) -> StructuredMask:
    """One step of iterative importance pruning (all tickets winning) on fresh scores.

    Prunes round(``head_step_fraction`` x all heads) more heads (14 of BERT-base's 144), or
    ``num_heads`` when given, and ``ffn_step`` more FFN layers, the least important among the
    survivors; fewer when fewer are left to prune.
    """
    layers, heads = current.heads.shape
    heads_left = int(current.heads.sum()) - layers * min_heads_per_layer
    wanted = round_half_up(head_step_fraction * layers * heads) if num_heads is None else int(num_heads)
    head_count = min(wanted, max(0, heads_left))
    ffn_count = min(ffn_step, int(current.ffn.sum()))
    mask = structured_mask_from_scores(
        head_scores,
        ffn_scores,
        head_count,
        ffn_count,
        kind="winning",
        min_heads_per_layer=min_heads_per_layer,
        within=current,
    )
    mask.provenance.method = "importance-iterative"
    return mask


# -- good / random / bad (all tickets winning) ----------------------------------------------------
def _draw(candidates: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` of the True positions of ``candidates`` (flat bool), uniformly without replacement."""
    positions = torch.nonzero(candidates.reshape(-1)).flatten()
    chosen = positions[torch.randperm(positions.numel(), generator=generator)[:count]]
    out = torch.zeros(candidates.numel(), dtype=torch.bool)
    out[chosen] = True
    return out.reshape(candidates.shape)


def _bad_units(good: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    size = int(good.sum())
    pruned = ~good
    if int(pruned.sum()) >= size:
        return _draw(pruned, size, generator)
    # Every pruned unit, topped up with random survivors to the good subnetwork's size.
    return pruned | _draw(good, size - int(pruned.sum()), generator)


def good_random_bad(
    good: StructuredMask | UnstructuredMask, seed: int = 0
) -> dict[str, StructuredMask | UnstructuredMask]:
    """The three subnetworks of the same size.

    - ``good``: the survivors of pruning (importance pruning of heads and FFNs, or magnitude
      pruning of weights);
    - ``random``: the same number of units drawn uniformly from the whole model;
    - ``bad``: the pruned units, topped up with random survivors to the same size (or, when more
      units were pruned than survived, a uniform draw from the pruned ones).

    Structured masks count heads and FFNs separately, and random draws ignore the
    one-head-per-layer rule (a layer may lose all its heads). Unstructured masks are drawn over
    all their matrices at once (global), as the magnitude variant of all tickets winning prunes.
    """
    generator = torch.Generator().manual_seed(int(seed))
    if isinstance(good, UnstructuredMask):
        names = good.names
        flat = torch.cat([good.tensors[n].reshape(-1) for n in names])
        sizes = [good.tensors[n].numel() for n in names]

        def unflatten(bits: torch.Tensor) -> UnstructuredMask:
            pieces = torch.split(bits, sizes)
            tensors = {n: p.reshape(good.tensors[n].shape).clone() for n, p in zip(names, pieces)}
            return UnstructuredMask(tensors, info=copy.deepcopy(good.info))

        random_mask = unflatten(_draw(torch.ones_like(flat), int(flat.sum()), generator))
        bad_mask = unflatten(_bad_units(flat, generator))
        scope, scheme = good.provenance.scope, "global"
    else:
        random_mask = StructuredMask(
            _draw(torch.ones_like(good.heads), int(good.heads.sum()), generator),
            _draw(torch.ones_like(good.ffn), int(good.ffn.sum()), generator),
        )
        bad_mask = StructuredMask(_bad_units(good.heads, generator), _bad_units(good.ffn, generator))
        scope, scheme = "encoder", "structured"
    result = {"good": good}
    for name, mask in (("random", random_mask), ("bad", bad_mask)):
        mask.provenance = Provenance(
            method=f"{name}-of:{good.provenance.method}",
            method_params={"reference_method": good.provenance.method},
            scope=scope,
            scheme=scheme,
            seed=int(seed),
            source_model=good.provenance.source_model,
        )
        result[name] = mask
    return result


# -- accounting and the stopping rule -------------------------------------------------------------
def kept_weight_fraction(mask: StructuredMask, adapter: EncoderAdapter, scope: str = "encoder") -> float:
    """Fraction of the weights in ``scope`` that a structured mask keeps (the x-axis of the phase
    transition): a head owns ``4 x hidden x head_dim`` weights (its Q, K, V rows and output
    columns), an FFN neuron ``2 x hidden``; the pooler and embeddings are never pruned."""
    total = sum(adapter.parameter(m.name).numel() for m in adapter.prunable_matrices(scope))
    hidden, d = adapter.hidden_size, adapter.head_dim
    heads_pruned = int((~mask.heads).sum())
    if mask.ffn.dim() == 1:
        neurons_pruned = int((~mask.ffn).sum()) * adapter.ffn_size
    else:
        neurons_pruned = int((~mask.ffn).sum())
    pruned = heads_pruned * 4 * hidden * d + neurons_pruned * 2 * hidden
    return 1.0 - pruned / total


def last_step_above(metrics: Sequence[float], reference: float, fraction: float = 0.9) -> int:
    """The all-tickets-winning stopping rule: the index of the last step before the first whose
    metric falls below ``fraction`` x ``reference`` (the fine-tuned full model's); -1 when even the
    first step falls below (keep the full model). A NaN metric (e.g. the correlation of constant
    predictions) counts as falling below."""
    threshold = fraction * reference
    for index, value in enumerate(metrics):
        if not value >= threshold:
            return index - 1
    return len(metrics) - 1

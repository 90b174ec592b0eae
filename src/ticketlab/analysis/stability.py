"""Stability of structured tickets across seeds (or tasks): survival maps and agreement statistics.

The data is a binary table, units (heads, or FFN layers) x raters (seeds): 1 when the unit
survives in that seed's mask. Three statistics, as the all-tickets-winning analysis uses:

- **Cochran's Q** tests whether the raters keep units at different *rates* (marginal
  homogeneity), chi-squared with k - 1 degrees of freedom. Masks pruned to the same exact count
  have identical rates, so Q is then 0 (p = 1) by construction: it only says something when the
  seeds kept different numbers of units (an iterative run that stopped at different steps).
- **Fleiss' kappa**: agreement beyond chance of many raters on categorical ratings.
- **Krippendorff's alpha** (nominal): 1 - observed / expected disagreement from the coincidence
  matrix; allows missing ratings (NaN).

Degenerate tables (every unit rated the same by everyone) give Q = 0 with p = 1, and NaN for
kappa and alpha (agreement beyond chance is undefined when there is no variation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write
from ticketlab.masks.structured import StructuredMask


def _binary_table(ratings: Any) -> np.ndarray:
    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2 or table.shape[1] < 2:
        raise TicketlabError(
            f"ratings must be units x raters with at least 2 raters, got shape {table.shape}"
        )
    if not np.isin(table, (0.0, 1.0)).all():
        raise TicketlabError("ratings must be binary (0 or 1)")
    return table


@dataclass(frozen=True)
class CochranQ:
    statistic: float
    df: int
    p_value: float


def cochran_q(ratings: Any) -> CochranQ:
    """Cochran's Q over a binary units x raters table (raters are the 'treatments')."""
    table = _binary_table(ratings)
    k = table.shape[1]
    columns = table.sum(axis=0)
    rows = table.sum(axis=1)
    total = table.sum()
    numerator = (k - 1) * (k * np.sum(columns**2) - total**2)
    denominator = k * total - np.sum(rows**2)
    if denominator == 0:  # every unit rated alike by all raters: no disagreement at all
        return CochranQ(0.0, k - 1, 1.0)
    q = float(numerator / denominator)
    return CochranQ(q, k - 1, float(stats.chi2.sf(q, k - 1)))


def fleiss_kappa_from_counts(counts: Any) -> float:
    """Fleiss' kappa from a units x categories table of how many raters chose each category
    (the same number of raters for every unit)."""
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(axis=1)
    if counts.ndim != 2 or not np.all(raters == raters[0]) or raters[0] < 2:
        raise TicketlabError(
            "Fleiss' kappa needs a units x categories count table with the same n >= 2 per unit"
        )
    n = raters[0]
    per_unit = (np.sum(counts**2, axis=1) - n) / (n * (n - 1))
    observed = per_unit.mean()
    shares = counts.sum(axis=0) / counts.sum()
    expected = np.sum(shares**2)
    if expected == 1.0:
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def fleiss_kappa(ratings: Any) -> float:
    """Fleiss' kappa of a binary units x raters table."""
    table = _binary_table(ratings)
    kept = table.sum(axis=1)
    return fleiss_kappa_from_counts(np.stack([table.shape[1] - kept, kept], axis=1))


def krippendorff_alpha_nominal(ratings: Any) -> float:
    """Krippendorff's alpha for nominal data, units x raters, NaN = missing rating.

    Built from the coincidence matrix: each unit with m >= 2 ratings adds, for every ordered
    pair of its ratings from different raters, 1 / (m - 1) to cell (value_a, value_b).
    """
    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2:
        raise TicketlabError(f"ratings must be units x raters, got shape {table.shape}")
    values = np.unique(table[~np.isnan(table)])
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in table:
        present = unit[~np.isnan(unit)]
        m = present.size
        if m < 2:
            continue  # unpairable
        counts = np.zeros(len(values))
        for value in present:
            counts[index[value]] += 1
        # Ordered pairs of distinct ratings: n_c n_k off the diagonal, n_c (n_c - 1) on it.
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    if n == 0:
        raise TicketlabError("Krippendorff's alpha needs at least one unit with two ratings")
    observed = coincidence.sum() - np.trace(coincidence)
    expected = (n**2 - np.sum(marginals**2)) / (n - 1)
    if expected == 0:
        return float("nan")
    return float(1.0 - observed / expected)


# -- structured masks across seeds -----------------------------------------------------------------
@dataclass
class UnitStability:
    """Survival of one kind of unit (heads or FFNs) across the raters."""

    survival: np.ndarray  # fraction of raters keeping each unit, in the units' own shape
    super_survivors: np.ndarray  # bool, kept by every rater
    cochran: CochranQ
    fleiss_kappa: float
    krippendorff_alpha: float
    raters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "raters": self.raters,
            "units": int(self.survival.size),
            "kept_by_all": int(self.super_survivors.sum()),
            "pruned_by_all": int((self.survival == 0).sum()),
            "cochran_q": self.cochran.statistic,
            "cochran_df": self.cochran.df,
            "cochran_p": self.cochran.p_value,
            "fleiss_kappa": _json_float(self.fleiss_kappa),
            "krippendorff_alpha": _json_float(self.krippendorff_alpha),
            "survival": self.survival.tolist(),
            "super_survivors": self.super_survivors.tolist(),
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def unit_stability(kept: Sequence[torch.Tensor | np.ndarray]) -> UnitStability:
    """Statistics of same-shaped keep-tables, one per rater (seed)."""
    if len(kept) < 2:
        raise TicketlabError("stability needs at least two masks (raters)")
    arrays = [np.asarray(k, dtype=bool) for k in kept]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise TicketlabError(f"masks differ in shape: {sorted({a.shape for a in arrays})}")
    table = np.stack([a.reshape(-1) for a in arrays], axis=1).astype(float)
    survival = table.mean(axis=1).reshape(shape)
    return UnitStability(
        survival=survival,
        super_survivors=(survival == 1.0),
        cochran=cochran_q(table),
        fleiss_kappa=fleiss_kappa(table),
        krippendorff_alpha=krippendorff_alpha_nominal(table),
        raters=len(arrays),
    )


def structured_stability(masks: Sequence[StructuredMask]) -> dict[str, UnitStability]:
    """Head and FFN stability of structured masks from several seeds (or tasks)."""
    granularities = {m.ffn_granularity for m in masks}
    if len(granularities) > 1:
        raise TicketlabError("the masks mix FFN granularities (layer and neuron)")
    return {
        "heads": unit_stability([m.heads for m in masks]),
        "ffn": unit_stability([m.ffn for m in masks]),
    }


def plot_survival(
    results: Mapping[str, UnitStability], path: str | os.PathLike, title: str = "survival across seeds"
) -> Path:
    """A PNG: the heads' survival heat-map (layers x heads, super-survivors starred) beside the FFNs'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = results["heads"].survival
    ffn = results["ffn"].survival
    ffn_map = ffn.reshape(-1, 1) if ffn.ndim == 1 else ffn
    figure, axes = plt.subplots(
        1,
        2,
        figsize=(3 + 0.45 * heads.shape[1] + 0.6 * min(ffn_map.shape[1], 12), 1.5 + 0.4 * heads.shape[0]),
        gridspec_kw={"width_ratios": [heads.shape[1], max(1, min(ffn_map.shape[1], 12))]},
        squeeze=False,
        layout="constrained",  # room for the title above the panels' own titles
    )
    for axis, data, name in ((axes[0, 0], heads, "heads"), (axes[0, 1], ffn_map, "FFN")):
        image = axis.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axis.set_title(name)
        axis.set_yticks(range(data.shape[0]))
        if data.shape[1] <= 32:
            for (row, column), value in np.ndenumerate(data):
                if value == 1.0:
                    axis.text(column, row, "*", ha="center", va="center", color="black")
    axes[0, 0].set_xlabel("head")
    axes[0, 0].set_ylabel("layer")
    axes[0, 1].set_xlabel("neuron" if ffn.ndim == 2 else "")
    axes[0, 1].set_xticks([] if ffn.ndim == 1 else axes[0, 1].get_xticks())
    figure.colorbar(image, ax=axes[0, :].tolist(), label="fraction of seeds keeping the unit")
    figure.suptitle(title)

    def write(tmp: str) -> None:
        figure.savefig(tmp, format="png", dpi=100)

    try:
        atomic_write(path, write)
    finally:
        plt.close(figure)
    return Path(path)

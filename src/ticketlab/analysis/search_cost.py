"""What finding each ticket cost (steps, examples, wall time), from the mask files' headers.

TAMT masks record their mask-training steps; IMP masks the fine-tuning of every level before them.
One-shot methods (OMP, random) train nothing and record no cost. Masks of the same method, source
and sparsity (IMP's seeds) are averaged into one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SearchCost:
    """The recorded search cost of one mask file."""

    method: str
    source: str  # what it was found on: a task (IMP) or a text and objective (TAMT)
    sparsity: float
    steps: float | None
    examples: float | None
    wall_time_s: float | None
    path: str = ""


def search_cost_of(header: Mapping[str, Any], path: str | Path = "") -> SearchCost | None:
    """The cost a mask header records, or None when it records none."""
    provenance = header.get("provenance") or {}
    params = provenance.get("method_params") or {}
    cost = params.get("search_cost")
    if not cost:
        return None
    method = provenance.get("method", "unknown")
    if method == "tamt":
        source = f"{params.get('objective')} on {Path(str(params.get('text', '?'))).name}"
    else:
        source = str(params.get("task") or "")
    sparsity = provenance.get("target_sparsity")
    if sparsity is None and isinstance(header.get("sparsity"), int | float):
        sparsity = header["sparsity"]
    return SearchCost(
        method=method,
        source=source,
        sparsity=round(float(sparsity), 4) if sparsity is not None else float("nan"),
        steps=cost.get("steps"),
        examples=cost.get("examples"),
        wall_time_s=cost.get("wall_time_s"),
        path=str(path),
    )


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def summarize_search_costs(costs: Iterable[SearchCost]) -> list[dict[str, Any]]:
    """One row per (method, source, sparsity): mean steps, examples and wall time over its masks."""
    groups: dict[tuple, list[SearchCost]] = {}
    for cost in costs:
        groups.setdefault((cost.method, cost.source, cost.sparsity), []).append(cost)
    rows = []
    for (method, source, sparsity), found in sorted(groups.items()):
        rows.append(
            {
                "method": method,
                "source": source,
                "sparsity": sparsity,
                "steps": _mean([c.steps for c in found]),
                "examples": _mean([c.examples for c in found]),
                "wall_time_s": _mean([c.wall_time_s for c in found]),
                "masks": len(found),
                "files": [c.path for c in found],
            }
        )
    return rows


def search_cost_markdown(rows: list[dict[str, Any]]) -> str:
    """The results.md section (empty when no ticket records its cost)."""
    if not rows:
        return ""

    def number(value: float | None, unit: str = "") -> str:
        if value is None:
            return "n/a"
        return f"{value:.1f}{unit}" if abs(value) < 100 and value != int(value) else f"{value:,.0f}{unit}"

    lines = [
        "### Search cost (what finding each ticket cost; mean over masks where several)\n",
        "| method | found on | sparsity | steps | examples | wall time | masks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['source']} | {r['sparsity']:.0%} | {number(r['steps'])} | "
            f"{number(r['examples'])} | {number(r['wall_time_s'], ' s')} | {r['masks']} |"
        )
    lines.append(
        "\nIMP: fine-tuning of every level before the mask (steps, examples seen, wall time with the "
        "evaluations); TAMT: mask-training steps and blocks. OMP and random tickets are one-shot "
        "(no training).\n"
    )
    return "\n".join(lines)

"""Pre-training loss against downstream score (TAMT's figure): points per ticket and correlations.

A *ticket* here is one (task, method, sparsity) cell of a grid: its downstream score is the mean
over the seeds, its pre-training loss the mean over the masks those seeds fine-tuned (one mask
for OMP and TAMT, one per seed for random and IMP tickets). The correlation over a task's tickets
is Pearson's r and Spearman's rho (``scipy.stats``), with their two-sided p-values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ticketlab.analysis.aggregate import FULL_MODEL, Cell

LOSSES = ("kd_loss", "mlm_loss")
MIN_POINTS = 3  # two points always lie on a line: r = +-1 says nothing


@dataclass(frozen=True)
class TicketLoss:
    """The pre-training losses of the mask one fine-tuning result (task, method, sparsity, seed) used."""

    task: str
    method: str
    sparsity: float
    seed: int
    kd_loss: float
    kd_kind: str
    mlm_loss: float | None = None
    mlm_reason: str | None = None


@dataclass(frozen=True)
class LossScorePoint:
    """One ticket of the scatter: mean downstream score over seeds against mean pre-training loss."""

    task: str
    method: str
    sparsity: float
    metric: str
    score: float
    score_std: float
    seeds: int
    kd_loss: float
    kd_kind: str
    mlm_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_score_points(cells: Iterable[Cell], losses: Iterable[TicketLoss]) -> list[LossScorePoint]:
    """Join aggregated cells with the losses of their masks (cells without losses are left out)."""
    by_cell: dict[tuple, list[TicketLoss]] = {}
    for loss in losses:
        by_cell.setdefault((loss.task, loss.method, round(loss.sparsity, 6)), []).append(loss)
    points = []
    for cell in cells:
        found = by_cell.get((cell.task, cell.method, round(cell.sparsity, 6)))
        if cell.method == FULL_MODEL or not found:
            continue
        mlm = [f.mlm_loss for f in found]
        points.append(
            LossScorePoint(
                task=cell.task,
                method=cell.method,
                sparsity=cell.sparsity,
                metric=cell.metric,
                score=cell.mean,
                score_std=cell.std,
                seeds=len(cell.values),
                kd_loss=float(np.mean([f.kd_loss for f in found])),
                kd_kind=found[0].kd_kind,
                mlm_loss=None if any(m is None for m in mlm) else float(np.mean(mlm)),
            )
        )
    return sorted(points, key=lambda p: (p.task, p.method, p.sparsity))


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson's r and Spearman's rho of ``y`` on ``x``, with p-values; None with a reason when
    there are fewer than :data:`MIN_POINTS` points or one side is constant."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    result: dict[str, Any] = {
        "n": int(len(x)),
        "pearson": None,
        "pearson_p": None,
        "spearman": None,
        "spearman_p": None,
    }
    if len(x) < MIN_POINTS:
        return result | {"note": f"needs at least {MIN_POINTS} tickets, has {len(x)}"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return result | {"note": "undefined: the losses or the scores are all equal"}
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    return result | {
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
    }


def correlations(points: Sequence[LossScorePoint], mlm_reason: str | None = None) -> list[dict[str, Any]]:
    """Per task and loss (KD, MLM): the correlation over the task's tickets.

    The MLM entry of a task says ``available: false`` and why when its tickets have no MLM loss
    (``mlm_reason``: typically a model without an MLM head)."""
    out = []
    for task in sorted({p.task for p in points}):
        mine = [p for p in points if p.task == task]
        for loss in LOSSES:
            usable = [p for p in mine if getattr(p, loss) is not None]
            entry: dict[str, Any] = {"task": task, "loss": loss, "metric": mine[0].metric}
            if loss == "kd_loss":
                entry["kd_kind"] = mine[0].kd_kind
            if not usable:
                out.append(entry | {"available": False, "reason": mlm_reason or "no MLM loss measured"})
                continue
            stats = correlation([getattr(p, loss) for p in usable], [p.score for p in usable])
            out.append(entry | {"available": True, **stats})
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def correlation_title(entry: dict[str, Any]) -> str:
    """``Pearson r = 0.912, Spearman rho = 0.886 (n = 6)``, or why there is none."""
    if entry.get("pearson") is None:
        return f"no correlation: {entry.get('note') or entry.get('reason', 'n/a')}"
    return f"Pearson r = {_fmt(entry['pearson'])}, Spearman \u03c1 = {_fmt(entry['spearman'])} (n = {entry['n']})"


def lower_loss_worse_score(points: Sequence[LossScorePoint], loss: str = "kd_loss") -> list[dict[str, Any]]:
    """Pairs of tickets of one task and sparsity where the lower pre-training loss went with the
    worse downstream score (scores: higher is better), the worst gaps first.

    ``beyond_spread`` says whether the score gap exceeds the larger of the two tickets' standard
    deviations over seeds (otherwise the seeds cannot tell the two apart).
    """
    found = []
    for a in points:
        for b in points:
            la, lb = getattr(a, loss), getattr(b, loss)
            if (a.task, a.sparsity) != (b.task, b.sparsity) or la is None or lb is None:
                continue
            if la < lb and a.score < b.score:
                gap = b.score - a.score
                found.append(
                    {
                        "task": a.task,
                        "sparsity": a.sparsity,
                        "loss": loss,
                        "lower_loss": a.method,
                        "better_score": b.method,
                        "losses": [la, lb],
                        "scores": [a.score, b.score],
                        "score_gap": gap,
                        "beyond_spread": gap > max(a.score_std, b.score_std),
                    }
                )
    return sorted(found, key=lambda f: (f["task"], f["sparsity"], -f["score_gap"]))


def correlation_markdown(
    points: Sequence[LossScorePoint], entries: Sequence[dict[str, Any]], scale: float = 100.0
) -> str:
    """The results.md section: correlations per task and loss, then every ticket's losses and score."""
    if not points:
        return ""
    lines = ["### Pre-training loss against downstream score (one point per ticket: method x sparsity)\n"]
    lines += ["| task | loss | tickets | Pearson r (p) | Spearman \u03c1 (p) |", "|---|---|---|---|---|"]
    for e in entries:
        name = f"KD ({e['kd_kind']})" if e["loss"] == "kd_loss" else "MLM"
        if not e["available"]:
            lines.append(f"| {e['task']} | {name} | | not available: {e['reason']} | |")
            continue
        if e["pearson"] is None:
            lines.append(f"| {e['task']} | {name} | {e['n']} | {e.get('note')} | |")
            continue
        lines.append(
            f"| {e['task']} | {name} | {e['n']} | {_fmt(e['pearson'])} ({_fmt(e['pearson_p'], 3)}) | "
            f"{_fmt(e['spearman'])} ({_fmt(e['spearman_p'], 3)}) |"
        )
    lines += ["", "| task | method | sparsity | KD loss | MLM loss | dev score (mean ± std, x100) | seeds |"]
    lines.append("|---|---|---|---|---|---|---|")
    for p in points:
        lines.append(
            f"| {p.task} | {p.method} | {p.sparsity:.0%} | {p.kd_loss:.4f} | {_fmt(p.mlm_loss, 4)} | "
            f"{p.score * scale:.2f} ± {p.score_std * scale:.2f} | {p.seeds} |"
        )
    # TAMT's premise is that a lower loss means a better ticket: say where these results disagree.
    for loss, name in (("kd_loss", "KD"), ("mlm_loss", "MLM")):
        for f in lower_loss_worse_score(points, loss):
            spread = "beyond" if f["beyond_spread"] else "within"
            lines.append(
                f"\n**A lower loss did not give a better ticket:** {f['task']} at {f['sparsity']:.0%}, "
                f"{f['lower_loss']} has the lower {name} loss ({f['losses'][0]:.4f} vs {f['losses'][1]:.4f}) "
                f"but the worse dev score than {f['better_score']} ({f['scores'][0] * scale:.2f} vs "
                f"{f['scores'][1] * scale:.2f}, {spread} the seeds' spread)."
            )
    return "\n".join(lines) + "\n"

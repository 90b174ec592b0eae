"""Iterative pruning of a fine-tuned model *without retraining*, stopped by the all-tickets-winning
rule, resumable step by step.

Step 0 evaluates the fine-tuned full model on the dev set: its main metric is the reference. Each
later step asks a :class:`PruningSchedule` for the next mask (importance pruning re-scores the
heads and FFNs under the current mask; magnitude pruning ranks the fine-tuned weights inside it),
evaluates the fine-tuned model under that mask, and stops at the first step whose metric falls
below ``fraction`` (0.9) x the reference; the ticket is the previous step's mask. As in Prasanna et
al. (after Michel et al.), nothing is retrained between steps.

Every step is a step folder of a :class:`~ticketlab.experiments.store.RunDirectory`
(``step_00``, ``step_01``, ...) holding ``mask.safetensors``, ``results.json`` and whatever the
schedule writes (importance scores). A killed run resumes at the first unfinished step, and since
every step is deterministic given the fine-tuned weights, it ends with the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ticketlab.errors import TicketlabError
from ticketlab.experiments.store import RunDirectory
from ticketlab.io import read_json, write_json
from ticketlab.masks.io import Mask, load_mask, save_mask
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.pruning.importance import ImportanceScores
from ticketlab.pruning.structured import iterative_step, last_step_above
from ticketlab.training.metrics import json_safe

MASK_FILE = "mask.safetensors"
STEP_RESULTS = "results.json"
STOP_REASONS = ("threshold", "exhausted", "max_steps")


class PruningSchedule(Protocol):
    """How one pruning step goes from the current mask to the next."""

    def start_mask(self) -> Mask:
        """The mask of the full model (step 0)."""

    def can_prune(self, mask: Mask) -> bool:
        """Whether anything is left to prune under ``mask``."""

    def next_mask(self, mask: Mask, step: int, out: Path) -> Mask:
        """The mask of pruning step ``step`` (1, 2, ...) from ``mask``; may write files into ``out``."""

    def describe(self, mask: Mask) -> dict[str, Any]:
        """Facts about a mask for the step's results (units kept, weights remaining, ...)."""


EvaluateFn = Callable[[Mask], dict[str, float]]


def step_name(index: int) -> str:
    return f"step_{index:02d}"


@dataclass
class PruningTrace:
    """The outcome of iterative pruning: every step's record and which mask is the ticket."""

    metric: str
    reference: float
    fraction: float | None  # None: no stopping rule (pruned to the schedule's end)
    steps: list[dict[str, Any]]  # step 0 (the full model) first
    ticket_step: int  # index into steps of the mask kept (0: the full model)
    stop_reason: str  # one of STOP_REASONS

    @property
    def threshold(self) -> float | None:
        return None if self.fraction is None else self.fraction * self.reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference": self.reference,
            "fraction": self.fraction,
            "threshold": self.threshold,
            "ticket_step": self.ticket_step,
            "stop_reason": self.stop_reason,
            "steps": self.steps,
        }


def _load_step(path: Path) -> tuple[Mask, dict[str, Any]]:
    return load_mask(path / MASK_FILE), read_json(path / STEP_RESULTS)


def _finite(value: Any) -> float:
    return float("nan") if value is None else float(value)


def iterative_pruning(
    run: RunDirectory,
    schedule: PruningSchedule,
    evaluate: EvaluateFn,
    *,
    metric: str,
    fraction: float | None = 0.9,
    max_steps: int | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[PruningTrace, Mask]:
    """Prune step by step from ``schedule.start_mask()`` (the full model) until the stopping rule fires.

    ``evaluate(mask)`` returns the dev metrics of the fine-tuned model under ``mask``; ``metric``
    names the one the rule reads (greater is better). Stops at the first step below ``fraction`` x
    the step-0 metric (the ticket is the step before), when nothing is left to prune, or after
    ``max_steps`` steps (the ticket is then the last step). ``fraction=None`` turns the rule off:
    every step is still evaluated, and the ticket is the last step. Returns the trace and the
    ticket mask.
    """
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise TicketlabError(f"the stopping fraction must be in (0, 1], got {fraction}")
    if max_steps is not None and max_steps < 0:
        raise TicketlabError(f"max steps must be at least 0, got {max_steps}")

    def evaluated(mask: Mask, index: int, tmp: Path) -> dict[str, Any]:
        metrics = evaluate(mask)
        if metric not in metrics:
            raise TicketlabError(f"the evaluation returned no {metric!r} (it returned: {', '.join(metrics)})")
        record = {"step": index, "metric": metrics[metric], "metrics": metrics, **schedule.describe(mask)}
        save_mask(mask, tmp / MASK_FILE)
        write_json(tmp / STEP_RESULTS, json_safe(record))
        return record

    def _start(start: Mask, tmp: Path) -> tuple[Mask, dict[str, Any]]:
        return start, evaluated(start, 0, tmp)

    mask, record = run.run_step(step_name(0), lambda tmp: _start(schedule.start_mask(), tmp), load=_load_step)
    reference = _finite(record["metric"])
    if fraction is not None and not reference > 0:
        raise TicketlabError(
            f"the fine-tuned full model scores {metric} = {reference} on dev: the {fraction:g} stopping "
            "rule needs a positive reference (train longer, or pick another learning rate)"
        )
    records, masks = [record], [mask]
    stop_reason = ""
    while not stop_reason:
        index = len(records)
        if max_steps is not None and index > max_steps:
            stop_reason = "max_steps"
            break
        previous = masks[-1]
        if not run.is_done(step_name(index)) and not schedule.can_prune(previous):
            stop_reason = "exhausted"
            break

        def body(tmp: Path, previous: Mask = previous, index: int = index) -> tuple[Mask, dict[str, Any]]:
            new = schedule.next_mask(previous, index, tmp)
            return new, evaluated(new, index, tmp)

        mask, record = run.run_step(step_name(index), body, load=_load_step)
        records.append(record)
        masks.append(mask)
        echo(f"pruning step {index}: {metric} {_finite(record['metric']):.4f} (reference {reference:.4f})")
        if fraction is not None and not _finite(record["metric"]) >= fraction * reference:
            stop_reason = "threshold"
    # The rule over steps 1..n: the index of the last one before the first below the threshold.
    ticket = len(records) - 1
    if fraction is not None:
        ticket = 1 + last_step_above([_finite(r["metric"]) for r in records[1:]], reference, fraction)
    trace = PruningTrace(metric, reference, fraction, records, ticket, stop_reason)
    return trace, masks[ticket]


# -- pruning schedules ---------------------------------------------------------------------------
class ImportanceSchedule:
    """Re-score heads and FFN layers under the current mask and prune the least important.

    ``heads_per_step(total_heads)`` says how many heads a step prunes (fewer when fewer are left).
    """

    def __init__(
        self,
        score: Callable[[StructuredMask], ImportanceScores],
        full_mask: Callable[[], StructuredMask],
        *,
        heads_per_step: Callable[[int], int],
        ffn_per_step: int = 1,
        min_heads_per_layer: int = 0,
        weights_kept: Callable[[StructuredMask], float] | None = None,
    ):
        self.score = score
        self.full_mask = full_mask
        self.heads_per_step = heads_per_step
        self.ffn_per_step = ffn_per_step
        self.min_heads_per_layer = min_heads_per_layer
        self.weights_kept = weights_kept

    def start_mask(self) -> StructuredMask:
        return self.full_mask()

    def can_prune(self, mask: StructuredMask) -> bool:
        heads_left = int(mask.heads.sum()) - mask.heads.shape[0] * self.min_heads_per_layer
        heads = self.heads_per_step(mask.heads.numel()) > 0 and heads_left > 0
        return heads or (self.ffn_per_step > 0 and bool(mask.ffn.any()))

    def step_counts(self, mask: StructuredMask) -> tuple[int, int]:
        """Heads and FFN layers the next step prunes from ``mask`` (fewer when fewer are left)."""
        return self.heads_per_step(mask.heads.numel()), self.ffn_per_step

    def next_mask(self, mask: StructuredMask, step: int, out: Path) -> StructuredMask:
        scores = self.score(mask)
        scores.save(out / "scores.safetensors")
        num_heads, num_ffn = self.step_counts(mask)
        new = iterative_step(
            mask,
            scores.heads,
            scores.ffn,
            ffn_step=num_ffn,
            min_heads_per_layer=self.min_heads_per_layer,
            num_heads=num_heads,
        )
        new.provenance.method = "all-winning-importance"
        new.provenance.method_params.update(step=step, importance=scores.variant)
        return new

    def describe(self, mask: StructuredMask) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "heads_kept": int(mask.heads.sum()),
            "heads_total": mask.heads.numel(),
            "ffn_kept": int(mask.ffn.sum()),
            "ffn_total": mask.ffn.numel(),
        }
        if self.weights_kept is not None:
            facts["weights_remaining"] = self.weights_kept(mask)
        return facts


def pruned_counts(mask: StructuredMask) -> tuple[int, int]:
    """Heads and FFN units a structured mask prunes."""
    return int((~mask.heads).sum()), int((~mask.ffn).sum())


class TargetSchedule(ImportanceSchedule):
    """Importance pruning through fixed cumulative counts (see
    :func:`~ticketlab.pruning.structured.level_steps`): each step re-scores under the current mask
    and prunes the least important surviving heads and FFN layers up to the next (heads, FFN
    layers) target, so the steps land exactly on the targets. A layer may lose all its heads."""

    def __init__(
        self,
        score: Callable[[StructuredMask], ImportanceScores],
        full_mask: Callable[[], StructuredMask],
        targets: list[tuple[int, int]],
        *,
        weights_kept: Callable[[StructuredMask], float] | None = None,
    ):
        super().__init__(
            score, full_mask, heads_per_step=lambda _: 0, ffn_per_step=0, weights_kept=weights_kept
        )
        self.targets = [(int(h), int(f)) for h, f in targets]

    def _next_target(self, mask: StructuredMask) -> tuple[int, int] | None:
        heads, ffn = pruned_counts(mask)
        ahead = [t for t in self.targets if t[0] >= heads and t[1] >= ffn and t != (heads, ffn)]
        return ahead[0] if ahead else None

    def can_prune(self, mask: StructuredMask) -> bool:
        return self._next_target(mask) is not None

    def step_counts(self, mask: StructuredMask) -> tuple[int, int]:
        target = self._next_target(mask)
        if target is None:
            raise TicketlabError("the mask is already past the schedule's last target")
        heads, ffn = pruned_counts(mask)
        return target[0] - heads, target[1] - ffn


class MagnitudeSchedule:
    """Prune ``rate`` of the remaining weights per step (at least one) by global magnitude of the
    fine-tuned weights, inside the current mask."""

    def __init__(
        self,
        prune_to: Callable[[UnstructuredMask | None, float], UnstructuredMask],
        rate: float = 0.1,
    ):
        self.prune_to = prune_to
        self.rate = rate

    def start_mask(self) -> UnstructuredMask:
        return self.prune_to(None, 0.0)

    def can_prune(self, mask: UnstructuredMask) -> bool:
        return mask.num_kept() > 1  # a mask keeps at least one weight

    def count_after(self, mask: UnstructuredMask) -> int:
        """Weights pruned after one more step: the pruned ones plus ``rate`` of the kept (>= 1)."""
        return mask.num_pruned() + max(1, int(math.floor(self.rate * mask.num_kept())))

    def next_mask(self, mask: UnstructuredMask, step: int, out: Path) -> UnstructuredMask:
        total, count = mask.num_weights(), self.count_after(mask)
        # floor(total x sparsity) must give exactly ``count``: aim half a weight above it, so the
        # rounding error of count / total x total cannot drop it to count - 1.
        new = self.prune_to(mask, (count + 0.5) / total)
        new.provenance.method = "all-winning-magnitude"
        new.provenance.method_params = {"step": step, "rate": self.rate, "nested": True}
        return new

    def describe(self, mask: UnstructuredMask) -> dict[str, Any]:
        return {"sparsity": mask.sparsity, "weights_remaining": 1.0 - mask.sparsity}

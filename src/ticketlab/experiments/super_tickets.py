"""Super tickets (Liang et al. 2021): one-shot nested structured tickets and the phase transition.

For each seed, as in the paper (the seed's full fine-tune is both the reference and the source of
the importance scores):

1. ``full-seed<S>``: fine-tune the full pre-trained model (its weights are kept in ``model/``);
2. ``importance-seed<S>``: score every head and FFN of that model on the task's training data
   (``scores.safetensors``), and build the nested structured masks of every kind and level
   (``masks/<kind>-<level>.safetensors``; random: the same counts drawn without replacement, seeded);
3. ``ticket-<kind>-<level>-seed<S>``: rewind to the pre-trained weights with a fresh task head (the
   same initialisation as the full run's), fine-tune with the mask held: pruned heads and FFNs are
   gated off, their weights start at zero and receive no update.

Then ``results.json`` and ``phase_transition.png``: the dev score against the fraction of encoder
weights remaining for winning, random and losing tickets (mean and standard deviation over seeds),
the full model's band, and the super ticket (the winning level with the best mean).

Each step is a folder that appears only when finished (:class:`RunDirectory`), so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.errors import TicketlabError
from ticketlab.experiments.importance import SPLITS, ImportanceOptions, normalization_field, variant_field
from ticketlab.experiments.store import RunDirectory
from ticketlab.io import read_json, write_json
from ticketlab.pruning.structured import (
    DEFAULT_FFN_RATIO,
    DEFAULT_LEVELS,
    PRUNING_ORDERS,
    check_head_fractions,
    nested_structured_masks,
    structured_levels,
)
from ticketlab.training.metrics import json_safe

SCORES_FILE = "scores.safetensors"
MASKS_DIR = "masks"
MASKS_SUMMARY = "masks.json"
TICKET_FILE = "ticket.json"
PLOT_FILE = "phase_transition.png"


def mask_file_name(kind: str, level: float) -> str:
    return f"{kind}-{level:.2f}.safetensors"


@dataclass
class SuperTicketSpec:
    """A super-ticket experiment on one task. The run directory's identity is the hash of the
    non-default fields (``save_models`` excepted: it changes no result)."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    task: str = field(metadata={"help": "GLUE task or squad"})
    data_dir: str | None = field(default=None, metadata={"help": "local task data (default: the hub)"})
    levels: list[float] = field(
        default_factory=lambda: list(DEFAULT_LEVELS),
        metadata={
            "help": "fractions of all heads to prune, each with round(p x ffn_ratio x layers) FFN layers"
        },
    )
    kinds: list[str] = field(
        default_factory=lambda: ["winning", "random", "losing"],
        metadata={
            "help": "tickets: winning (least important pruned), random, losing (most important pruned)"
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "seeds: each has its own full fine-tune, importance scores and tickets"},
    )
    variant: str = variant_field("importance scoring rule")
    normalization: str = normalization_field()
    importance_split: str | None = field(
        default=None,
        metadata={"help": "data to score on: train or dev (default: the variant's paper)", "choices": SPLITS},
    )
    importance_samples: int | None = field(
        default=None,
        metadata={"help": "examples to score on (default: the fine-tuning subset of that split, if any)"},
    )
    ffn_ratio: float = field(
        default=DEFAULT_FFN_RATIO,
        metadata={
            "help": "FFN layers pruned per level = round(p x ratio x layers); 10/12 = the paper's round(10 p)"
        },
    )
    recipe: dict[str, Any] = field(default_factory=dict, metadata={"help": "fine-tuning recipe overrides"})
    save_models: bool = field(
        default=False,
        metadata={
            "help": "also keep every fine-tuned ticket's weights (model/ in its step)",
            "hashed": False,
        },
    )

    run_prefix = "super"

    def validate(self) -> None:
        from ticketlab.experiments.imp import check_recipe

        check_recipe(self.recipe)
        if not self.levels or not self.kinds or not self.seeds:
            raise TicketlabError("super tickets need at least one level, one kind and one seed")
        check_head_fractions(self.levels, self.ffn_ratio)
        unknown = [k for k in self.kinds if k not in PRUNING_ORDERS]
        if unknown:
            raise TicketlabError(
                f"unknown ticket kind {unknown[0]!r} (choose from {', '.join(PRUNING_ORDERS)})"
            )
        if len(set(self.seeds)) < len(self.seeds):
            raise TicketlabError(f"seeds repeat: {self.seeds}")
        self.importance_options().validate()

    def importance_options(self) -> ImportanceOptions:
        return importance_options_for(
            self.variant,
            self.recipe,
            normalization=self.normalization,
            split=self.importance_split,
            max_samples=self.importance_samples,
        )


def importance_options_for(
    variant: str,
    recipe: dict[str, Any],
    *,
    normalization: str = "l2",
    split: str | None = None,
    max_samples: int | None = None,
) -> ImportanceOptions:
    """How tickets fine-tuned with ``recipe`` are scored: by default on the examples they are
    fine-tuned on (train split) or evaluated on (dev), in batches of the recipe's size."""
    split = split or ImportanceOptions(variant=variant).resolved_split()
    if max_samples is None:
        max_samples = recipe.get("max_train_samples" if split == "train" else "max_eval_samples")
    return ImportanceOptions(
        variant=variant,
        normalization=normalization,
        split=split,
        max_samples=max_samples,
        train_subset=recipe.get("train_subset") or "first",
        batch_size=recipe.get("batch_size") or 32,
    )


# -- building blocks (also used by the ticket grid) ----------------------------------------------
def write_super_masks(
    model_dir: str | os.PathLike,
    task_name: str,
    out: str | os.PathLike,
    *,
    options: ImportanceOptions,
    kinds: Sequence[str],
    levels: Sequence[float],
    ffn_ratio: float,
    seed: int,
    source_model: str,
    tokenizer_source: str | None = None,
    data_dir: str | None = None,
    max_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score the fine-tuned model in ``model_dir`` on the task and write, under ``out``, the scores,
    the nested masks of every kind and level, and ``masks.json`` (their counts and the fraction of
    encoder weights each keeps). Returns what ``masks.json`` holds."""
    from ticketlab.experiments.importance import load_task_model, score_task_importance
    from ticketlab.masks import save_mask
    from ticketlab.models import EncoderAdapter, load_tokenizer
    from ticketlab.pruning.structured import kept_weight_fraction
    from ticketlab.training.tasks import get_task

    started = time.perf_counter()
    out = Path(out)
    task = get_task(task_name)
    model = load_task_model(str(model_dir), task)
    adapter = EncoderAdapter(model)
    tokenizer = load_tokenizer(tokenizer_source or str(model_dir))
    scores = score_task_importance(
        model,
        task.name,
        tokenizer,
        options,
        max_length=max_length,
        data_dir=data_dir,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    scores.info.update(model=str(model_dir), seed=seed)
    scores.save(out / SCORES_FILE)
    entries = []
    for kind in kinds:
        masks = nested_structured_masks(
            scores.heads, scores.ffn, kind=kind, head_fractions=levels, ffn_ratio=ffn_ratio, seed=seed
        )
        for level, mask in masks.items():
            mask.provenance.method_params.update(
                task=task.name, variant=scores.variant, ffn_ratio=ffn_ratio, scored_model=str(model_dir)
            )
            mask.provenance.source_model = source_model
            path = save_mask(mask, out / MASKS_DIR / mask_file_name(kind, level))
            entries.append(
                {
                    "kind": kind,
                    "level": level,
                    "file": str(path.relative_to(out)),
                    "heads_pruned": int((~mask.heads).sum()),
                    "ffn_pruned": int((~mask.ffn).sum()),
                    "weights_remaining": kept_weight_fraction(mask, adapter),
                }
            )
    summary = {
        "task": task.name,
        "variant": scores.variant,
        "num_examples": scores.num_examples,
        "split": scores.info.get("split"),
        "seconds": time.perf_counter() - started,
        "masks": entries,
    }
    write_json(out / MASKS_SUMMARY, summary)
    return summary


def ticket_facts(masks_summary: dict[str, Any], kind: str, level: float) -> dict[str, Any]:
    """The entry of ``masks.json`` for one kind and level."""
    for entry in masks_summary["masks"]:
        if entry["kind"] == kind and abs(entry["level"] - level) < 1e-9:
            return entry
    raise TicketlabError(f"no {kind} mask at level {level} among the scored masks")


# -- the pipeline -------------------------------------------------------------------------------
def _finetune_spec(spec: SuperTicketSpec, seed: int, **extra: Any):
    from ticketlab.experiments.finetune import FinetuneSpec

    return FinetuneSpec(
        model=spec.model, task=spec.task, data_dir=spec.data_dir, seed=seed, **spec.recipe, **extra
    )


def full_step(seed: int) -> str:
    return f"full-seed{seed}"


def importance_step(seed: int) -> str:
    return f"importance-seed{seed}"


def ticket_step(kind: str, level: float, seed: int) -> str:
    return f"ticket-{kind}-{level:.2f}-seed{seed}"


def _metric(results: dict[str, Any]) -> tuple[str, float]:
    """The main metric's best dev value (NaN when undefined, e.g. a correlation of constant predictions)."""
    metric = results.get("main_metric")
    best = results.get("best") or {}
    if metric not in best:
        raise TicketlabError(f"results for {results.get('task')} have no best value of {metric!r}")
    return metric, math.nan if best[metric] is None else float(best[metric])


def run_super_tickets(
    spec: SuperTicketSpec,
    out: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; returns the summary also written to
    ``out/results.json`` (and draws ``out/phase_transition.png``)."""
    from ticketlab.experiments.finetune import MODEL_DIR, run_finetune
    from ticketlab.models import EncoderAdapter, load_encoder

    spec.validate()
    adapter = EncoderAdapter(load_encoder(spec.model))
    # Checks every level fits the model (a layer keeps a head) before anything trains.
    structured_levels(adapter.num_layers, adapter.num_heads, spec.levels, spec.ffn_ratio)
    run = RunDirectory.open(spec, out)
    options = spec.importance_options()
    for seed in spec.seeds:
        if not run.is_done(full_step(seed)):
            echo(f"super tickets {spec.task}, seed {seed}: fine-tune the full model")
        run.run_step(
            full_step(seed),
            lambda tmp, seed=seed: run_finetune(
                _finetune_spec(spec, seed, save_model=True), tmp, cache_dir=cache_dir, quiet=quiet
            ),
        )
        if not run.is_done(importance_step(seed)):
            echo(f"super tickets {spec.task}, seed {seed}: {spec.variant} importance and masks")
        masks = run.run_step(
            importance_step(seed),
            lambda tmp, seed=seed: write_super_masks(
                run.step_path(full_step(seed)) / MODEL_DIR,
                spec.task,
                tmp,
                options=options,
                kinds=spec.kinds,
                levels=spec.levels,
                ffn_ratio=spec.ffn_ratio,
                seed=seed,
                source_model=spec.model,
                data_dir=spec.data_dir,
                max_length=spec.recipe.get("max_length"),
                cache_dir=cache_dir,
                quiet=quiet,
            ),
            load=lambda path: read_json(path / MASKS_SUMMARY),
        )
        for kind in spec.kinds:
            for level in spec.levels:
                name = ticket_step(kind, level, seed)
                if run.is_done(name):
                    continue
                facts = ticket_facts(masks, kind, level)
                mask_path = (run.step_path(importance_step(seed)) / facts["file"]).resolve()

                def ticket(tmp: Path, seed=seed, facts=facts, mask_path=mask_path) -> None:
                    # spec.model + a mask: run_finetune loads the pre-trained weights with a fresh
                    # task head (seeded as the full run's), zeroes and gates the pruned units.
                    results = run_finetune(
                        _finetune_spec(spec, seed, mask=str(mask_path), save_model=spec.save_models),
                        tmp,
                        cache_dir=cache_dir,
                        quiet=quiet,
                    )
                    metric, value = _metric(results)
                    record = {**facts, "seed": seed, "metric_name": metric, "metric": value}
                    write_json(tmp / TICKET_FILE, json_safe(record))

                run.run_step(name, ticket)
                done = read_json(run.step_path(name) / TICKET_FILE)
                echo(
                    f"super tickets {spec.task}, seed {seed}: {kind} p={level:g} ({facts['heads_pruned']} heads, "
                    f"{facts['ffn_pruned']} FFN layers, {facts['weights_remaining']:.1%} of weights): "
                    f"{done['metric_name']} {_format(done['metric'])}"
                )
    return summarize_super_tickets(spec, run.path)


def _format(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def summarize_super_tickets(spec: SuperTicketSpec, root: str | os.PathLike) -> dict[str, Any]:
    """The phase transition and the super ticket from the finished steps of a run directory; writes
    ``results.json`` and ``phase_transition.png``."""
    from ticketlab.analysis.phase_transition import (
        plot_phase_transition,
        summarize_phase_transition,
        super_ticket,
    )

    root = Path(root)
    full_values, records, metric_name = [], [], None
    for seed in spec.seeds:
        results_path = root / full_step(seed) / "results.json"
        if not results_path.exists():
            raise TicketlabError(f"{root}: the full model of seed {seed} has not finished")
        metric_name, value = _metric(read_json(results_path))
        full_values.append(value)
        for kind in spec.kinds:
            for level in spec.levels:
                path = root / ticket_step(kind, level, seed) / TICKET_FILE
                if path.exists():
                    record = read_json(path)
                    record["metric"] = math.nan if record["metric"] is None else record["metric"]
                    records.append(record | {"path": str(path.parent)})
    full = {
        "mean": float(np.mean(full_values)),
        "std": float(np.std(full_values, ddof=1)) if len(full_values) > 1 else 0.0,
        "values": full_values,
        "n": len(full_values),
    }
    points = summarize_phase_transition(records) if records else []
    counts = {(r["kind"], round(r["level"], 9)): r for r in records}
    point_dicts = []
    for point in points:
        facts = counts[point.kind, round(point.level, 9)]
        point_dicts.append(
            point.to_dict()
            | {
                "heads_pruned": facts["heads_pruned"],
                "ffn_pruned": facts["ffn_pruned"],
                "matching": point.mean >= full["mean"] - full["std"],
            }
        )
    best = None
    if any(p.kind == "winning" for p in points):
        winner = super_ticket(points)
        best = next(p for p in point_dicts if p["kind"] == "winning" and p["level"] == winner.level)
        best = best | {
            "masks": [
                str(root / importance_step(seed) / MASKS_DIR / mask_file_name("winning", winner.level))
                for seed in spec.seeds
            ]
        }
    plot = None
    if points:
        plot = str(
            plot_phase_transition(
                points,
                root / PLOT_FILE,
                metric_name=f"{spec.task} dev {metric_name}",
                full_score=(full["mean"], full["std"]),
                title=f"super tickets on {spec.task}: {len(spec.seeds)} seed(s), {spec.variant} importance",
            )
        )
    summary = {
        "task": spec.task,
        "metric": metric_name,
        "variant": spec.variant,
        "seeds": list(spec.seeds),
        "full": full,
        "points": point_dicts,
        "super_ticket": best,
        "tickets": records,
        "plot": plot,
    }
    summary = json_safe(summary)
    write_json(root / "results.json", summary)
    return summary


def super_ticket_records(root: str | os.PathLike) -> list[Any]:
    """The finished runs of a super-ticket run directory as the report's records: the full model
    (method ``full``) and each ticket as method ``super-<kind>`` at its head fraction."""
    from ticketlab.analysis.aggregate import FULL_MODEL, ResultRecord
    from ticketlab.training.tasks import get_task

    root = Path(root)
    task = get_task(read_json(root / "spec.json")["spec"]["task"]).name  # "STS-B" -> "stsb"
    records = []
    for path in sorted(root.glob("full-seed*/results.json")):
        metric, value = _metric(read_json(path))
        seed = int(path.parent.name.removeprefix("full-seed"))
        records.append(ResultRecord(task, FULL_MODEL, 0.0, seed, metric, value, str(path.parent)))
    for path in sorted(root.glob(f"ticket-*/{TICKET_FILE}")):
        ticket = read_json(path)
        value = math.nan if ticket["metric"] is None else ticket["metric"]
        records.append(
            ResultRecord(
                task,
                f"super-{ticket['kind']}",
                float(ticket["level"]),
                int(ticket["seed"]),
                ticket["metric_name"],
                value,
                str(path.parent),
            )
        )
    return records

"""All tickets are winning (Prasanna et al. 2020): iterative pruning of a fine-tuned BERT with the 0.9
stopping rule, then good, random and bad subnetworks of the same size retrained from the
pre-trained weights and compared with the full model, over seeds.

Per seed (``RUN_DIR/seed_<s>/``, each folder a finished step of the run store):

- ``finetune/``: the full model fine-tuned with seed ``s`` (``results.json``; ``model.safetensors``,
  the fine-tuned weights every pruning step reads);
- ``step_00/``, ``step_01/``, ...: iterative pruning without retraining
  (:mod:`ticketlab.experiments.iterative_pruning`). ``importance``: each step scores heads and FFNs
  on the dev set under the current mask (``prasanna2020``: ``|dL/dgate|`` per batch) and prunes
  the least important 10% of all heads (``max(1, floor(0.1 x heads))``, 14 of BERT-base's 144, as
  the paper's code) and one FFN layer. ``magnitude``: each step prunes 10% of the remaining weights
  of the scope by magnitude of the fine-tuned weights (one global ranking, the paper's, or per matrix). The dev metric of the pruned
  fine-tuned model decides when to stop: the ticket is the step before the first below 0.9 x the
  full model's;
- ``subnetworks/``: the good (the ticket), random and bad masks of the same size
  (:func:`ticketlab.pruning.structured.good_random_bad`, drawn with seed ``s``) and each one's dev
  score on the fine-tuned model *before* retraining;
- ``retrain_good/``, ``retrain_random/``, ``retrain_bad/``: each subnetwork fine-tuned from the
  pre-trained weights with a fresh task head (seed ``s``) and its mask held.

Structured subnetworks are retrained with their head/FFN gates on (so a pruned FFN layer loses its
output bias too, as in pruning) *and* their weights held at zero. The run's ``results.json`` and
``report/`` (Markdown, PNG, JSON) come from :mod:`ticketlab.analysis.winning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import check_recipe
from ticketlab.experiments.iterative_pruning import (
    ImportanceSchedule,
    MagnitudeSchedule,
    PruningTrace,
    iterative_pruning,
)
from ticketlab.experiments.store import RunDirectory, spec_to_dict
from ticketlab.experiments.task_probe import TaskProbe
from ticketlab.io import read_json, write_json
from ticketlab.masks import StructuredMask, UnstructuredMask, apply_structured_mask, load_mask, save_mask
from ticketlab.models.adapters import SCOPES
from ticketlab.pruning import SCHEMES
from ticketlab.pruning.importance import IMPORTANCE_VARIANTS, NORMALIZATIONS
from ticketlab.pruning.structured import DEFAULT_FFN_RATIO, good_random_bad
from ticketlab.training.metrics import json_safe

METHODS: tuple[str, ...] = ("importance", "magnitude")
SUBNETWORKS: tuple[str, ...] = ("good", "random", "bad")
TICKET_FILE = "ticket.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass
class WinningSpec:
    """An all-tickets-winning experiment on one task. ``seeds``, ``subnetworks`` and ``retrain`` are
    not part of the run's identity: adding seeds or subnetworks to a finished run extends it."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    task: str = field(metadata={"help": "GLUE task (sequence classification or STS-B regression)"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE data (default: the hub)"})
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "seeds: fine-tuning, pruning, subnetwork draws and retraining", "hashed": False},
    )
    method: str = field(
        default="importance",
        metadata={
            "help": "importance (heads and FFN layers) or magnitude (unstructured weights)",
            "choices": METHODS,
        },
    )
    importance: str = field(
        default="prasanna2020",
        metadata={
            "help": "importance variant (prasanna2020: |dL/dgate| per batch on dev)",
            "choices": tuple(sorted(IMPORTANCE_VARIANTS)),
        },
    )
    normalization: str = field(
        default="l2",
        metadata={
            "help": "per-layer normalisation of head scores: l2, minmax or none",
            "choices": NORMALIZATIONS,
        },
    )
    head_fraction: float = field(
        default=0.1, metadata={"help": "heads pruned per step: max(1, floor(fraction x all heads))"}
    )
    heads_per_step: int | None = field(
        default=None, metadata={"help": "heads pruned per step, instead of head_fraction"}
    )
    ffn_per_step: int = field(default=1, metadata={"help": "whole FFN layers pruned per step"})
    min_heads_per_layer: int = field(
        default=0, metadata={"help": "heads every layer keeps (0: a layer may lose all, as the paper)"}
    )
    magnitude_rate: float = field(
        default=0.1, metadata={"help": "magnitude: fraction of the remaining weights pruned per step"}
    )
    scope: str = field(default="encoder", metadata={"help": "magnitude: weights that can be pruned"})
    # Added with --protocol: at its default (the paper's global ranking) it stays out of the run's
    # hash, so run directories made before keep their names and open as they did.
    scheme: str = field(
        default="global", metadata={"help": "magnitude: one global ranking (the paper) or per-matrix"}
    )
    threshold: float = field(
        default=0.9,
        metadata={"help": "stop at the first step below this fraction of the full model's metric"},
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many pruning steps (default: the rule decides)"}
    )
    subnetworks: list[str] = field(
        default_factory=lambda: list(SUBNETWORKS),
        metadata={"help": "subnetworks to retrain: good, random, bad", "hashed": False},
    )
    retrain: bool = field(
        default=True, metadata={"help": "retrain the subnetworks (else stop after pruning)", "hashed": False}
    )
    recipe: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "fine-tuning recipe overrides (lr, epochs, ...)"}
    )

    run_prefix = "allwinning"

    def validate(self) -> None:
        from ticketlab.training.glue_task import GlueTask
        from ticketlab.training.tasks import get_task

        if not isinstance(get_task(self.task), GlueTask):
            raise TicketlabError(f"all tickets winning runs on GLUE tasks, not {self.task!r}")
        if self.method not in METHODS:
            raise TicketlabError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.importance not in IMPORTANCE_VARIANTS:
            raise TicketlabError(
                f"unknown importance variant {self.importance!r} (choose from {', '.join(IMPORTANCE_VARIANTS)})"
            )
        if self.normalization not in NORMALIZATIONS:
            raise TicketlabError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TicketlabError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        if not 0.0 < self.head_fraction < 1.0:
            raise TicketlabError(f"head fraction must be in (0, 1), got {self.head_fraction}")
        if self.heads_per_step is not None and self.heads_per_step < 0:
            raise TicketlabError(f"heads per step must be at least 0, got {self.heads_per_step}")
        if self.ffn_per_step < 0 or self.min_heads_per_layer < 0:
            raise TicketlabError("FFN layers per step and minimum heads per layer must be at least 0")
        if not 0.0 < self.magnitude_rate < 1.0:
            raise TicketlabError(f"magnitude rate must be in (0, 1), got {self.magnitude_rate}")
        if not 0.0 < self.threshold <= 1.0:
            raise TicketlabError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.scope not in SCOPES or self.scheme not in SCHEMES:
            raise TicketlabError(
                f"scope must be one of {', '.join(SCOPES)} and scheme one of {', '.join(SCHEMES)}, "
                f"got {self.scope!r} and {self.scheme!r}"
            )
        if self.max_steps is not None and self.max_steps < 0:
            raise TicketlabError(f"max steps must be at least 0, got {self.max_steps}")
        unknown = [s for s in self.subnetworks if s not in SUBNETWORKS]
        if unknown:
            raise TicketlabError(f"unknown subnetwork {unknown[0]!r} (choose from {', '.join(SUBNETWORKS)})")
        check_recipe(self.recipe)

    def finetune_spec(self, seed: int):
        from ticketlab.experiments.finetune import FinetuneSpec

        return FinetuneSpec(
            model=self.model, task=self.task, data_dir=self.data_dir, seed=seed, **self.recipe
        )

    def heads_pruned_per_step(self, total_heads: int) -> int:
        """Heads per importance step: ``heads_per_step``, else max(1, floor(fraction x heads)) as the
        paper's code (int(144 x 0.1) = 14)."""
        if self.heads_per_step is not None:
            return self.heads_per_step
        return heads_per_fraction(self.head_fraction, total_heads)


def heads_per_fraction(fraction: float, total_heads: int) -> int:
    """max(1, floor(fraction x heads)): the paper's code prunes int(144 x 0.1) = 14 heads a step."""
    return max(1, int(math.floor(fraction * total_heads + 1e-9)))


# -- the pipeline --------------------------------------------------------------------------------
def _results(path: Path) -> dict[str, Any]:
    return read_json(path / "results.json")


def run_seed(
    spec: WinningSpec,
    run: RunDirectory,
    seed: int,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One seed of the experiment under ``run.path / seed_<seed>``; returns its summary."""
    from accelerate.utils import set_seed
    from safetensors.torch import save_model

    from ticketlab.experiments.finetune import run_finetune
    from ticketlab.training.tasks import get_task

    folder = run.path / f"seed_{seed}"
    folder.mkdir(exist_ok=True)
    seed_run = RunDirectory(folder, spec)
    task = get_task(spec.task)
    finetune_spec = spec.finetune_spec(seed)

    def build_model() -> nn.Module:
        set_seed(seed)  # the same fresh task head for the full model and every retrained subnetwork
        return task.build_model(spec.model)

    def finetune(tmp: Path) -> dict[str, Any]:
        model = build_model()
        results = run_finetune(finetune_spec, tmp, model=model, cache_dir=cache_dir, quiet=quiet)
        save_model(model, str(tmp / MODEL_FILE))
        return results

    full = seed_run.run_step("finetune", finetune, load=_results)
    echo(f"seed {seed}: full model fine-tuned ({full['main_metric']} {_best(full):.4f})")
    probe = TaskProbe(
        finetune_spec,
        build_model,
        folder / "finetune" / MODEL_FILE,
        importance=spec.importance,
        normalization=spec.normalization,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    schedule = _schedule(spec, seed, probe, build_model)
    trace, ticket = iterative_pruning(
        seed_run,
        schedule,
        probe.evaluate,
        metric=full["main_metric"],
        fraction=spec.threshold,
        max_steps=spec.max_steps,
        echo=(lambda _: None) if quiet else echo,
    )
    write_json(folder / "pruning.json", json_safe(trace.to_dict()))
    save_mask(ticket, folder / TICKET_FILE)
    echo(
        f"seed {seed}: ticket at step {trace.ticket_step} ({trace.stop_reason}); "
        f"{_describe_short(trace.steps[trace.ticket_step])}"
    )

    def subnetworks(tmp: Path) -> dict[str, Any]:
        # All three are drawn and scored on the fine-tuned model (cheap); spec.subnetworks picks
        # which are retrained.
        record = {}
        for kind, mask in good_random_bad(ticket, seed=seed).items():
            save_mask(mask, tmp / f"{kind}.safetensors")
            metrics = probe.evaluate(mask)
            record[kind] = {
                "metric": metrics[full["main_metric"]],
                "metrics": metrics,
                **schedule.describe(mask),
            }
        write_json(tmp / "results.json", json_safe(record))
        return record

    pruned = seed_run.run_step("subnetworks", subnetworks, load=_results)
    retrained: dict[str, Any] = {}
    for kind in spec.subnetworks if spec.retrain else []:

        def retrain(tmp: Path, kind: str = kind) -> dict[str, Any]:
            mask = load_mask(folder / "subnetworks" / f"{kind}.safetensors")
            model = build_model()  # the pre-trained weights with a fresh task head
            gates = apply_structured_mask(model, mask) if isinstance(mask, StructuredMask) else None
            try:
                return run_finetune(
                    finetune_spec, tmp, model=model, mask=mask, cache_dir=cache_dir, quiet=quiet
                )
            finally:
                if gates is not None:
                    gates.remove()

        retrained[kind] = seed_run.run_step(f"retrain_{kind}", retrain, load=_results)
        echo(f"seed {seed}: {kind} subnetwork retrained ({_best(retrained[kind]):.4f})")
    return seed_summary(seed, full, trace, pruned, retrained)


def _best(results: dict[str, Any]) -> float:
    value = results.get("best", {}).get(results.get("main_metric"))
    return float("nan") if value is None else float(value)


def _describe_short(record: dict[str, Any]) -> str:
    if "heads_kept" in record:
        return (
            f"{record['heads_kept']}/{record['heads_total']} heads, "
            f"{record['ffn_kept']}/{record['ffn_total']} FFN layers"
        )
    return f"sparsity {record['sparsity']:.1%}"


def full_structured_mask(adapter: Any) -> StructuredMask:
    """Every head and FFN layer kept: step 0 of importance pruning."""
    mask = StructuredMask.full(adapter, "layer")
    mask.provenance.method = "full"
    return mask


def _schedule(spec: WinningSpec, seed: int, probe: TaskProbe, build_model: Callable[[], nn.Module]):
    if spec.method == "importance":
        from ticketlab.pruning.structured import kept_weight_fraction

        return ImportanceSchedule(
            probe.importance,
            lambda: full_structured_mask(probe.adapter),
            heads_per_step=spec.heads_pruned_per_step,
            ffn_per_step=spec.ffn_per_step,
            min_heads_per_layer=spec.min_heads_per_layer,
            weights_kept=lambda mask: kept_weight_fraction(mask, probe.adapter),
        )
    from ticketlab.pruning import prune

    pretrained: list[nn.Module] = []

    def prune_to(within: UnstructuredMask | None, sparsity: float) -> UnstructuredMask:
        if not pretrained:  # the weights the mask is fingerprinted against (retraining starts there)
            pretrained.append(build_model())
        params = {} if within is None else {"within": within}
        return prune(
            probe.model,
            "omp",
            sparsity,
            scope=spec.scope,
            scheme=spec.scheme,
            seed=seed,
            source_model=spec.model,
            pretrained=pretrained[0],
            **params,
        )

    return MagnitudeSchedule(prune_to, spec.magnitude_rate)


def level_subnetworks(
    run: RunDirectory,
    probe: TaskProbe,
    levels: Sequence[float],
    out: str | Path,
    *,
    ffn_ratio: float = DEFAULT_FFN_RATIO,
    head_fraction: float = 0.1,
    seed: int = 0,
    source_model: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Good, random and bad subnetworks at fixed sizes, with no stopping rule (the ticket grid's
    ``allwin-*`` methods, which compare methods at the same sizes).

    Level p prunes floor(p x all heads) heads and round(p x ``ffn_ratio`` x layers) FFN layers,
    the counts of super tickets (a layer may lose all its heads, as in all tickets winning).
    Iterative importance pruning of the probe's fine-tuned model (the steps of ``run``, re-scored on
    dev under the current mask, not retrained) passes through every level's counts, at most
    max(1, floor(``head_fraction`` x heads)) heads and one FFN layer a step
    (:func:`~ticketlab.pruning.structured.level_steps`). A level's good mask is the step that
    reaches its counts, so good masks are nested; random and bad are drawn from it with ``seed``
    (:func:`~ticketlab.pruning.structured.good_random_bad`). Writes the folder ``out`` atomically:
    ``<kind>-<level>.safetensors`` and ``masks.json`` (counts, weights remaining, the step and the
    good mask's dev metric before retraining); returns what ``masks.json`` holds.
    """
    from ticketlab.experiments.iterative_pruning import MASK_FILE, TargetSchedule, step_name
    from ticketlab.experiments.super_tickets import MASKS_SUMMARY, mask_file_name
    from ticketlab.io import write_directory
    from ticketlab.pruning.structured import kept_weight_fraction, level_steps, structured_levels

    adapter = probe.adapter
    sweep = structured_levels(adapter.num_layers, adapter.num_heads, levels, ffn_ratio, min_heads_per_layer=0)
    counts = {lv.head_fraction: (lv.num_heads_pruned, lv.num_ffn_pruned) for lv in sweep}
    total_heads = adapter.num_layers * adapter.num_heads
    schedule = TargetSchedule(
        probe.importance,
        lambda: full_structured_mask(adapter),
        level_steps(list(counts.values()), heads_per_fraction(head_fraction, total_heads)),
        weights_kept=lambda mask: kept_weight_fraction(mask, adapter),
    )
    trace, _ = iterative_pruning(
        run, schedule, probe.evaluate, metric=probe.main_metric, fraction=None, echo=echo
    )
    step_of = {
        (r["heads_total"] - r["heads_kept"], r["ffn_total"] - r["ffn_kept"]): r["step"] for r in trace.steps
    }

    def write(tmp: Path) -> dict[str, Any]:
        entries = []
        for level, count in counts.items():
            step = step_of[count]
            good = load_mask(run.step_path(step_name(step)) / MASK_FILE)
            good.provenance.source_model = source_model
            good.provenance.method_params.update(head_fraction=level, ffn_ratio=ffn_ratio)
            for kind, mask in good_random_bad(good, seed=seed).items():
                save_mask(mask, tmp / mask_file_name(kind, level))
                entries.append(
                    {
                        "kind": kind,
                        "level": level,
                        "file": mask_file_name(kind, level),
                        "heads_pruned": int((~mask.heads).sum()),
                        "ffn_pruned": int((~mask.ffn).sum()),
                        "weights_remaining": kept_weight_fraction(mask, adapter),
                        "step": step,
                        **({"pruned_metric": trace.steps[step]["metric"]} if kind == "good" else {}),
                    }
                )
        summary = {"metric": trace.metric, "reference": trace.reference, "seed": seed, "masks": entries}
        write_json(tmp / MASKS_SUMMARY, json_safe(summary))
        return summary

    return write_directory(out, write)


def seed_summary(
    seed: int,
    full: dict[str, Any],
    trace: PruningTrace,
    pruned: dict[str, Any],
    retrained: dict[str, Any],
) -> dict[str, Any]:
    """What one seed found, for the run's results.json and report."""
    metric = full["main_metric"]

    def scores(results: dict[str, Any]) -> dict[str, Any]:
        return {
            "best": results.get("best", {}).get(metric),
            "final": results.get("final", {}).get(metric),
            "best_step": results.get("best_step"),
            "best_metrics": results.get("best", {}),
        }

    return {
        "seed": seed,
        "metric": metric,
        "full": scores(full),
        "pruning": trace.to_dict(),
        "ticket": {k: v for k, v in trace.steps[trace.ticket_step].items() if k != "metrics"},
        "subnetworks": {
            kind: {
                **{k: v for k, v in record.items() if k != "metrics"},
                "pruned_metric": record.get("metric"),
                **({"retrained": scores(retrained[kind])} if kind in retrained else {}),
            }
            for kind, record in pruned.items()
        },
    }


def run_all_winning(
    spec: WinningSpec,
    out: str | Path,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``, every seed; returns what it writes to
    ``out/results.json``: the spec and each seed's summary, with the ticket files.
    :func:`ticketlab.analysis.winning.report_run` turns a finished run into its report."""
    spec.validate()
    run = RunDirectory.open(spec, out)
    seeds = [run_seed(spec, run, seed, cache_dir=cache_dir, quiet=quiet, echo=echo) for seed in spec.seeds]
    summary = {
        "kind": "all-winning",
        "task": spec.task,
        "model": spec.model,
        "method": spec.method,
        "metric": seeds[0]["metric"],
        "spec": spec_to_dict(spec),
        "seeds": seeds,
        "tickets": [f"seed_{s}/{TICKET_FILE}" for s in spec.seeds],
    }
    write_json(run.path / "results.json", json_safe(summary))
    return json_safe(summary)


__all__ = ["WinningSpec", "level_subnetworks", "run_all_winning", "run_seed", "seed_summary"]

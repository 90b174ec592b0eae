"""Multi-task learning with shared tickets (super tickets, MT-DNN style), and plain multi-task learning.

One shared pre-trained encoder and one freshly initialised head per GLUE task. Every epoch visits
every training batch of every task once, in a seeded random order, so each task comes up in
proportion to its data size (MT-DNN's sampling). With tickets, each task has a structured mask
(heads and FFN layers; a task without one uses the whole encoder): before a task's batch the
encoder's gates switch to that task's mask, so the heads and FFN layers outside its ticket compute
nothing and receive none of its gradient, and the task is evaluated through its own ticket. Without
masks it is plain multi-task training, the baseline.

What the gates do not stop: parameters shared by every unit of a layer (LayerNorms, the attention
output bias) train on every task, and AdamW keeps moving a weight by its momentum from other tasks'
batches; weights outside *every* ticket get no gradient at all. This is what ticket sharing means
in the super-tickets paper: a task's gradient reaches only its ticket.

``run_multitask(spec, out)`` trains once and writes ``out/results.json`` (per task: the metrics of
the evaluation with the best task average, and of the final one; batches per task; the tickets);
``compare_multitask`` sets a ticket-sharing run beside a plain one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.experiments.store import RunDirectory
from ticketlab.io import read_json, write_json
from ticketlab.masks import StructuredGates, StructuredMask, load_mask
from ticketlab.training.metrics import json_safe
from ticketlab.training.settings import check_settings, setting

AVERAGE = "average"  # the main metric of a multi-task run: the mean of the tasks' main metrics


@dataclass
class MultitaskSpec:
    """One multi-task training run (plain, or with a ticket per task)."""

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained encoder"})
    tasks: list[str] = field(metadata={"help": "GLUE tasks, one head each"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE data (default: the hub)"})
    masks: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "task -> structured mask file (its ticket); empty: plain multi-task training"},
    )
    seed: int = setting("seed", 0, note="the heads, dropout and the batch order")
    lr: float = setting("lr", 5e-5, note="AdamW, linear decay")
    batch_size: int = setting("batch_size", 32, note="every batch from one task")
    eval_batch_size: int | None = setting("eval_batch_size", None, note="default: the batch size")
    epochs: int = setting("epochs", 3, note="of every task's training data")
    max_length: int = setting("max_length", 128, note="longer examples are truncated")
    warmup_ratio: float = setting("warmup_ratio", 0.0)
    weight_decay: float = setting("weight_decay", 0.01, note="AdamW's")
    max_grad_norm: float = setting("max_grad_norm", 1.0)
    max_train_samples: int | None = setting("max_train_samples", None, note="of each task")
    max_eval_samples: int | None = setting("max_eval_samples", None)

    run_prefix = "multitask"

    def validate(self) -> None:
        from ticketlab.training.glue_task import GlueTask
        from ticketlab.training.tasks import get_task

        if len(self.tasks) < 1 or len({get_task(t).name for t in self.tasks}) != len(self.tasks):
            raise TicketlabError(f"tasks must be a non-empty list of distinct GLUE tasks, got {self.tasks}")
        for name in self.tasks:
            if not isinstance(get_task(name), GlueTask):
                raise TicketlabError(f"multi-task training runs GLUE tasks, not {name!r}")
        unknown = sorted(set(self.masks) - set(self.tasks))
        if unknown:
            raise TicketlabError(f"a mask is given for {unknown[0]!r}, which is not one of the tasks")
        for task, path in self.masks.items():
            if not Path(path).is_file():
                raise TicketlabError(f"mask file {path!r} (task {task}) does not exist")
        check_settings(self)


# -- model ---------------------------------------------------------------------------------------
class ClassificationHead(nn.Module):
    """A task head on the shared encoder, as Hugging Face's sequence classifiers: on the pooler
    output (BERT) when the encoder has a pre-trained pooler, else dense + tanh on the first token
    (RoBERTa, ELECTRA)."""

    def __init__(self, config: Any, num_labels: int, use_pooler: bool):
        super().__init__()
        hidden = config.hidden_size
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.use_pooler = use_pooler
        self.dense = None if use_pooler else nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, num_labels)
        for linear in (self.dense, self.out):
            if linear is not None:  # Hugging Face's initialisation of task heads
                nn.init.normal_(linear.weight, std=config.initializer_range)
                nn.init.zeros_(linear.bias)

    def forward(self, outputs: Any) -> torch.Tensor:
        if self.use_pooler:
            features = outputs.pooler_output
        else:
            features = torch.tanh(self.dense(self.dropout(outputs.last_hidden_state[:, 0])))
        return self.out(self.dropout(features))


class MultitaskModel(nn.Module):
    """A shared encoder and one head per task: ``model(task, **inputs)`` returns that task's logits."""

    def __init__(self, encoder: nn.Module, num_labels: Mapping[str, int]):
        super().__init__()
        from ticketlab.models import EncoderAdapter

        self.encoder = encoder
        use_pooler = EncoderAdapter(encoder).has_pooler()
        self.heads = nn.ModuleDict(
            {task: ClassificationHead(encoder.config, n, use_pooler) for task, n in num_labels.items()}
        )

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        return self.heads[task](self.encoder(**inputs))


class TaskView(nn.Module):
    """One task's view of a :class:`MultitaskModel` with the interface of a sequence classifier
    (``view(**batch).logits``), for the task's own prediction code."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, **inputs: torch.Tensor):
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        return SequenceClassifierOutput(logits=self.model(self.task, **inputs))


# -- batches -------------------------------------------------------------------------------------
class TaskMixture:
    """Every batch of every task once per epoch, in a seeded random order (so each task comes up in
    proportion to its number of batches); each batch is a mapping with its ``task`` added last."""

    def __init__(self, loaders: Mapping[str, Any], seed: int = 0):
        self.loaders = dict(loaders)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> list[str]:
        """The task of each batch of an epoch."""
        tasks = [task for task, loader in self.loaders.items() for _ in range(len(loader))]
        generator = torch.Generator().manual_seed(
            self.seed * 100_003 + (self.epoch if epoch is None else epoch)
        )
        return [tasks[i] for i in torch.randperm(len(tasks), generator=generator).tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iterators = {task: iter(loader) for task, loader in self.loaders.items()}
        for task in self.order():
            yield {**next(iterators[task]), "task": task}


def task_loss(
    model: nn.Module,
    batch: Mapping[str, Any],
    gates: StructuredGates | None,
    masks: Mapping[str, StructuredMask],
) -> torch.Tensor:
    """The loss of one task's batch, with that task's ticket switched on first (the whole encoder
    for a task without one): cross-entropy, or squared error for a one-output regression task."""
    task = batch["task"]
    if gates is not None:
        gates.set_mask(masks[task])
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k not in ("task", "labels")}
    logits = model(task, **inputs)
    labels = batch["labels"].to(device)
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def _load_masks(spec: MultitaskSpec, encoder: nn.Module) -> dict[str, StructuredMask]:
    """Each task's ticket; a task without one gets the whole encoder (in the tickets' FFN granularity)."""
    from ticketlab.models import EncoderAdapter

    adapter = EncoderAdapter(encoder)
    given = {}
    for task, path in spec.masks.items():
        mask = load_mask(path)
        if not isinstance(mask, StructuredMask):
            raise TicketlabError(f"{path} (task {task}) is not a structured (head/FFN) mask")
        if tuple(mask.heads.shape) != (adapter.num_layers, adapter.num_heads) or (
            mask.ffn_granularity == "neuron" and mask.ffn.shape[1] != adapter.ffn_size
        ):
            raise MaskMismatchError(
                f"{path} (task {task}) has heads {tuple(mask.heads.shape)} and FFN {tuple(mask.ffn.shape)}; "
                f"the model has {adapter.num_layers} x {adapter.num_heads} heads and FFN size {adapter.ffn_size}"
            )
        given[task] = mask
    granularities = {m.ffn_granularity for m in given.values()} or {"layer"}
    if len(granularities) > 1:
        raise TicketlabError(
            "the tickets mix whole FFN layers and FFN neurons; one set of gates serves all tasks"
        )
    granularity = granularities.pop()
    return {task: given.get(task) or StructuredMask.full(adapter, granularity) for task in spec.tasks}


def run_multitask(
    spec: MultitaskSpec,
    out: str | Path,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or return the finished run in ``out``); returns what ``out/results.json`` holds."""
    spec.validate()
    run = RunDirectory.open(spec, out)
    run.run_step("train", lambda tmp: _train(spec, tmp, cache_dir=cache_dir, quiet=quiet, echo=echo))
    results = read_json(run.step_path("train") / "results.json")
    write_json(run.path / "results.json", results)
    return results


def _train(spec: MultitaskSpec, out: Path, *, cache_dir: str | None, quiet: bool, echo) -> None:
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from ticketlab.experiments.store import versions
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.training.callbacks import JsonlLogger
    from ticketlab.training.loop import TrainConfig, default_accelerator, train
    from ticketlab.training.tasks import DataOptions, get_task

    started = time.perf_counter()
    accelerator = default_accelerator()
    set_seed(spec.seed)  # the heads' initialisation
    encoder = load_encoder(spec.model)
    tasks = {name: get_task(name) for name in spec.tasks}
    model = MultitaskModel(encoder, {name: task.info.num_labels for name, task in tasks.items()})
    masks = _load_masks(spec, encoder)
    gates = None
    if spec.masks:
        granularity = next(iter(masks.values())).ffn_granularity
        gates = StructuredGates(encoder, granularity)
    tokenizer = load_tokenizer(spec.model)
    options = DataOptions(
        max_length=spec.max_length,
        data_dir=spec.data_dir,
        cache_dir=cache_dir,
        max_train_samples=spec.max_train_samples,
        max_eval_samples=spec.max_eval_samples,
        quiet=quiet,
    )
    loaders, eval_data = {}, {}
    for index, (name, task) in enumerate(tasks.items()):
        loaders[name] = DataLoader(
            task.train_dataset(tokenizer, options),
            batch_size=spec.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(spec.seed * 1_000 + index),
            collate_fn=task.collate_fn(tokenizer),
        )
        eval_data[name] = {split: task.eval_data(split, tokenizer, options) for split in task.eval_splits}
    mixture = TaskMixture(loaders, seed=spec.seed)
    eval_batch_size = spec.eval_batch_size or spec.batch_size

    def evaluate(prepared: nn.Module, accelerator: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, task in tasks.items():
            if gates is not None:
                gates.set_mask(masks[name])  # each task is evaluated through its own ticket
            view = TaskView(prepared, name)
            predictions = {
                split: task.predict(view, data, accelerator, batch_size=eval_batch_size, quiet=quiet)
                for split, data in eval_data[name].items()
            }
            for metric, value in task.metrics(predictions).items():
                metrics[f"{name}/{metric}"] = value
        mains = [metrics[f"{name}/{task.main_metric}"] for name, task in tasks.items()]
        metrics[AVERAGE] = float(sum(mains) / len(mains))
        return metrics

    config = TrainConfig(
        lr=spec.lr,
        epochs=spec.epochs,
        weight_decay=spec.weight_decay,
        warmup_ratio=spec.warmup_ratio,
        max_grad_norm=spec.max_grad_norm,
        seed=spec.seed,
        main_metric=AVERAGE,
        quiet=quiet,
    )
    result = train(
        model,
        mixture,
        evaluate,
        config,
        callbacks=[JsonlLogger(out / "log.jsonl", every=10)],
        accelerator=accelerator,
        loss_fn=lambda m, batch: task_loss(m, batch, gates, masks),
    )
    if gates is not None:
        gates.remove()
    echo(
        f"multi-task ({'tickets' if spec.masks else 'plain'}): best average {result.best.metrics[AVERAGE]:.4f}"
    )

    def per_task(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
        return {
            name: {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{name}/")}
            for name in tasks
        }

    results = {
        "kind": "multitask",
        "variant": "tickets" if spec.masks else "plain",
        "tasks": {
            name: {
                "main_metric": task.main_metric,
                "best": per_task(result.best.metrics)[name],
                "final": per_task(result.final.metrics)[name],
                "train_examples": len(loaders[name].dataset),
                "batches_per_epoch": len(loaders[name]),
                "ticket": None
                if name not in spec.masks
                else {
                    "mask": spec.masks[name],
                    "head_sparsity": masks[name].head_sparsity(),
                    "ffn_sparsity": masks[name].ffn_sparsity(),
                },
            }
            for name, task in tasks.items()
        },
        "best_average": result.best.metrics[AVERAGE],
        "final_average": result.final.metrics[AVERAGE],
        "best_step": result.best.step,
        "training_steps": result.steps,
        "evaluations": [record.to_dict() for record in result.history],
        "seed": spec.seed,
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    write_json(out / "results.json", json_safe(results))


def compare_multitask(plain: Mapping[str, Any], tickets: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per task (and the average): the main metric of plain multi-task training and of ticket
    sharing, at the evaluation with the best average, and the difference."""
    rows = []
    for task, record in plain["tasks"].items():
        metric = record["main_metric"]
        a, b = record["best"].get(metric), tickets["tasks"].get(task, {}).get("best", {}).get(metric)
        rows.append(
            {
                "task": task,
                "metric": metric,
                "plain": a,
                "tickets": b,
                "difference": None if a is None or b is None else b - a,
            }
        )
    a, b = plain["best_average"], tickets["best_average"]
    rows.append({"task": AVERAGE, "metric": "", "plain": a, "tickets": b, "difference": b - a})
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows
    ]


# -- tickets from super-ticket sweeps --------------------------------------------------------------
# The settings of the super-ticket sweeps ``multitask --super-tickets`` runs (SuperTicketSpec's
# fields but those the multi-task run sets: model, task, data, recipe), and its defaults of them.
SWEEP_FIELDS = (
    "levels",
    "kinds",
    "seeds",
    "variant",
    "normalization",
    "importance_split",
    "importance_samples",
    "ffn_ratio",
)
SWEEP_DEFAULTS: dict[str, Any] = {"kinds": ["winning"]}  # all the choice of a ticket needs
TICKETS_FILE = "tickets.json"
COMPARISON_FILE = "comparison.json"
COMPARISON_TABLE = "comparison.md"


@dataclass
class TicketChoice:
    """One task's ticket for multi-task training, chosen from its super-ticket sweep, with the
    scores that decided it. ``level`` None: the full model (no mask)."""

    task: str
    run_dir: str
    rule: str  # "best" (best mean winning level, if it beats the full model) or "fixed"
    level: float | None
    seed: int | None  # the sweep seed whose mask is used
    mask: str | None
    heads_pruned: int
    ffn_pruned: int
    weights_remaining: float
    metric: str
    full: dict[str, Any]  # mean, std, n of the full model over the sweep's seeds
    winning: list[dict[str, Any]]  # per level: mean, std, seeds, weights remaining
    reason: str

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _finite(value: Any) -> float:
    return math.nan if value is None else float(value)


def choose_super_ticket(
    run_dir: str | Path,
    *,
    level: float | None | str = "best",
    mask_seed: int | None = None,
    preferred_seed: int | None = None,
) -> TicketChoice:
    """The ticket of one task from a finished ``ticketlab super-tickets`` run.

    ``level="best"`` (the default rule, the original's ``construct_mtl_mask`` choice): the winning
    level with the best mean dev score over the sweep's seeds, if that mean is above the full
    model's; else the full model. A number: that winning level; None: the full model. The mask is
    the winning mask of seed ``mask_seed``; by default of ``preferred_seed`` (the multi-task run's
    seed) when the sweep has it, else of the sweep's first seed.
    """
    from ticketlab.analysis.phase_transition import PhasePoint, super_ticket
    from ticketlab.experiments.super_tickets import (
        MASKS_DIR,
        MASKS_SUMMARY,
        importance_step,
        mask_file_name,
        ticket_facts,
    )
    from ticketlab.training.tasks import get_task

    root = Path(run_dir)
    spec_path, results_path = root / "spec.json", root / "results.json"
    if not spec_path.exists() or read_json(spec_path).get("kind") != "SuperTicketSpec":
        raise TicketlabError(f"{root} is not a 'ticketlab super-tickets' run directory")
    if not results_path.exists():
        raise TicketlabError(f"{root} has no results.json: finish the super-ticket sweep first")
    spec = read_json(spec_path)["spec"]
    summary = read_json(results_path)
    task = get_task(spec["task"]).name
    full = summary["full"]
    winning = [
        p
        | {
            "mean": _finite(p["mean"]),
        }
        for p in summary["points"]
        if p["kind"] == "winning"
    ]
    scores = [
        {
            k: p[k]
            for k in ("level", "mean", "std", "seeds", "weights_remaining", "heads_pruned", "ffn_pruned")
        }
        for p in winning
    ]
    full_mean = _finite(full["mean"])
    if level == "best":
        rule = "best"
        if not winning:
            raise TicketlabError(f"{root} has no winning tickets to choose from")
        points = [
            PhasePoint(
                "winning", p["level"], p["weights_remaining"], p["mean"], _finite(p["std"]), p["seeds"]
            )
            for p in winning
            if not math.isnan(p["mean"])
        ]
        best = super_ticket(points) if points else None
        if best is not None and (math.isnan(full_mean) or best.mean > full_mean):
            chosen: float | None = best.level
            reason = (
                f"winning p={best.level:g} has the best mean {summary['metric']} ({best.mean:.4f}) over "
                f"{best.seeds} seed(s), above the full model's {full_mean:.4f}"
            )
        else:
            chosen = None
            top = (
                "no winning level has a score"
                if best is None
                else f"the best, p={best.level:g}, has {best.mean:.4f}"
            )
            reason = f"no winning level beats the full model ({full_mean:.4f}): {top}"
    else:
        rule = "fixed"
        chosen = None if level is None else float(level)
        if chosen is not None and not any(abs(p["level"] - chosen) < 1e-9 for p in winning):
            levels = ", ".join(f"{p['level']:g}" for p in winning) or "none"
            raise TicketlabError(f"{root}: no winning ticket at level {chosen:g} (levels: {levels})")
        reason = "the full model, as asked" if chosen is None else f"level {chosen:g}, as asked"
    seeds = list(spec["seeds"])
    if chosen is None:
        return TicketChoice(
            task, str(root), rule, None, None, None, 0, 0, 1.0, summary["metric"], full, scores, reason
        )
    if mask_seed is not None:
        seed = mask_seed
    else:
        seed = preferred_seed if preferred_seed in seeds else seeds[0]
    if seed not in seeds:
        raise TicketlabError(f"{root}: the sweep has no seed {seed} (seeds: {seeds})")
    step = root / importance_step(seed)
    facts = ticket_facts(read_json(step / MASKS_SUMMARY), "winning", chosen)
    mask = (step / MASKS_DIR / mask_file_name("winning", chosen)).resolve()
    if not mask.exists():
        raise TicketlabError(f"{mask} is missing from the sweep")
    return TicketChoice(
        task,
        str(root),
        rule,
        chosen,
        seed,
        str(mask),
        int(facts["heads_pruned"]),
        int(facts["ffn_pruned"]),
        float(facts["weights_remaining"]),
        summary["metric"],
        full,
        scores,
        reason,
    )


def sweep_model(run_dirs: list[str | Path], check_data: bool = True) -> tuple[str, str | None]:
    """The pre-trained model and data folder the sweeps share (they must agree)."""
    specs = [read_json(Path(r) / "spec.json")["spec"] for r in run_dirs]
    models = {s["model"] for s in specs}
    if len(models) != 1:
        raise TicketlabError(f"the super-ticket runs use different models ({', '.join(sorted(models))})")
    data_dirs = {s.get("data_dir") for s in specs}
    if len(data_dirs) > 1 and check_data:
        raise TicketlabError(
            f"the super-ticket runs read different data ({', '.join(sorted(map(str, data_dirs)))}); "
            "give --data-dir for the multi-task run"
        )
    return models.pop(), data_dirs.pop()


def ticket_comparison(
    plain: Mapping[str, Any], tickets: Mapping[str, Any], choices: Mapping[str, TicketChoice]
) -> dict[str, Any]:
    """The paper's table: per task the dev score of plain multi-task training and of ticket
    sharing, their averages, and the share of encoder weights each task's ticket keeps (averaged)."""
    rows = compare_multitask(plain, tickets)
    for row in rows:
        choice = choices.get(row["task"])
        if choice is not None:
            row.update(
                level=choice.level,
                heads_pruned=choice.heads_pruned,
                ffn_pruned=choice.ffn_pruned,
                weights_kept=choice.weights_remaining,
            )
    kept = [c.weights_remaining for c in choices.values()]
    rows[-1]["weights_kept"] = float(sum(kept) / len(kept))
    return {"rows": rows, "average_weights_kept": rows[-1]["weights_kept"]}


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    def fmt(value: Any, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"

    lines = [
        "| task | metric | ticket | weights kept | plain MTL | ticket sharing | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        if row["task"] == AVERAGE:
            ticket = ""
        elif row.get("level") is None:
            ticket = "full model"
        else:
            ticket = f"p={row['level']:g} ({row['heads_pruned']} heads, {row['ffn_pruned']} FFN)"
        lines.append(
            f"| {row['task']} | {row['metric']} | {ticket} | {fmt(row.get('weights_kept'))}% | "
            f"{fmt(row['plain'])} | {fmt(row['tickets'])} | {fmt(row['difference'], signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def run_multitask_from_super_tickets(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    recipe: Mapping[str, Any] | None = None,
    levels: Mapping[str, float | None] | None = None,
    mask_seed: int | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Choose each task's ticket from its sweep (``levels``: a fixed level, or None for the full
    model, per task; other tasks by the default rule), write the choice to ``out/tickets.json``,
    then train plain multi-task (``out/plain``) and with the shared tickets (``out/tickets``) and
    write the comparison (``out/comparison.json``, ``out/comparison.md``). Resumable: finished
    runs are reused; a changed choice is refused by the run directory rather than mixed in."""
    from ticketlab.training.tasks import get_task

    if not run_dirs:
        raise TicketlabError("give at least one super-ticket run directory")
    levels = {get_task(t).name: v for t, v in (levels or {}).items()}
    choices: dict[str, TicketChoice] = {}
    for run_dir in run_dirs:
        choice = choose_super_ticket(
            run_dir,
            mask_seed=mask_seed,
            preferred_seed=(recipe or {}).get("seed", 0),
            level=levels.get(_task_of(run_dir), "best"),
        )
        if choice.task in choices:
            raise TicketlabError(
                f"two super-ticket runs are for {choice.task}: {choices[choice.task].run_dir}, {run_dir}"
            )
        choices[choice.task] = choice
        echo(f"{choice.task}: {choice.reason}")
    unknown = sorted(set(levels) - set(choices))
    if unknown:
        raise TicketlabError(f"a level is given for {unknown[0]!r}, which has no super-ticket run")
    if data_dir is None:
        model, data_dir = sweep_model(run_dirs)
    else:
        model = sweep_model(run_dirs, check_data=False)[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "tickets": {task: c.to_dict() for task, c in choices.items()}}
    previous = out / TICKETS_FILE
    if previous.exists() and read_json(previous)["tickets"] != json_safe(record)["tickets"]:
        echo(f"{previous}: the choice changed; the finished runs it does not fit will be refused")
    write_json(previous, json_safe(record))
    masks = {task: c.mask for task, c in choices.items() if c.mask is not None}
    base = dict(recipe or {})
    spec_args = dict(model=model, tasks=list(choices), data_dir=data_dir, **base)
    plain = run_multitask(
        MultitaskSpec(**spec_args), out / "plain", cache_dir=cache_dir, quiet=quiet, echo=echo
    )
    if masks:
        tickets = run_multitask(
            MultitaskSpec(**spec_args, masks=masks),
            out / "tickets",
            cache_dir=cache_dir,
            quiet=quiet,
            echo=echo,
        )
    else:
        echo("no task has a ticket that beats its full model: ticket sharing is plain multi-task training")
        tickets = plain
    comparison = ticket_comparison(plain, tickets, choices) | {
        "tickets": record["tickets"],
        "model": model,
        "wall_seconds": {
            "plain": plain["wall_seconds"],
            "tickets": tickets["wall_seconds"] if masks else 0.0,
        },
    }
    comparison = json_safe(comparison)
    write_json(out / COMPARISON_FILE, comparison)
    text = comparison_markdown(comparison)
    (out / COMPARISON_TABLE).write_text(text)
    return comparison


def _task_of(run_dir: str | Path) -> str:
    from ticketlab.training.tasks import get_task

    path = Path(run_dir) / "spec.json"
    if not path.exists():
        raise TicketlabError(f"{run_dir} is not a 'ticketlab super-tickets' run directory")
    return get_task(read_json(path)["spec"]["task"]).name


def run_super_ticket_sweeps(
    model: str,
    tasks: list[str],
    out: str | Path,
    *,
    recipe: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Each task's super-ticket sweep into ``out/<task>`` (resumable), fine-tuned with the same
    optimisation settings as the multi-task run (the paper's advice); returns the run folders.

    ``settings``: fields of :class:`SuperTicketSpec` among :data:`SWEEP_FIELDS` (levels, seeds,
    kinds, the importance rule, ...); unset ones are :data:`SWEEP_DEFAULTS`' (winning tickets only:
    all the choice of a ticket needs), else the spec's own defaults.
    """
    from ticketlab.experiments.finetune import RECIPE_FIELDS
    from ticketlab.experiments.super_tickets import SuperTicketSpec, run_super_tickets
    from ticketlab.training.tasks import get_task

    stray = sorted(set(settings or {}) - set(SWEEP_FIELDS))
    if stray:
        raise TicketlabError(f"sweep setting {stray[0]!r} is not one of {', '.join(SWEEP_FIELDS)}")
    options = {**SWEEP_DEFAULTS, **(settings or {})}
    sweep_recipe = {k: v for k, v in recipe.items() if k in RECIPE_FIELDS and v is not None}
    folders = []
    for name in tasks:
        task = get_task(name).name
        spec = SuperTicketSpec(model=model, task=task, data_dir=data_dir, recipe=sweep_recipe, **options)
        folder = Path(out) / task
        run_super_tickets(spec, folder, cache_dir=cache_dir, quiet=quiet, echo=echo)
        folders.append(folder)
    return folders

"""Fine-tuning a model or a ticket on a task: the spec, and the pipeline that writes a run directory.

A run directory holds (all written atomically, results.json last):

- ``spec.json``: the :class:`FinetuneSpec`;
- ``log.jsonl``: the training curve and every evaluation (a live log);
- the final model's predictions on each evaluation split (GLUE: ``<split>_predictions.tsv``;
  SQuAD: ``predictions.json``, the official ``{question_id: answer_text}`` form);
- ``submission/<TASK>.tsv``: test-set predictions in the leaderboard format (``predict_test``);
- ``model/``: the trained model and its tokenizer (``save_model``), loadable with ``--model``;
- ``results.json``: best and final metrics, the step of the best, the ticket, the seed, timings
  and versions. Rerunning the same spec into the same directory returns it without training again.

``ticketlab finetune`` runs it as one step of the store protocol (``run_finetune_step``): the
folder appears, complete, only when the run finished. Pipelines call ``run_finetune`` inside
their own steps' temporary folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ticketlab.data.cache import file_sha256
from ticketlab.data.subset import subset_indices
from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write, read_json, require_path
from ticketlab.models.loading import check_max_length, max_positions
from ticketlab.training.metrics import json_safe
from ticketlab.training.settings import check_settings, setting

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SPEC_FILE = "spec.json"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
# The recipe settings whose default depends on the task: these (GLUE's, the papers' recipe) unless
# the task's ``Task.recipe`` says otherwise (SQuAD: max length 384, batch 16, lr 3e-5, 2 epochs).
BASE_RECIPE: dict[str, Any] = {
    "lr": 2e-5,
    "batch_size": 32,
    "epochs": 3,
    "max_length": 128,
    "doc_stride": None,
}


# The fields of FinetuneSpec a pipeline's recipe may override (IMP, super tickets, all tickets
# winning, a grid's recipe sections, their command lines' recipe flags); the pipeline sets the rest.
RECIPE_FIELDS = (
    "lr",
    "batch_size",
    "eval_batch_size",
    "epochs",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "eval_every",
    "max_train_samples",
    "max_eval_samples",
    "train_subset",
    "main_metric",
    "log_every",
)


@dataclass
class FinetuneSpec:
    """Everything that decides the outcome of one fine-tuning run (defaults: the papers' recipe).

    ``lr``, ``batch_size``, ``epochs``, ``max_length`` and ``doc_stride`` left as None take the
    task's recipe (:data:`BASE_RECIPE` updated with ``Task.recipe``) when the spec is created.
    """

    model: str = field(metadata={"help": "hub id or local directory of the pre-trained model"})
    task: str = field(
        metadata={
            "help": "task: a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) squad, or another registered one"
        }
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "local data in the original layout (GLUE: DIR/<TASK>/train.tsv ...; SQuAD: "
            "DIR/train-v1.1.json and DIR/dev-v1.1.json, or only dev-v1.1.json: split by article); "
            "default: the hub"
        },
    )
    mask: str | None = field(
        default=None, metadata={"help": "ticket mask file: pruned weights start at zero and stay zero"}
    )
    lr: float | None = setting("lr", None, note="AdamW, linear decay; default: 2e-5, SQuAD 3e-5")
    batch_size: int | None = setting("batch_size", None, note="training, per process; default: 32, SQuAD 16")
    eval_batch_size: int | None = setting("eval_batch_size", None, note="default: the batch size")
    epochs: int | None = setting("epochs", None, note="default: 3, SQuAD 2")
    max_length: int | None = setting(
        "max_length",
        None,
        note="longer examples are truncated; default: 128. SQuAD: tokens per window, longer contexts "
        "get several windows; default: 384",
    )
    doc_stride: int | None = field(
        default=None,
        metadata={"help": "SQuAD only: context tokens shared by consecutive windows (default: 128)"},
    )
    warmup_ratio: float = setting("warmup_ratio", 0.0, note="then a linear decay to 0")
    weight_decay: float = setting("weight_decay", 0.01, note="AdamW's, not on biases and LayerNorm weights")
    max_grad_norm: float = setting("max_grad_norm", 1.0)
    eval_every: int | None = setting("eval_every", None, note="always at each epoch end")
    seed: int = setting("seed", 0, note="head initialisation, dropout, shuffling")
    max_train_samples: int | None = setting("max_train_samples", None)
    max_eval_samples: int | None = setting("max_eval_samples", None)
    train_subset: str = field(
        default="first",
        metadata={
            "help": "which max_train_samples examples: first (file order) or random (a fixed draw, the same "
            "for every run; GLUE files are ordered by source, so the first N are biased)"
        },
    )
    predict_test: bool = field(
        default=False, metadata={"help": "also write test-set predictions in the leaderboard format"}
    )
    allow_fingerprint_mismatch: bool = field(
        default=False,
        metadata={"help": "apply the mask even if the model's weights differ from the mask's source model"},
    )
    main_metric: str | None = field(
        default=None, metadata={"help": "metric that picks the best evaluation (default: the task's)"}
    )
    log_every: int = setting("log_every", 10)
    save_model: bool = field(
        default=False,
        metadata={
            "help": "also save the trained model (safetensors) and its tokenizer in RUN_DIR/model, e.g. to "
            "score head importance or to shrink it"
        },
    )

    def __post_init__(self) -> None:
        task_recipe = self.recipe_defaults()
        for name, value in task_recipe.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.doc_stride is not None and task_recipe.get("doc_stride") is None:
            raise TicketlabError(f"doc stride applies to SQuAD's windows only, not to task {self.task!r}")

    def recipe_defaults(self) -> dict[str, Any]:
        """The defaults of the task-dependent recipe settings for this spec's task."""
        from ticketlab.training.tasks import get_task

        return {**BASE_RECIPE, **get_task(self.task).recipe}

    def train_config(self, *, main_metric: str | None = None, quiet: bool = False):
        """The training loop's recipe for this spec."""
        from ticketlab.training.loop import TrainConfig

        return TrainConfig(
            lr=self.lr,
            epochs=self.epochs,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            max_grad_norm=self.max_grad_norm,
            eval_every=self.eval_every,
            seed=self.seed,
            main_metric=main_metric or self.main_metric,
            quiet=quiet,
        )

    def validate(self) -> None:
        """Raise :class:`TicketlabError` on a value that cannot work, before anything is loaded."""
        if self.doc_stride is not None and self.doc_stride < 0:
            raise TicketlabError(f"doc stride must be at least 0, got {self.doc_stride}")
        check_settings(self)  # batch sizes, lr, epochs, lengths, warm-up, weight decay, seed, ...
        subset_indices(1, None, self.train_subset)  # an unknown subset is refused here
        self.train_config().validate()
        if self.data_dir is not None:
            require_path(self.data_dir, "data directory", directory=True)
        if self.mask is not None:
            require_path(self.mask, "mask file")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TicketlabError(f"unknown fine-tuning spec fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def digest(self) -> str:
        """A short hash of the fields that differ from the defaults (a stable name for the run)."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        defaults.update(self.recipe_defaults())
        changed = {k: v for k, v in self.to_dict().items() if k not in defaults or defaults[k] != v}
        return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (NaN becomes null)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(json_safe(data), handle, indent=2, allow_nan=False)
            handle.write("\n")

    atomic_write(path, write)


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from ticketlab import __version__

    return {
        "ticketlab": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def _read_finished(out: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The recorded spec (through the spec class, so fields added since that run compare at their
    defaults; a spec that does not load stays as it is) and results of a finished run in ``out``."""
    results_path = out / RESULTS_FILE
    if not results_path.exists():
        return None
    try:
        previous_spec = json.loads((out / SPEC_FILE).read_text())
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TicketlabError(f"{out} holds a finished run whose files cannot be read ({error})") from error
    with contextlib.suppress(TicketlabError, TypeError):
        previous_spec = FinetuneSpec.from_dict(previous_spec).to_dict()
    return previous_spec, results


def _finished_run(out: Path, spec: FinetuneSpec) -> dict[str, Any] | None:
    """The results of a finished run of the same spec in ``out``; an error if it holds another."""
    finished = _read_finished(out)
    if finished is None:
        return None
    previous_spec, results = finished
    if previous_spec != spec.to_dict():
        changed = sorted(k for k, v in spec.to_dict().items() if previous_spec.get(k) != v)
        raise TicketlabError(
            f"{out} already holds a finished run of a different spec (differs in: {', '.join(changed)}); "
            "choose another output directory"
        )
    return results


def same_finished_run(run_dir: str | Path, spec: FinetuneSpec) -> bool:
    """Whether ``run_dir`` holds a finished fine-tuning run of exactly ``spec`` (its results can
    stand for a run of ``spec``: ticketlab's fine-tuning is deterministic given the spec)."""
    finished = _read_finished(Path(run_dir))
    return finished is not None and finished[0] == spec.to_dict()


def _load_ticket(
    spec: FinetuneSpec, model, mask=None, mask_file: str | os.PathLike | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """The unstructured mask to hold on ``model``, the structured mask it came from (if any), and the
    ticket's facts for results.json. A mask object passed in is named by ``mask_file`` (the file
    it was saved to) or else by ``spec.mask``."""
    from ticketlab.masks import StructuredMask, load_mask
    from ticketlab.models import EncoderAdapter

    if mask is not None:
        source = mask_file if mask_file is not None else spec.mask
        facts: dict[str, Any] = {
            "mask": str(source) if source is not None else None,
            "mask_sha256": file_sha256(source) if source is not None and Path(source).is_file() else None,
        }
    elif spec.mask is None:
        return None, None, {"mask": None, "mask_sha256": None, "sparsity": 0.0, "scope": None, "scheme": None}
    else:
        mask = load_mask(spec.mask)
        facts = {"mask": spec.mask, "mask_sha256": file_sha256(spec.mask)}
    structured = None
    if isinstance(mask, StructuredMask):
        # Zeroing a pruned head's Q/K/V rows and output columns (and an FFN neuron's in row and out
        # column) removes it exactly and keeps it at zero; the gates (installed by run_finetune)
        # also switch off the output bias of a whole pruned FFN sub-layer, as shrink removes it.
        facts.update(
            head_sparsity=mask.head_sparsity(),
            ffn_sparsity=mask.ffn_sparsity(),
            heads_pruned=int((~mask.heads).sum()),
            ffn_pruned=int((~mask.ffn).sum()),
            ffn_granularity=mask.ffn_granularity,
            mask_kind="structured",
        )
        structured = mask
        mask = mask.to_unstructured(EncoderAdapter(model))
    if structured is None and (empty := mask.fully_pruned()):
        # Not an error (a ticket may prune a matrix away), but usually why a ticket cannot learn:
        # an emptied pooler makes the pooled output a constant, so the classifier sees no input.
        log.warning(
            "the mask prunes every weight of %s; the model may be unable to learn (an emptied "
            "pooler, for one, gives the task head a constant input)",
            ", ".join(empty),
        )
        facts["fully_pruned_matrices"] = empty
    if structured is None and (nearly := {n: s for n, s in mask.nearly_pruned().items() if s < 1.0}):
        log.warning(
            "the mask prunes %s almost entirely; the model may be unable to learn through it",
            ", ".join(f"{n} ({100 * s:.2f}%)" for n, s in nearly.items()),
        )
        facts["nearly_pruned_matrices"] = nearly
    provenance = mask.provenance
    facts.update(
        sparsity=mask.sparsity,
        num_pruned=mask.num_pruned(),
        num_weights=mask.num_weights(),
        scope=provenance.scope,
        scheme=provenance.scheme,
        mask_method=provenance.method,
        mask_source_model=provenance.source_model,
    )
    return mask, structured, facts


def save_trained_model(model: Any, tokenizer: Any, path: Path) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` into the folder ``path``, atomically."""
    from transformers.utils import logging as hf_logging

    from ticketlab.io import write_directory

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its one-shard "writing" bar is noise (and ignores --quiet)
    try:
        write_directory(path, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return path


def _pruned_nonzero(enforcer) -> int:
    """How many pruned weights are not exactly zero (0 unless enforcement failed)."""
    total = 0
    for name, param in enforcer.parameters.items():
        bits = enforcer.mask.tensors[name].to(param.device)
        total += int(param.detach()[~bits].ne(0).sum())
    return total


def _results_record(
    spec: FinetuneSpec,
    task: Any,
    result: Any,
    *,
    ticket: dict[str, Any],
    enforcer: Any,
    evaluator: Any,
    train_examples: int,
    max_length: int,
    accelerator: Any,
    files: list[str],
    wall_seconds: float,
) -> dict[str, Any]:
    """The contents of results.json."""
    return {
        **task.describe(),
        "main_metric": result.main_metric,
        "model": spec.model,
        "best": result.best.metrics if result.best else {},
        "best_step": result.best.step if result.best else None,
        "best_epoch": result.best.epoch if result.best else None,
        "final": result.final.metrics if result.final else {},
        "final_step": result.final.step if result.final else None,
        "evaluations": [record.to_dict() for record in result.history],
        **ticket,
        "pruned_nonzero": _pruned_nonzero(enforcer) if enforcer else 0,
        "seed": spec.seed,
        "max_length": max_length,
        "training_steps": result.steps,
        "epochs": result.epochs,
        "train_examples": train_examples,
        "eval_examples": {split: len(p) for split, p in evaluator.predictions.items()},
        "train_examples_seen": result.train_examples,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "train_examples_per_second": result.examples_per_second,
        "wall_seconds": wall_seconds,
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "device": str(accelerator.device),
        "files": files,
        "spec_digest": spec.digest(),
        "versions": versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_finetune(
    spec: FinetuneSpec,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    accelerator: Any = None,
    model: Any = None,
    mask: Any = None,
    mask_file: str | os.PathLike | None = None,
    record: dict[str, Any] | None = None,
    horizon_factor: int = 1,
) -> dict[str, Any]:
    """Fine-tune ``spec.model`` (with ``spec.mask`` held, if any) on ``spec.task``; write the run
    directory ``out_dir`` and return the contents of its results.json.

    Pipelines pass ``model`` to train a model they prepared (IMP's rewound weights with the kept
    task head, a control's permuted weights) instead of loading ``spec.model``; it is trained in
    place. ``mask`` (a mask object) stands in for ``spec.mask``; ``mask_file`` names the file it
    was saved to (results.json records it and its hash; a relative name is relative to
    ``out_dir``). ``record`` adds entries to results.json (a control's layer order, say).
    ``horizon_factor`` stretches the linear schedule's horizon to that many times the run's steps
    (IMP with BERT-Tickets' schedule: each level's spans all levels).
    """
    from accelerate.utils import set_seed

    from ticketlab.masks import apply_mask, apply_structured_mask
    from ticketlab.training.loop import default_accelerator
    from ticketlab.training.tasks import get_task

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"output {str(out)!r} exists and is not a directory")
    spec.validate()
    task = get_task(spec.task)
    if spec.main_metric is not None and spec.main_metric not in task.metric_names:
        raise TicketlabError(
            f"task {task.name} has no metric {spec.main_metric!r} (its metrics: {', '.join(task.metric_names)})"
        )
    if spec.predict_test and not task.test_splits:
        raise TicketlabError(f"task {task.name} has no test splits to predict")
    finished = _finished_run(out, spec)
    if finished is not None:
        return finished | {"skipped": True}

    wall_start = time.perf_counter()
    accelerator = accelerator or default_accelerator()
    set_seed(spec.seed)  # before the model: the task head's initialisation depends on it
    if model is None:
        model = task.build_model(spec.model)
    # A length the user set must fit the model; the task's default is fitted to it instead (below).
    if spec.max_length != spec.recipe_defaults()["max_length"]:
        check_max_length(model, spec.max_length, "--max-length")
    relative = mask_file is not None and not Path(mask_file).is_absolute()
    mask, structured, ticket = _load_ticket(spec, model, mask, out / mask_file if relative else mask_file)
    if relative:  # named relative to the run's folder, which moves when its step is published
        ticket["mask"] = str(mask_file)
    ticket.update(record or {})
    enforcer = (
        apply_mask(model, mask, allow_fingerprint_mismatch=spec.allow_fingerprint_mismatch) if mask else None
    )
    # A structured ticket also gets its gates, so a pruned unit is off exactly as the gated (and the
    # shrunk) model computes it; taken off again at the end.
    gates = apply_structured_mask(model, structured) if structured is not None else None
    try:
        return _train_and_record(
            spec,
            out,
            task,
            model,
            enforcer,
            ticket,
            accelerator,
            cache_dir,
            quiet,
            wall_start,
            horizon_factor,
        )
    finally:
        if gates is not None:
            gates.remove()


def run_finetune_step(
    spec: FinetuneSpec,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """``ticketlab finetune``: ``run_finetune`` as one step of the folder that holds ``out_dir``.

    The run is claimed, written aside and renamed into place when complete, so two commands with
    the same ``--out`` train it once (the second waits and reads the result), and a killed run
    leaves nothing that looks finished. A finished run of the same spec is returned (with
    ``skipped``); one of another spec, or a folder that is not a run, is refused in one line.
    """
    from ticketlab.experiments.steps import DONE, StepStore

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"output {str(out)!r} exists and is not a directory")
    spec.validate()
    finished = _finished_run(out, spec)
    if finished is not None:
        return finished | {"skipped": True}
    if out.is_dir() and any(out.iterdir()) and not (out / DONE).exists():
        raise TicketlabError(
            f"{out} is not empty and holds no finished run (a run killed by an older ticketlab, or other "
            "files): choose another --out, or empty it"
        )
    computed: list[dict[str, Any]] = []

    def body(tmp: Path) -> dict[str, Any]:
        computed.append(run_finetune(spec, tmp, cache_dir=cache_dir, quiet=quiet))
        return computed[0]

    store = StepStore(out.parent)
    try:
        results = store.run(
            out.name,
            body,
            load=lambda folder: read_json(folder / RESULTS_FILE),
            required=[RESULTS_FILE],
            adopt=lambda folder: (folder / RESULTS_FILE).is_file(),
        )
    except TicketlabError as error:
        log_file = store.failed_path(out.name) / LOG_FILE
        if log_file.is_file():
            raise TicketlabError(f"{error} (the failed run's log: {log_file})") from error
        raise
    if not computed:  # another process trained it meanwhile: the same spec?
        _finished_run(out, spec)
        return results | {"skipped": True}
    return results


def _train_and_record(
    spec: FinetuneSpec,
    out: Path,
    task: Any,
    model: Any,
    enforcer: Any,
    ticket: dict[str, Any],
    accelerator: Any,
    cache_dir: str | os.PathLike | None,
    quiet: bool,
    wall_start: float,
    horizon_factor: int = 1,
) -> dict[str, Any]:
    """Train ``model`` (its ticket already applied) and write the run directory's files."""
    import torch
    from torch.utils.data import DataLoader

    from ticketlab.models import load_tokenizer
    from ticketlab.training.callbacks import JsonlLogger, MaskEnforcement
    from ticketlab.training.loop import train
    from ticketlab.training.tasks import DataOptions, TaskEvaluator

    tokenizer = load_tokenizer(spec.model)
    # The task's default length above the model's positions (a small model) becomes the positions.
    positions = max_positions(model)
    options = DataOptions(
        max_length=min(spec.max_length, positions) if positions else spec.max_length,
        doc_stride=spec.doc_stride,
        data_dir=spec.data_dir,
        cache_dir=cache_dir,
        max_train_samples=spec.max_train_samples,
        max_eval_samples=spec.max_eval_samples,
        train_subset=spec.train_subset,
        quiet=quiet,
    )
    # The main process tokenises first and fills the cache; the others then read it.
    with accelerator.main_process_first():
        train_data = task.train_dataset(tokenizer, options)
        eval_data = {split: task.eval_data(split, tokenizer, options) for split in task.eval_splits}
        test_data = (
            {split: task.eval_data(split, tokenizer, options) for split in task.test_splits}
            if spec.predict_test
            else {}
        )
    loader = DataLoader(
        train_data,
        batch_size=spec.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(spec.seed),
        collate_fn=task.collate_fn(tokenizer),
        pin_memory=accelerator.device.type == "cuda",  # faster copies to the GPU, as Trainer does
    )
    if accelerator.is_main_process:
        write_json(out / SPEC_FILE, spec.to_dict())
    eval_batch_size = spec.eval_batch_size or spec.batch_size
    evaluator = TaskEvaluator(task, eval_data, batch_size=eval_batch_size, quiet=quiet)
    callbacks = [MaskEnforcement(enforcer)] if enforcer else []
    callbacks.append(JsonlLogger(out / LOG_FILE, every=spec.log_every, extra={"task": task.name}))
    config = spec.train_config(main_metric=spec.main_metric or task.main_metric, quiet=quiet)
    config.greater_is_better = task.greater_is_better
    config.horizon_factor = horizon_factor
    result = train(model, loader, evaluator, config, callbacks=callbacks, accelerator=accelerator)

    files = []
    if accelerator.is_main_process:
        files += task.write_predictions(evaluator.predictions, out)
    if test_data:
        # The trained module itself (already on the device; its shards of the test set are gathered).
        test_predictions = {
            split: task.predict(model, data, accelerator, batch_size=eval_batch_size, quiet=quiet)
            for split, data in test_data.items()
        }
        if accelerator.is_main_process:
            files += task.write_submission(test_predictions, out / "submission")
    if spec.save_model and accelerator.is_main_process:
        files.append(save_trained_model(accelerator.unwrap_model(model), tokenizer, out / MODEL_DIR))

    results = _results_record(
        spec,
        task,
        result,
        ticket=ticket,
        enforcer=enforcer,
        evaluator=evaluator,
        train_examples=len(train_data),
        max_length=options.max_length,
        accelerator=accelerator,
        files=[str(Path(f).relative_to(out)) for f in files],
        wall_seconds=time.perf_counter() - wall_start,
    )
    if accelerator.is_main_process:
        write_json(out / RESULTS_FILE, results)  # last: its presence means the run finished
    accelerator.wait_for_everyone()
    return json_safe(results)

"""``run_tamt``: a minimal driver for task-agnostic mask training, resumable, with step budgets.

It runs the shared training loop (:func:`ticketlab.training.loop.train`) with the TAMT loss
(:func:`ticketlab.training.tamt.tamt_loss`) and TAMT's optimizer over the scores (and head):
``bertadam`` (the paper's BERT Adam with per-tensor clipping, the learning rate decaying linearly
to zero over ``steps``: the default of new runs) or ``adamw`` (torch's, at a constant rate, no
clipping: what runs before the option did); a callback keeps the losses, saves the budget masks and
writes checkpoints. Everything random in a step is a function of ``(seed, step)``: the batch (a
seeded permutation per epoch), the MLM corruption (per example draw) and dropout. A checkpoint
(scores, head, optimizer state, step; safetensors, written atomically) therefore suffices to
resume to bit-identical masks: the loop then runs only the remaining steps' batches.

Outputs, for ``out`` = ``DIR``: ``DIR/mask.safetensors`` (the final mask), ``DIR/mask-step<N>.safetensors``
(each ``--save-at`` budget) and ``DIR/results.json``; for ``out`` = ``NAME.safetensors``: the final
mask there, budgets as ``NAME-step<N>.safetensors`` and ``NAME.json`` beside it. These are links to
the files of the run's *steps* (``experiments/steps.py``), kept in ``DIR`` itself (or in
``NAME.tamt/``): ``budget_<N>/`` for each budget, published as soon as the training reaches it, and
``final/``, claimed by the training for the whole run. The resumable checkpoint lives inside the
claimed work (``.final.<token>.tmp/checkpoint.safetensors``; ``.final.partial/`` once the process
stopped or died), so the next run (or a second process, which waits meanwhile) continues from it.
A run written before the step protocol (masks and ``results.json`` only, or a checkpoint beside
them) keeps working: a finished one is read as it is, an interrupted one's checkpoint and budgets
are adopted into the steps.

Under ``torchrun`` / ``accelerate launch`` the processes train together: each takes an equal slice
of every step's batch (``--batch-size`` is the global batch), its loss is its share of the global
batch's loss (sums over its tokens divided by the global token count), and the score gradients are
averaged before every update; every process then holds the same scores and mask bits (checked at
each budget and at the end), equal to one process's run with the same seed and batch up to float
rounding when dropout is off (with dropout each process draws its own noise). The first process
claims and writes; the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.data.text import DEFAULT_DATASET, DEFAULT_DATASET_CONFIG, TextBlocks
from ticketlab.errors import TicketlabError
from ticketlab.experiments.pretrain_loss import load_spec_text
from ticketlab.experiments.steps import StepStore
from ticketlab.io import atomic_write, link_file, read_json, write_json
from ticketlab.masks.io import save_mask
from ticketlab.masks.provenance import Provenance
from ticketlab.models.mlm_head import MlmHead, head_from_checkpoint, word_embeddings
from ticketlab.pruning import prune, validate_sparsity
from ticketlab.pruning.tamt import DEFAULT_SCORE_SCALE, LearnedMask
from ticketlab.training.distributed import average_gradients, barrier, broadcast_from_first, rank_and_world
from ticketlab.training.loop import Callback, TrainConfig, TrainState, train
from ticketlab.training.objectives import KD_LOSSES, MlmMasking
from ticketlab.training.settings import check_settings, setting
from ticketlab.training.tamt import (
    LR_SCHEDULE,
    OBJECTIVES,
    OPTIMIZERS,
    TamtObjective,
    check_objective,
    check_optimizer,
    optimizer_record,
    tamt_loss,
    tamt_optimizer,
)

INITS: tuple[str, ...] = ("omp", "random")
# Fields that may change between a crash and the resume without changing what is computed (steps
# only at a constant rate: a decaying rate's horizon is the run's steps).
_RESUMABLE_CHANGES = ("steps", "save_at", "checkpoint_every")
# Settings added after runs were already named by their digest, at the value that means what those
# runs did: left out of the digest (and of a grid's hash) at that value, so old names keep their meaning.
LEGACY_VALUES: dict[str, Any] = {"optimizer": "adamw", "warmup_ratio": 0.0, "teacher_dropout": False}
# What a new run gets when its settings do not say (``ticketlab tamt``, a grid file's tamt section,
# ``TamtSpec``): the paper's optimizer. ``TamtSettings()`` itself keeps the legacy value, because a
# grid's hash counts only the section's fields that differ from the dataclass defaults.
NEW_RUN_DEFAULTS: dict[str, Any] = {"optimizer": "bertadam"}
OPTIMIZER_HELP = (
    "bertadam (BERT's Adam, the paper's: no bias correction, epsilon 1e-6, each tensor's gradient "
    "clipped to norm 1, lr decaying linearly to 0 over the steps; the default of new runs) or adamw "
    "(torch's at a constant lr, what ticketlab ran before: on TAMT's tiny score gradients it is sign "
    "descent, which swaps 7-19% of a matrix's kept weights at once, blind to magnitude)"
)


def with_new_run_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A tamt section read from a user's file, with :data:`NEW_RUN_DEFAULTS` where it is silent."""
    return {**NEW_RUN_DEFAULTS, **settings}


@dataclass(kw_only=True)
class TamtSettings:
    """How a TAMT mask is trained, apart from the model, the sparsity and the ranking.

    The ``tamt:`` section of a ticket grid (which supplies the rest); :class:`TamtSpec` adds
    the model, sparsity, scope, scheme and step budgets for one ``ticketlab tamt`` run.
    """

    objective: str = field(default="kd", metadata={"help": "mlm, kd or mlm+kd", "choices": OBJECTIVES})
    text: str | None = field(default=None, metadata={"help": "training text file (none: the hub data set)"})
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "hub text data set when no text file"})
    dataset_config: str | None = field(default=DEFAULT_DATASET_CONFIG, metadata={"help": "its configuration"})
    split: str = field(default="train", metadata={"help": "its split"})
    max_sequences: int | None = setting("max_sequences", None)
    steps: int = setting("steps", 1000, note="one batch each")
    init: str = field(
        default="omp",
        metadata={"help": "initial mask: omp (the paper) or random (its ablation)", "choices": INITS},
    )
    seed: int = setting("seed", 0, note="data order, MLM corruption, dropout, random init")
    batch_size: int = setting("batch_size", 16, note="text blocks per step; the paper: 16")
    max_length: int = setting(
        "max_length", 128, note="block length, [CLS] and [SEP] included; the paper: 512"
    )
    lr: float | None = setting("lr", None, note="of the scores; default: mlm 5e-5, kd and mlm+kd 2e-5")
    weight_decay: float | None = setting(
        "weight_decay", None, note="on the scores; default: mlm 0, kd and mlm+kd 0.01"
    )
    kd_loss: str = field(
        default="cosine",
        metadata={"help": "distillation loss while training (TAMT: cosine)", "choices": KD_LOSSES},
    )
    score_scale: float = field(
        default=DEFAULT_SCORE_SCALE, metadata={"help": "c: initial scores 2c kept, 0 pruned"}
    )
    dropout: bool = field(default=True, metadata={"help": "dropout in the student (train mode)"})
    head_steps: int = setting("head_steps", 100, note="the encoder frozen, before the mask trains")
    checkpoint_every: int = setting("checkpoint_every", 100)
    optimizer: str = field(
        default=LEGACY_VALUES["optimizer"],
        metadata={"help": OPTIMIZER_HELP + "; grid files default to bertadam", "choices": OPTIMIZERS},
    )
    warmup_ratio: float = setting("warmup_ratio", 0.0, note="bertadam only; the original: 0")
    teacher_dropout: bool = field(
        default=False,
        metadata={"help": "kd: run the dense teacher with dropout, as the original did (default: eval mode)"},
    )

    def validate(self) -> None:
        check_objective(self.objective)
        check_optimizer(self.optimizer)
        if self.warmup_ratio and self.optimizer != "bertadam":
            raise TicketlabError("a warm-up needs --optimizer bertadam (adamw runs at a constant rate)")
        if self.init not in INITS:
            raise TicketlabError(f"unknown init {self.init!r} (choose from {', '.join(INITS)})")
        if self.kd_loss not in KD_LOSSES:
            raise TicketlabError(
                f"unknown distillation loss {self.kd_loss!r} (choose from {', '.join(KD_LOSSES)})"
            )
        check_settings(self, label=lambda name: name.replace("_", "-"))  # as the flags name them


@dataclass(kw_only=True)
class TamtSpec(TamtSettings):
    """A TAMT run (each field is a ``ticketlab tamt`` flag)."""

    model: str = field(metadata={"help": "hub id or local directory of the dense pre-trained model"})
    objective: str = field(metadata={"help": "mlm, kd (distillation) or their sum", "choices": OBJECTIVES})
    sparsity: float = field(metadata={"help": "fraction of the weights in scope to prune, in [0, 1)"})
    scope: str = field(
        default="encoder+embeddings", metadata={"help": "weights that can be pruned (TAMT: with embeddings)"}
    )
    scheme: str = field(default="per-matrix", metadata={"help": "per-matrix (TAMT) or global top-k"})
    save_at: tuple[int, ...] = field(
        default=(), metadata={"help": "also save the mask after these steps, e.g. 500,1000,2000"}
    )
    optimizer: str = field(
        default=NEW_RUN_DEFAULTS["optimizer"], metadata={"help": OPTIMIZER_HELP, "choices": OPTIMIZERS}
    )

    def validate(self) -> None:
        super().validate()
        validate_sparsity(self.sparsity)
        bad = [s for s in self.save_at if not 1 <= s <= self.steps]
        if bad:
            raise TicketlabError(f"--save-at step {bad[0]} is outside 1..{self.steps} (--steps)")

    @property
    def lr_schedule(self) -> str:
        return LR_SCHEDULE[self.optimizer]

    def resumable_changes(self) -> tuple[str, ...]:
        """Fields a rerun may change without changing what the run computes."""
        if self.lr_schedule == "constant":
            return _RESUMABLE_CHANGES
        return tuple(k for k in _RESUMABLE_CHANGES if k != "steps")  # steps set the decay's horizon

    def digest(self) -> str:
        """Identifies what the run computes (fields a resume may change are left out, and so are the
        later settings at their :data:`LEGACY_VALUES`: digests of earlier runs are unchanged)."""
        data = {
            k: v
            for k, v in asdict(self).items()
            if k not in self.resumable_changes() and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])
        }
        return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class TamtOutputs:
    """Where a run writes (see the module docstring): the run's steps in ``store``, and the files
    users and grids read (links to the steps' files, written when each step is published)."""

    final: Path
    results: Path
    checkpoint: Path  # where runs before the step protocol kept their checkpoint (adopted)
    budget_pattern: str  # with {step}
    store: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike) -> TamtOutputs:
        out = Path(out)
        if out.suffix == ".safetensors":
            stem = out.with_suffix("")
            return cls(
                out,
                stem.with_suffix(".json"),
                Path(f"{stem}.checkpoint.safetensors"),
                f"{stem}-step{{step}}.safetensors",
                Path(f"{stem}.tamt"),
            )
        return cls(
            out / MASK_FILE,
            out / RESULTS_FILE,
            out / CHECKPOINT,
            str(out / "mask-step{step}.safetensors"),
            out,
        )

    def budget(self, step: int) -> Path:
        return Path(self.budget_pattern.format(step=step))


MASK_FILE, RESULTS_FILE, CHECKPOINT = "mask.safetensors", "results.json", "checkpoint.safetensors"
FINAL_STEP = "final"  # the training: claimed for the whole run, its checkpoint in the claimed work
STEP_FILES = (MASK_FILE, RESULTS_FILE)


def budget_step(step: int) -> str:
    """The name of the step that holds the mask after ``step`` training steps (``--save-at``)."""
    return f"budget_{step:06d}"


class TrainedParameters(nn.Module):
    """What TAMT trains, as one module for the training loop: the scores and the MLM head (if any).

    The model itself is not a submodule: its weights stay frozen and out of the optimizer."""

    def __init__(self, learned: LearnedMask, head: MlmHead | None):
        super().__init__()
        self.learned = learned
        self.head = head


class BatchOrder:
    """Rows of step ``s``: examples ``s*B .. s*B+B-1`` of an endless sequence of seeded epochs."""

    def __init__(self, num_blocks: int, batch_size: int, seed: int):
        self.num_blocks, self.batch_size, self.seed = num_blocks, batch_size, seed
        self._epochs: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            self._epochs = {
                epoch: torch.randperm(
                    self.num_blocks, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                )
            }
        return self._epochs[epoch]

    def rows(self, step: int) -> tuple[torch.Tensor, list[int]]:
        """Block indices of the step and the example keys (global draw numbers) for the corruption."""
        keys = list(range(step * self.batch_size, (step + 1) * self.batch_size))
        rows = [int(self._permutation(k // self.num_blocks)[k % self.num_blocks]) for k in keys]
        return torch.tensor(rows), keys


class StepBatches:
    """The batches of steps ``start`` .. ``stop - 1`` in :class:`BatchOrder`'s order: one "epoch"
    of the training loop, so a resumed run continues with exactly the batches it would have had.

    Under a launch of ``world`` processes each step's (global) batch is cut into ``world`` equal
    slices and process ``rank`` gets its slice, keys included: the corruption of every example is
    the one a single process gives it."""

    def __init__(
        self, text: TextBlocks, order: BatchOrder, start: int, stop: int, rank: int = 0, world: int = 1
    ):
        self.text, self.order, self.start, self.stop = text, order, start, stop
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        share = self.order.batch_size // self.world
        mine = slice(self.rank * share, (self.rank + 1) * share)
        for step in range(self.start, self.stop):
            rows, keys = self.order.rows(step)
            rows, keys = rows[mine], keys[mine]
            yield {
                "input_ids": self.text.input_ids[rows],
                "attention_mask": self.text.attention_mask[rows],
                "keys": keys,
                "step": step,
            }


# -- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(
    path: Path, learned: LearnedMask, head: MlmHead | None, optimizer, meta: dict[str, Any]
) -> None:
    """Scores, head, optimizer state and step as safetensors (tensors only), written atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"score/{n}": learned.score(n).detach().cpu() for n in learned.names}
    if head is not None:
        tensors.update({f"head/{k}": v.detach().cpu() for k, v in head.state_dict().items()})
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).detach().cpu()
    meta = dict(meta, param_groups=state["param_groups"])
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"ticketlab_tamt": json.dumps(meta)}))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a checkpoint file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["ticketlab_tamt"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    return tensors, meta


def restore_checkpoint(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    learned: LearnedMask,
    head: MlmHead | None,
    optimizer,
) -> dict[str, Any]:
    """Put a checkpoint's scores, head and optimizer state in place; returns its metadata."""
    with torch.no_grad():
        for name in learned.names:
            learned.score(name).copy_(tensors[f"score/{name}"])
        if head is not None:
            head.load_state_dict({k[len("head/") :]: v for k, v in tensors.items() if k.startswith("head/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    device = learned.score(learned.names[0]).device
    state = {i: {k: (v if k == "step" else v.to(device)) for k, v in s.items()} for i, s in state.items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def load_checkpoint(path: Path, learned: LearnedMask, head: MlmHead | None, optimizer) -> dict[str, Any]:
    return restore_checkpoint(*read_checkpoint(path), learned, head, optimizer)


# -- the driver -------------------------------------------------------------------------------
def _differences(found: Mapping[str, Any], spec: TamtSpec) -> str:
    """The settings in which a recorded spec (``results.json``'s) differs from ``spec``."""
    wanted = asdict(spec)
    found = {**LEGACY_VALUES, **found}  # a run from before a setting existed had its legacy value
    keys = [k for k in wanted if k not in spec.resumable_changes() and found.get(k) != wanted[k]]
    return ", ".join(f"{k} {found.get(k)!r}, not {wanted[k]!r}" for k in keys) or "another version"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare_head(
    spec: TamtSpec, encoder, text: TextBlocks, masking: MlmMasking, train_if_built: bool, progress: bool
) -> tuple[MlmHead, dict[str, Any]]:
    head, reason = head_from_checkpoint(spec.model, encoder)
    if head is not None:
        return head, {"source": "checkpoint", "built": False}
    if not train_if_built:  # resuming: the checkpoint holds the head
        return MlmHead.for_encoder(encoder), {"source": "built", "built": True, "reason_built": reason}
    from ticketlab.training.mlm_head import train_mlm_head

    head, record = train_mlm_head(
        encoder, text, spec.head_steps, masking, seed=spec.seed, batch_size=spec.batch_size, progress=progress
    )
    return head, {"source": "built", "reason_built": reason, **record}


def mask_digest(mask) -> str:
    """A digest of a mask's bits (names and shapes included): equal digests, equal masks."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(mask.tensors):
        bits = mask.tensors[name]
        digest.update(f"{name}{tuple(bits.shape)}".encode())
        digest.update(bits.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _same_on_every_rank(mask, what: str) -> str:
    """The mask's digest, checked equal on every process of a launch (a divergence is a bug:
    stop rather than write one rank's mask as if all had trained it)."""
    digest = mask_digest(mask)
    first = broadcast_from_first(digest)
    if first != digest:
        raise TicketlabError(f"TAMT {what}: this process's mask differs from the first process's")
    return digest


def _finished(outputs: TamtOutputs, store: StepStore, spec: TamtSpec) -> dict[str, Any] | None:
    """The results of the finished run at ``outputs`` with ``spec``'s settings, or None. A run of
    other settings is refused; one written before the step protocol (no ``final`` step) counts
    when its files are there."""
    if not (outputs.final.exists() and outputs.results.exists()):
        return None
    done = read_json(outputs.results)
    if done.get("spec_digest") != spec.digest():
        # Not overwritten: e.g. a mask trained with adamw before --optimizer existed, rerun with a
        # command line that now means bertadam.
        raise TicketlabError(
            f"{outputs.results} holds a finished TAMT run of other settings "
            f"({_differences(done.get('spec', {}), spec)}); remove it or choose another --out"
        )
    if done.get("steps") != spec.steps:
        return None
    if "steps_folder" in done:  # written from the steps: they must be there, and whole
        if not store.is_done(FINAL_STEP) or _budgets_missing(store, spec):
            return None  # redone (or removed): trained again
        store.verify(FINAL_STEP, STEP_FILES)
        return done
    for path in [done.get("mask"), *done.get("budget_masks", {}).values()]:
        if path and not Path(path).is_file():
            raise TicketlabError(
                f"the TAMT run in {outputs.results} lists {path}, which is missing; redo it with "
                f"--redo {FINAL_STEP} (or remove {outputs.results})"
            )
    return done


def _adopt_legacy(outputs: TamtOutputs, store: StepStore, spec: TamtSpec) -> None:
    """A run interrupted before the step protocol kept its checkpoint beside its masks: it becomes
    the partial work of the ``final`` step (so the run resumes from it), and the budget masks it
    had saved up to that checkpoint become budget steps. (On every process of a launch: the
    budget steps are published together; the first process decides and moves the files.)"""
    rank, _ = rank_and_world()
    plan = None
    if rank == 0 and outputs.checkpoint.is_file() and not store.is_done(FINAL_STEP):
        _, meta = read_checkpoint(outputs.checkpoint)
        budgets = [
            s
            for s in spec.save_at
            if s <= int(meta["step"]) and outputs.budget(s).is_file() and not store.is_done(budget_step(s))
        ]
        plan = {"digest": meta.get("spec_digest"), "budgets": budgets}
    plan = broadcast_from_first(plan)
    if plan is None:
        return
    for step in plan["budgets"]:

        def adopt(tmp: Path, step=step) -> None:
            if rank == 0:
                link_file(outputs.budget(step), tmp / MASK_FILE)
            record = {"step": step, "mask": str(outputs.budget(step)), "spec_digest": plan["digest"]}
            write_json(tmp / RESULTS_FILE, dict(record, adopted="saved before the step protocol"))

        store.run(budget_step(step), adopt, required=STEP_FILES)
    if rank == 0:
        store.adopt_partial(FINAL_STEP, {CHECKPOINT: outputs.checkpoint})


def _budgets_missing(store: StepStore, spec: TamtSpec) -> list[int]:
    return [s for s in spec.save_at if not store.is_done(budget_step(s))]


def _check_step_record(store: StepStore, name: str, record: dict[str, Any], spec: TamtSpec) -> dict[str, Any]:
    if record.get("spec_digest") != spec.digest():
        raise TicketlabError(
            f"step {name} in {store.root} belongs to a TAMT run of other settings "
            f"({_differences(record.get('spec', {}), spec)}); redo it with --redo {name} "
            "or choose another --out"
        )
    return record


def _write_summary(outputs: TamtOutputs, store: StepStore, results: dict[str, Any]) -> None:
    """The files users read, from the published steps: the final mask, the budgets, results."""
    link_file(store.path(FINAL_STEP) / MASK_FILE, outputs.final)
    for step in results["budget_masks"]:
        link_file(store.path(budget_step(int(step))) / MASK_FILE, outputs.budget(int(step)))
    write_json(outputs.results, results)


def run_tamt(
    spec: TamtSpec,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a mask as ``spec`` says, write the masks to ``out``, and return the results.

    The run's steps (each ``--save-at`` budget, then ``final``) follow the step protocol
    (``experiments/steps.py``) in :attr:`TamtOutputs.store`: the training claims ``final`` and
    checkpoints inside its claimed folder, so a rerun (or a second process) resumes from the last
    checkpoint, or returns at once when finished. Under ``torchrun`` / ``accelerate launch`` the
    processes train together (each a slice of every batch, score gradients averaged), the first
    writes, and every process returns the same results. ``on_step(step, losses)`` is called after
    each update (1-based step).
    """
    spec.validate()
    rank, world = rank_and_world()
    if spec.batch_size % world:
        raise TicketlabError(
            f"--batch-size {spec.batch_size} is the batch of all {world} processes together: "
            f"make it a multiple of {world}"
        )
    outputs = TamtOutputs.for_out(out)
    store = StepStore(outputs.store)
    finished = broadcast_from_first(_finished(outputs, store, spec) if rank == 0 else None)
    if finished is not None:
        return finished
    _adopt_legacy(outputs, store, spec)
    if rank == 0:  # budgets of other settings are refused before any training, not when reached
        for step in spec.save_at:
            if store.is_done(budget_step(step)):
                store.verify(budget_step(step), STEP_FILES)
                found = read_json(store.path(budget_step(step)) / RESULTS_FILE)
                _check_step_record(store, budget_step(step), found, spec)
    if rank == 0 and store.is_done(FINAL_STEP):
        store.verify(FINAL_STEP, STEP_FILES)
        done = read_json(store.path(FINAL_STEP) / RESULTS_FILE)
        _check_step_record(store, FINAL_STEP, done, spec)
        # A constant rate's run of other steps, or a budget redone: trained again.
        if done.get("steps") != spec.steps or _budgets_missing(store, spec):
            store.redo(FINAL_STEP)
    results = store.run(
        FINAL_STEP,
        lambda tmp: _train(spec, outputs, store, tmp, progress, on_step),
        load=lambda folder: read_json(folder / RESULTS_FILE),
        required=STEP_FILES,
        resumable=True,
    )
    assert results is not None
    _check_step_record(store, FINAL_STEP, results, spec)
    if rank == 0:
        _write_summary(outputs, store, results)
    barrier()  # nobody reads the summary before the first process wrote it
    return results


def _train(
    spec: TamtSpec,
    outputs: TamtOutputs,
    store: StepStore,
    tmp: Path,
    progress: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> dict[str, Any]:
    """The ``final`` step: train the scores in ``tmp`` (resuming from its checkpoint), publish
    each budget as its own step on the way, and leave the final mask and results in ``tmp``."""
    from ticketlab.models import load_encoder, load_tokenizer

    rank, world = rank_and_world()
    checkpoint = tmp / CHECKPOINT
    resume = broadcast_from_first(checkpoint.is_file())
    started = time.perf_counter()
    progress = progress and rank == 0

    tokenizer = load_tokenizer(spec.model)
    encoder = load_encoder(spec.model).to(_device())
    text = load_spec_text(spec, tokenizer, progress)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(encoder).weight.shape[0])
    head, head_record = None, None
    if "mlm" in spec.objective:
        head, head_record = _prepare_head(spec, encoder, text, masking, not resume, progress)
        if world > 1:  # one head for all (built heads train alike, but bits are cheap to send)
            head.load_state_dict(broadcast_from_first(head.state_dict()))
            head_record = broadcast_from_first(head_record)
        head = head.to(_device())
    init_mask = prune(
        encoder,
        spec.init,
        spec.sparsity,
        scope=spec.scope,
        scheme=spec.scheme,
        seed=spec.seed,
        source_model=spec.model,
    )
    learned = LearnedMask(encoder, init_mask, spec.sparsity, spec.scheme, spec.score_scale)
    optimizer = tamt_optimizer(learned, head, spec.objective, spec.lr, spec.weight_decay, spec.optimizer)
    lr = optimizer.param_groups[0]["lr"]
    weight_decay = optimizer.param_groups[0]["weight_decay"]
    optimizer_settings = {
        **optimizer_record(optimizer),
        "lr": lr,
        "lr_schedule": spec.lr_schedule,
        "warmup_ratio": spec.warmup_ratio,
        # The decay's horizon: a budget mask saved at step N < steps had a rate not yet at zero.
        "schedule_steps": spec.steps if spec.lr_schedule != "constant" else None,
    }
    if world > 1:
        # Data parallel without a DDP wrapper: the loss of each process is its share of the global
        # batch's loss (times the number of processes), so the averaged gradient is the global one.
        optimizer.register_step_pre_hook(
            lambda opt, _args, _kwargs: average_gradients(p for g in opt.param_groups for p in g["params"])
        )

    start_step, elapsed_before, losses = 0, 0.0, []
    if resume:
        state = broadcast_from_first(read_checkpoint(checkpoint) if rank == 0 else None)
        meta = restore_checkpoint(*state, learned, head, optimizer)
        if meta.get("spec_digest") != spec.digest():
            raise TicketlabError(
                f"the checkpoint in {store.partial_path(FINAL_STEP)} belongs to a different TAMT run; "
                f"start afresh with --redo {FINAL_STEP}, or choose another --out"
            )
        start_step, elapsed_before, losses = int(meta["step"]), float(meta["wall_time_s"]), meta["losses"]
        head_record = meta.get("head_record", head_record)
        if start_step > spec.steps:
            raise TicketlabError(
                f"the checkpoint in {store.partial_path(FINAL_STEP)} is at step {start_step}, past "
                f"--steps {spec.steps}; raise --steps or start afresh with --redo {FINAL_STEP}"
            )

    def provenance(step: int, wall: float) -> Provenance:
        return Provenance(
            method="tamt",
            method_params={
                "objective": spec.objective,
                "init": spec.init,
                "steps": step,
                "lr": lr,
                "weight_decay": weight_decay,
                "optimizer": optimizer_settings,
                "teacher_dropout": spec.teacher_dropout if "kd" in spec.objective else None,
                "kd_loss": spec.kd_loss if "kd" in spec.objective else None,
                "batch_size": spec.batch_size,
                "max_length": spec.max_length,
                "score_scale": spec.score_scale,
                "text": text.source,
                "mlm_head": head_record,
                "num_processes": world,
                "search_cost": {"steps": step, "examples": step * spec.batch_size, "wall_time_s": wall},
            },
            scope=spec.scope,
            scheme=spec.scheme,
            target_sparsity=float(spec.sparsity),
            seed=spec.seed,
            source_model=spec.model,
            notes=["the mask is the exact top-k of the final scores; weights were frozen"],
        )

    objective = TamtObjective(
        encoder,
        learned,
        spec.objective,
        head,
        masking,
        spec.kd_loss,
        masking_seed=spec.seed,
        dropout=spec.dropout,
        teacher_dropout=spec.teacher_dropout,
    )
    device = _device()
    saved: dict[int, str] = {}
    parts: dict[str, float] = {}

    def loss_fn(_trained: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        loss, found = tamt_loss(objective, ids, attention, batch["keys"], spec.seed, batch["step"], rank=rank)
        parts.clear()
        parts.update(found)
        return loss

    def publish_budget(step: int, wall: float) -> None:
        mask = learned.to_mask(provenance(step, wall))
        digest = _same_on_every_rank(mask, f"budget {step}")
        record = {
            "step": step,
            "mask": str(outputs.budget(step)),
            "mask_digest": digest,
            "search_cost": {"steps": step, "examples": step * spec.batch_size, "wall_time_s": wall},
            "losses": list(losses),
            "spec": asdict(spec),
            "spec_digest": spec.digest(),
        }

        def write(folder: Path) -> None:
            save_mask(mask, folder / MASK_FILE)
            write_json(folder / RESULTS_FILE, record)

        name = budget_step(step)
        found = store.run(name, write, load=lambda f: read_json(f / RESULTS_FILE), required=STEP_FILES)
        _check_step_record(store, name, found or record, spec)
        if rank == 0:
            link_file(store.path(name) / MASK_FILE, outputs.budget(step))
        saved[step] = str(outputs.budget(step))

    class Bookkeeping(Callback):
        """Losses, budget steps, checkpoints and ``on_step`` after every update (1-based steps)."""

        def on_step_end(self, state: TrainState) -> None:
            done = start_step + state.step
            result = {"loss": state.loss, **parts}
            if done % 10 == 0 or done == spec.steps:
                losses.append([done, state.loss])
            wall = elapsed_before + time.perf_counter() - started
            if done in spec.save_at:
                publish_budget(done, wall)
            if done % spec.checkpoint_every == 0 and done < spec.steps and rank == 0:
                meta = {
                    "step": done,
                    "spec_digest": spec.digest(),
                    "wall_time_s": wall,
                    "losses": losses,
                    "head_record": head_record,
                }
                save_checkpoint(checkpoint, learned, head, optimizer, meta)
            if on_step is not None:
                on_step(done, result)

    config = TrainConfig(
        lr=lr,
        max_steps=max(spec.steps - start_step, 1),
        max_grad_norm=None,  # no global clipping (BertAdam clips each tensor itself)
        # bertadam: linear decay to zero over the run (the paper's); adamw: constant, so a mask
        # saved at step N is the mask an N-step run gives.
        lr_schedule=spec.lr_schedule,
        warmup_ratio=spec.warmup_ratio,
        schedule_start=start_step,
        eval_at_epoch_end=False,
        seed=spec.seed,
        quiet=not progress,
    )
    batches = StepBatches(
        text, BatchOrder(len(text), spec.batch_size, spec.seed), start_step, spec.steps, rank, world
    )
    with learned.attached():
        if start_step < spec.steps:  # (a checkpoint exactly at --steps leaves nothing to train)
            train(
                TrainedParameters(learned, head),
                batches,
                None,
                config,
                callbacks=[Bookkeeping()],
                loss_fn=loss_fn,
                optimizer=optimizer,
            )
        wall = elapsed_before + time.perf_counter() - started
        final = learned.to_mask(provenance(spec.steps, wall))
    digest = _same_on_every_rank(final, "final mask")
    save_mask(final, tmp / MASK_FILE)
    missing = broadcast_from_first(_budgets_missing(store, spec))
    if missing:  # removed while the run was interrupted past it: the checkpoint cannot give it back
        raise TicketlabError(
            f"budget step {budget_step(missing[0])} in {store.root} is missing and the checkpoint is past "
            f"it; train the run again with --redo {FINAL_STEP}"
        )
    for step in spec.save_at:
        saved.setdefault(step, str(outputs.budget(step)))
    results = {
        "mask": str(outputs.final),
        "budget_masks": {str(k): v for k, v in sorted(saved.items())},
        "objective": spec.objective,
        "sparsity": final.sparsity,
        "num_pruned": final.num_pruned(),
        "mask_digest": digest,
        "steps": spec.steps,
        "search_cost": {"steps": spec.steps, "examples": spec.steps * spec.batch_size, "wall_time_s": wall},
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer_settings,
        "losses": losses,
        "mlm_head": head_record,
        "text": text.source,
        "num_sequences": len(text),
        "num_processes": world,
        "steps_folder": str(outputs.store),
        "spec": asdict(spec),
        "spec_digest": spec.digest(),
    }
    write_json(tmp / RESULTS_FILE, results)
    checkpoint.unlink(missing_ok=True)  # the finished step holds what it computed, not how far it got
    return results

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
(each ``--save-at`` budget), ``DIR/results.json``, and while running ``DIR/checkpoint.safetensors``.
For ``out`` = ``NAME.safetensors``: the final mask there, budgets as ``NAME-step<N>.safetensors``,
``NAME.json`` and ``NAME.checkpoint.safetensors`` beside it.
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
from ticketlab.io import atomic_write
from ticketlab.masks.io import save_mask
from ticketlab.masks.provenance import Provenance
from ticketlab.models.mlm_head import MlmHead, head_from_checkpoint, word_embeddings
from ticketlab.pruning import prune, validate_sparsity
from ticketlab.pruning.tamt import DEFAULT_SCORE_SCALE, LearnedMask
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
    """Where a run writes (see the module docstring)."""

    final: Path
    results: Path
    checkpoint: Path
    budget_pattern: str  # with {step}

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
            )
        return cls(
            out / "mask.safetensors",
            out / "results.json",
            out / "checkpoint.safetensors",
            str(out / "mask-step{step}.safetensors"),
        )

    def budget(self, step: int) -> Path:
        return Path(self.budget_pattern.format(step=step))


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
    of the training loop, so a resumed run continues with exactly the batches it would have had."""

    def __init__(self, text: TextBlocks, order: BatchOrder, start: int, stop: int):
        self.text, self.order, self.start, self.stop = text, order, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for step in range(self.start, self.stop):
            rows, keys = self.order.rows(step)
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


def load_checkpoint(path: Path, learned: LearnedMask, head: MlmHead | None, optimizer) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["ticketlab_tamt"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
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


def run_tamt(
    spec: TamtSpec,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a mask as ``spec`` says, write the masks to ``out``, and return the results.

    Reruns with the same spec resume from the last checkpoint, or return at once when finished.
    ``on_step(step, losses)`` is called after each update (1-based step).
    """

    from ticketlab.models import load_encoder, load_tokenizer

    spec.validate()
    outputs = TamtOutputs.for_out(out)
    if outputs.final.exists() and outputs.results.exists():
        done = json.loads(outputs.results.read_text())
        if done.get("spec_digest") == spec.digest() and done.get("steps") == spec.steps:
            return done
        if done.get("spec_digest") != spec.digest():
            # Not overwritten: e.g. a mask trained with adamw before --optimizer existed, rerun
            # with a command line that now means bertadam.
            raise TicketlabError(
                f"{outputs.results} holds a finished TAMT run of other settings "
                f"({_differences(done.get('spec', {}), spec)}); remove it or choose another --out"
            )
    resume = outputs.checkpoint.exists()
    started = time.perf_counter()

    tokenizer = load_tokenizer(spec.model)
    encoder = load_encoder(spec.model).to(_device())
    text = load_spec_text(spec, tokenizer, progress)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(encoder).weight.shape[0])
    head, head_record = None, None
    if "mlm" in spec.objective:
        head, head_record = _prepare_head(spec, encoder, text, masking, not resume, progress)
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

    start_step, elapsed_before, losses = 0, 0.0, []
    if resume:
        meta = load_checkpoint(outputs.checkpoint, learned, head, optimizer)
        if meta.get("spec_digest") != spec.digest():
            raise TicketlabError(
                f"{outputs.checkpoint} belongs to a different TAMT run; remove it or choose another --out"
            )
        start_step, elapsed_before, losses = int(meta["step"]), float(meta["wall_time_s"]), meta["losses"]
        head_record = meta.get("head_record", head_record)
        if start_step > spec.steps:
            raise TicketlabError(
                f"{outputs.checkpoint} is at step {start_step}, past --steps {spec.steps}; "
                "raise --steps or remove the checkpoint"
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
        loss, found = tamt_loss(objective, ids, attention, batch["keys"], spec.seed, batch["step"])
        parts.clear()
        parts.update(found)
        return loss

    class Bookkeeping(Callback):
        """Losses, budget masks, checkpoints and ``on_step`` after every update (1-based steps)."""

        def on_step_end(self, state: TrainState) -> None:
            done = start_step + state.step
            result = {"loss": state.loss, **parts}
            if done % 10 == 0 or done == spec.steps:
                losses.append([done, state.loss])
            wall = elapsed_before + time.perf_counter() - started
            if done in spec.save_at:
                path = outputs.budget(done)
                save_mask(learned.to_mask(provenance(done, wall)), path)
                saved[done] = str(path)
            if done % spec.checkpoint_every == 0 and done < spec.steps:
                meta = {
                    "step": done,
                    "spec_digest": spec.digest(),
                    "wall_time_s": wall,
                    "losses": losses,
                    "head_record": head_record,
                }
                save_checkpoint(outputs.checkpoint, learned, head, optimizer, meta)
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
    batches = StepBatches(text, BatchOrder(len(text), spec.batch_size, spec.seed), start_step, spec.steps)
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
    save_mask(final, outputs.final)
    for step in spec.save_at:
        saved.setdefault(step, str(outputs.budget(step)))
    results = {
        "mask": str(outputs.final),
        "budget_masks": {str(k): v for k, v in sorted(saved.items())},
        "objective": spec.objective,
        "sparsity": final.sparsity,
        "num_pruned": final.num_pruned(),
        "steps": spec.steps,
        "search_cost": {"steps": spec.steps, "examples": spec.steps * spec.batch_size, "wall_time_s": wall},
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer_settings,
        "losses": losses,
        "mlm_head": head_record,
        "text": text.source,
        "num_sequences": len(text),
        "spec": asdict(spec),
        "spec_digest": spec.digest(),
    }
    atomic_write(outputs.results, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    if outputs.checkpoint.exists():
        outputs.checkpoint.unlink()
    return results

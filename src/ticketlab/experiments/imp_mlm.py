"""IMP on the masked-LM objective: a task-agnostic ticket found on pre-training text (BERT-Tickets).

The levels are those of :func:`ticketlab.experiments.imp.run_imp` (train, prune the trained weights
by global magnitude, rewind, repeat); only the training differs: instead of fine-tuning on a task,
each level trains the (rewound, masked) encoder and an MLM head on text with BERT's corruption
(15% of the tokens; of those 80% ``[MASK]``, 10% a random token, 10% unchanged), through the shared
training loop with the mask held by :class:`~ticketlab.training.callbacks.MaskEnforcement`.

- **Head.** A checkpoint that ships an MLM head (``...ForMaskedLM``) starts from its own head; one
  that does not (sentence-embedding BERTs such as MiniLM) gets an :class:`MlmHead` whose decoder is
  tied to the word embeddings, its transform first trained briefly with the encoder frozen
  (``head_steps``). That initial head is saved once in ``RUN_DIR/mlm_head/``. Across levels the
  head follows ``--head``: ``keep`` carries the trained head to the next level, ``reinit`` starts
  every level from the initial head. Mask headers record which.
- **Determinism.** Draw ``i`` of the training stream is block ``perm_e[i mod N]`` of the seeded
  permutation of epoch ``e = i // N``, corrupted by a generator seeded from ``(seed, i)`` alone; the
  held-out corruption is fixed by ``eval_seed``. A level's training is therefore a function of the
  seed, and a run killed inside a level redoes that level bit-identically.
- **Results.** Each level's ``results.json`` holds the held-out MLM loss before training
  (``initial``), at its best and at the end, and the search cost (optimizer steps, examples, wall
  time); each mask's header holds the cost of every level before it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ticketlab.data.text import (
    DEFAULT_DATASET,
    DEFAULT_DATASET_CONFIG,
    TextBlocks,
    blocks_from_lines,
    default_cache_dir,
    load_hub_text,
    read_text_lines,
)
from ticketlab.errors import TicketlabError
from ticketlab.experiments.imp import MLM_TASK, ImpSpec, TrainFunction, level_name, run_imp
from ticketlab.experiments.store import RunDirectory
from ticketlab.experiments.tamt import BatchOrder
from ticketlab.io import read_json
from ticketlab.masks import UnstructuredMask
from ticketlab.models.loading import check_max_length
from ticketlab.models.mlm_head import EncoderWithMlmHead
from ticketlab.specs import from_mapping
from ticketlab.training import loop
from ticketlab.training.loop import Callback, TrainState
from ticketlab.training.metrics import json_safe
from ticketlab.training.objectives import MlmMasking, mlm_loss_sum
from ticketlab.training.settings import check_settings, setting

HEAD_STEP = "mlm_head"


@dataclass
class MlmRecipe:
    """How each IMP level trains on MLM (``ImpSpec.recipe`` holds the fields set by the user)."""

    steps: int | None = setting("steps", None, note="per level; default: --epochs passes over the text")
    epochs: int = setting("epochs", 1, note="of the training text, per level")
    lr: float = setting("lr", 5e-5, note="AdamW, linear decay")
    batch_size: int = setting("batch_size", 16, note="text blocks per step")
    eval_batch_size: int | None = setting("eval_batch_size", None, note="blocks per held-out batch")
    max_length: int = setting("max_length", 128, note="block length, [CLS] and [SEP] included")
    max_sequences: int | None = setting("max_sequences", None, note="of the training text")
    max_eval_sequences: int | None = setting("max_eval_sequences", None)
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "without --eval-text: share of the training text's blocks (the last) held out"},
    )
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "hub text data set when no --text"})
    dataset_config: str | None = field(default=DEFAULT_DATASET_CONFIG, metadata={"help": "its configuration"})
    warmup_ratio: float = setting("warmup_ratio", 0.0)
    weight_decay: float = setting("weight_decay", 0.01, note="AdamW's, matrices only")
    max_grad_norm: float = setting("max_grad_norm", 1.0)
    eval_every: int | None = setting("eval_every", None, note="the held-out loss")
    log_every: int = setting("log_every", 10)
    mlm_probability: float = field(default=0.15, metadata={"help": "share of the tokens that are targets"})
    head_steps: int = setting("head_steps", 100, note="the encoder frozen, before the level trains")
    eval_seed: int = field(
        default=0, metadata={"help": "seed of the held-out corruption (fixed: losses compare across runs)"}
    )

    @classmethod
    def from_overrides(cls, recipe: dict[str, Any]) -> MlmRecipe:
        """The recipe with ``recipe``'s fields set, validated."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(recipe) - set(known))
        if unknown:
            raise TicketlabError(f"unknown MLM recipe field {unknown[0]!r} (known: {', '.join(known)})")
        made = from_mapping(cls, recipe, "MLM recipe")  # each value of its field's type
        made.validate()
        return made

    def validate(self) -> None:
        check_settings(self)
        if not 0.0 < self.eval_fraction < 1.0:
            raise TicketlabError(f"eval fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise TicketlabError(f"MLM probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_length < 3:
            raise TicketlabError(
                f"max length must be at least 3 (CLS, one token, SEP), got {self.max_length}"
            )


def check_mlm_recipe(recipe: dict[str, Any]) -> None:
    """Raise :class:`TicketlabError` on an unknown field or a bad value of an MLM recipe."""
    MlmRecipe.from_overrides(recipe)


# -- text ---------------------------------------------------------------------------------------
def _blocks(
    tokenizer, path: str | None, split: str, recipe: MlmRecipe, limit: int | None, cache: Path, progress: bool
) -> TextBlocks:
    if path is not None:
        lines, source = read_text_lines(path), str(path)
    else:
        lines = load_hub_text(recipe.dataset, recipe.dataset_config, split)
        source = f"{recipe.dataset}/{recipe.dataset_config}:{split}"
    return blocks_from_lines(
        tokenizer,
        lines,
        source=source,
        max_length=recipe.max_length,
        max_sequences=limit,
        cache_dir=cache,
        progress=progress,
    )


def load_mlm_text(
    spec: ImpSpec, recipe: MlmRecipe, tokenizer, *, cache_dir: str | None = None, progress: bool = True
) -> tuple[TextBlocks, TextBlocks]:
    """Training and held-out blocks: ``spec.text`` (default: the hub set's train split) and
    ``spec.eval_text`` (default: the hub set's validation split, or with ``spec.text`` its last
    ``eval_fraction`` of blocks, which are then not trained on)."""
    cache = Path(cache_dir) / "text-blocks" if cache_dir else default_cache_dir()
    train = _blocks(tokenizer, spec.text, "train", recipe, recipe.max_sequences, cache, progress)
    if spec.eval_text is not None or spec.text is None:
        heldout = _blocks(
            tokenizer, spec.eval_text, "validation", recipe, recipe.max_eval_sequences, cache, progress
        )
        return train, heldout
    count = max(1, round(len(train) * recipe.eval_fraction))
    if count >= len(train):
        raise TicketlabError(
            f"{train.source} has only {len(train)} blocks of {recipe.max_length} tokens: too few to hold "
            "some out; give --eval-text or more text"
        )
    cut = len(train) - count
    heldout = TextBlocks(
        train.input_ids[cut:],
        train.attention_mask[cut:],
        f"{train.source} (last {count} blocks)",
        f"{train.digest}:{cut}:",
    ).head(recipe.max_eval_sequences)
    return train.head(cut), heldout


class MlmDraws(Dataset):
    """Draw ``i``: ``(i, block)`` with block from the seeded permutation of epoch ``i // N``.

    The draw number is the key of the draw's corruption, so every draw is a function of the seed.
    """

    def __init__(self, num_blocks: int, count: int, seed: int):
        self.order = BatchOrder(num_blocks, 1, seed)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, int]:
        rows, keys = self.order.rows(index)
        return keys[0], int(rows[0])


@dataclass
class MlmCollate:
    """Draws -> a corrupted batch ``{input_ids, attention_mask, labels}`` (labels -100 off target)."""

    text: TextBlocks
    masking: MlmMasking
    seed: int

    def __call__(self, draws: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        keys = [key for key, _ in draws]
        rows = torch.tensor([row for _, row in draws])
        corrupted, labels = self.masking(self.text.input_ids[rows], seed=self.seed, keys=keys)
        return {"input_ids": corrupted, "attention_mask": self.text.attention_mask[rows], "labels": labels}


class HeldOutMlmLoss:
    """``evaluate(model, accelerator) -> {"mlm_loss": ...}``: mean cross-entropy over every MLM
    target of the held-out text (token-weighted, so the batch size does not change it), with the
    corruption fixed by ``seed``."""

    def __init__(self, text: TextBlocks, masking: MlmMasking, seed: int, batch_size: int):
        self.batches = []
        for start, ids, attention in text.batches(batch_size):
            corrupted, labels = masking(ids, seed=seed, keys=range(start, start + ids.shape[0]))
            self.batches.append((corrupted, attention, labels))
        self.num_targets = sum(int((labels != -100).sum()) for _, _, labels in self.batches)
        if self.num_targets == 0:
            raise TicketlabError(f"the held-out text {text.source} has no MLM targets")

    @torch.no_grad()
    def __call__(self, model: nn.Module, accelerator: Any = None) -> dict[str, float]:
        model = accelerator.unwrap_model(model) if accelerator is not None else model
        device = next(model.parameters()).device
        total = 0.0
        for corrupted, attention, labels in self.batches:
            labels = labels.to(device)
            targets = labels != -100
            hidden = model(corrupted.to(device), attention.to(device)).last_hidden_state
            loss, _ = mlm_loss_sum(model.logits_at(hidden, targets), labels[targets])
            total += float(loss)
        return {"mlm_loss": total / self.num_targets}


class InitialEvaluation(Callback):
    """Evaluate once before the first step (the rewound, masked model), for the level's record."""

    def __init__(self, evaluate: Callable[[nn.Module, Any], dict[str, float]]):
        self.evaluate = evaluate
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, state: TrainState) -> None:
        state.model.eval()
        self.metrics = dict(self.evaluate(state.model, state.accelerator))
        state.model.train()


# -- the head -----------------------------------------------------------------------------------
def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_initial_head(
    run: RunDirectory,
    spec: ImpSpec,
    recipe: MlmRecipe,
    encoder: nn.Module,
    text: TextBlocks,
    masking: MlmMasking,
    progress: bool,
) -> Path:
    """The step folder holding the head every level starts from (with ``--head reinit``; level 0).

    ``encoder`` is the pre-trained encoder (a built head's transform is trained on it, frozen).
    """
    from ticketlab.models.mlm_head import MlmHead, head_from_checkpoint, save_mlm_head
    from ticketlab.training.mlm_head import train_mlm_head

    def body(tmp: Path) -> None:
        head, reason = head_from_checkpoint(spec.model, encoder)
        if head is not None:
            info: dict[str, Any] = {"source": "checkpoint", "built": False}
        elif recipe.head_steps == 0:
            head = MlmHead.for_encoder(encoder)
            info = {"source": "built", "built": True, "steps": 0, "reason_built": reason}
        else:
            # Enough text for each step to see fresh targets (256 per step), not the whole corpus.
            per_block = max(1.0, recipe.mlm_probability * (recipe.max_length - 2))
            blocks = text.head(math.ceil(recipe.head_steps * 256 / per_block))
            head, record = train_mlm_head(
                encoder.to(_device()),
                blocks,
                recipe.head_steps,
                masking,
                seed=spec.seed,
                batch_size=recipe.eval_batch_size or recipe.batch_size,
                progress=progress,
            )
            info = {"source": "built", "reason_built": reason, **record}
        info["decoder"] = "tied to the word embeddings"
        save_mlm_head(head, tmp, json_safe(info))

    run.run_step(HEAD_STEP, body)
    return run.step_path(HEAD_STEP)


# -- one level's training -------------------------------------------------------------------------
def freeze_pooler(model: nn.Module) -> None:
    """The MLM loss never reaches the pooler: freeze it, so that DDP does not wait for its
    gradients. Training is otherwise unchanged (AdamW skips parameters without a gradient)."""
    from ticketlab.models.adapters import EncoderAdapter

    adapter = EncoderAdapter(model)
    if adapter.table.pooler is None:
        return
    with contextlib.suppress(AttributeError):  # a checkpoint without pooler has nothing to freeze
        adapter.base.get_submodule(adapter.table.pooler).requires_grad_(False)


def mlm_functions(
    spec: ImpSpec,
    recipe: MlmRecipe,
    head_dir: Path,
    text: TextBlocks,
    heldout: TextBlocks,
    masking: MlmMasking,
    *,
    quiet: bool = False,
) -> tuple[Callable[[], nn.Module], TrainFunction]:
    """``build_model`` (pre-trained encoder + the initial head) and ``train`` for IMP on MLM."""
    from ticketlab.experiments.finetune import _pruned_nonzero, versions
    from ticketlab.masks import apply_mask
    from ticketlab.models import load_encoder
    from ticketlab.models.mlm_head import load_mlm_head
    from ticketlab.training.callbacks import JsonlLogger, MaskEnforcement

    head_info: dict[str, Any] = {}

    def build_model() -> nn.Module:
        encoder = load_encoder(spec.model)
        head, info = load_mlm_head(head_dir, encoder)
        head_info.update(info)
        return EncoderWithMlmHead(encoder, head)

    draws = recipe.steps * recipe.batch_size if recipe.steps else recipe.epochs * len(text)
    evaluate = HeldOutMlmLoss(heldout, masking, recipe.eval_seed, recipe.eval_batch_size or recipe.batch_size)

    def train(model: nn.Module, mask: UnstructuredMask | None, seed: int, out: Path) -> dict[str, Any]:
        started = time.perf_counter()
        accelerator = loop.default_accelerator()
        enforcer = apply_mask(model, mask) if mask is not None else None
        freeze_pooler(model)  # after apply_mask: a frozen weight takes no gradient hook
        loader = DataLoader(
            MlmDraws(len(text), draws, seed),
            batch_size=recipe.batch_size,
            collate_fn=MlmCollate(text, masking, seed),
        )
        initial = InitialEvaluation(evaluate)
        callbacks: list[Callback] = [MaskEnforcement(enforcer)] if enforcer else []
        callbacks += [
            initial,
            JsonlLogger(out / "log.jsonl", every=recipe.log_every, extra={"task": MLM_TASK}),
        ]
        config = loop.TrainConfig(
            lr=recipe.lr,
            epochs=1,  # one pass over the draws, which span recipe.epochs passes (or recipe.steps batches)
            weight_decay=recipe.weight_decay,
            warmup_ratio=recipe.warmup_ratio,
            max_grad_norm=recipe.max_grad_norm,
            eval_every=recipe.eval_every,
            seed=seed,
            main_metric="mlm_loss",
            greater_is_better=False,
            quiet=quiet,
            horizon_factor=spec.horizon_factor,  # lr_horizon run: every level's schedule spans all
        )
        result = loop.train(model, loader, evaluate, config, callbacks=callbacks, accelerator=accelerator)
        wall = time.perf_counter() - started
        ticket: dict[str, Any] = {"sparsity": 0.0, "num_pruned": 0, "scope": None, "scheme": None}
        if mask is not None:
            ticket = {
                "sparsity": mask.sparsity,
                "num_pruned": mask.num_pruned(),
                "num_weights": mask.num_weights(),
                "scope": mask.provenance.scope,
                "scheme": mask.provenance.scheme,
            }
        carried = mask is not None and spec.head == "keep"
        return json_safe(
            {
                "task": MLM_TASK,
                "main_metric": "mlm_loss",
                "greater_is_better": False,
                "model": spec.model,
                "initial": initial.metrics,
                "best": result.best.metrics if result.best else {},
                "best_step": result.best.step if result.best else None,
                "final": result.final.metrics if result.final else {},
                "final_step": result.final.step if result.final else None,
                "evaluations": [record.to_dict() for record in result.history],
                **ticket,
                "pruned_nonzero": _pruned_nonzero(enforcer) if enforcer else 0,
                "mlm_head": {
                    "source": head_info.get("source"),
                    "start": "trained at the previous level" if carried else "initial",
                    "head": spec.head,
                },
                "text": text.source,
                "eval_text": heldout.source,
                "num_train_sequences": len(text),
                "num_eval_sequences": len(heldout),
                "num_eval_targets": evaluate.num_targets,
                "seed": seed,
                "recipe": asdict(recipe),
                "training_steps": result.steps,
                "train_examples_seen": result.train_examples,
                "epochs": draws / len(text),
                "train_seconds": result.train_seconds,
                "eval_seconds": result.eval_seconds,
                "wall_seconds": wall,
                "search_cost": {
                    "steps": result.steps,
                    "examples": result.train_examples,
                    "wall_time_s": wall,
                },
                "num_processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "versions": versions(),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )

    return build_model, train


def run_imp_on_mlm(
    spec: ImpSpec,
    out: str | Path,
    *,
    cache_dir: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """IMP on the MLM objective (``ticketlab imp --task mlm``): run or resume into ``out``."""
    from ticketlab.models import load_encoder, load_tokenizer
    from ticketlab.models.mlm_head import load_mlm_head, word_embeddings

    spec.validate()
    if spec.task != MLM_TASK:
        raise TicketlabError(f"run_imp_on_mlm runs task {MLM_TASK!r}, not {spec.task!r}")
    recipe = MlmRecipe.from_overrides(spec.recipe)
    run = RunDirectory.open(spec, out)  # refuses another spec's directory before any work
    if (run.path / "results.json").exists() and all(
        run.is_done(level_name(i)) for i in range(len(spec.levels) + 1)
    ):
        return read_json(run.path / "results.json")
    tokenizer = load_tokenizer(spec.model)
    text, heldout = load_mlm_text(spec, recipe, tokenizer, cache_dir=cache_dir, progress=not quiet)
    encoder = load_encoder(spec.model)
    check_max_length(encoder, recipe.max_length)
    masking = MlmMasking.for_tokenizer(
        tokenizer, vocab_size=word_embeddings(encoder).weight.shape[0], probability=recipe.mlm_probability
    )
    head_dir = prepare_initial_head(run, spec, recipe, encoder, text, masking, progress=not quiet)
    _, head_info = load_mlm_head(head_dir, encoder)
    del encoder  # every level loads its own (the rewind)
    build_model, train = mlm_functions(spec, recipe, head_dir, text, heldout, masking, quiet=quiet)
    echo(
        f"IMP on MLM: {len(text)} blocks of {recipe.max_length} tokens from {text.source}, held out "
        f"{len(heldout)} from {heldout.source}; head: {head_info.get('source')} ({spec.head} across levels)"
    )
    mask_params = {
        "objective": MLM_TASK,
        "text": text.source,
        "eval_text": heldout.source,
        "mlm_head": {
            "source": head_info.get("source"),
            "built": bool(head_info.get("built")),
            "head_steps": head_info.get("steps") if head_info.get("built") else None,
            "decoder": "tied to the word embeddings",
            "across_levels": spec.head,
        },
        "recipe": spec.recipe,
    }
    return run_imp(spec, out, build_model, train, echo=echo, mask_params=mask_params)

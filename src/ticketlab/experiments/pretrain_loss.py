"""Pre-training performance of a ticket: MLM loss and distillation loss on held-out text.

The masked model (the student) is compared with the dense pre-trained model (the teacher):
- ``mlm_loss``: mean cross-entropy over the MLM targets of the text, with the corruption seeded per
  block (the same targets for every ticket), the student's word embeddings (masked if in scope)
  serving as the tied decoder. ``mlm_loss_dense`` is the teacher's, for reference.
- ``kd_loss``: token-mean (padding excluded) over the layers' hidden outputs of the MSE (default,
  TAMT's evaluation) or of the cosine distance, student against teacher, on the clean text.

A model without an MLM head gets ``mlm_loss = None`` and the reason, unless a head is supplied
(``mlm_head=DIR``) or built (``mlm_head="auto"``: trained briefly with the encoder frozen).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ticketlab.data.text import DEFAULT_DATASET, DEFAULT_DATASET_CONFIG, TextBlocks, load_text_blocks
from ticketlab.errors import TicketlabError
from ticketlab.models.loading import check_max_length
from ticketlab.models.mlm_head import MlmHead, head_from_checkpoint, load_mlm_head, word_embeddings
from ticketlab.training.objectives import KD_LOSSES, MlmMasking, kd_loss_sum, mlm_loss_sum
from ticketlab.training.settings import check_settings, setting

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PretrainLossSettings:
    """How pre-training losses are measured: the text and the losses, not the model or the mask.

    The ``pretrain_loss:`` section of a ticket grid (which measures every ticket with it);
    :class:`PretrainLossSpec` adds the model and the mask for one ``ticketlab pretrain-loss``.
    """

    text: str | None = field(default=None, metadata={"help": "held-out text file (none: the hub data set)"})
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "hub text data set when no --text"})
    dataset_config: str | None = field(default=DEFAULT_DATASET_CONFIG, metadata={"help": "its configuration"})
    split: str = field(default="validation", metadata={"help": "its split"})
    max_sequences: int | None = setting("max_sequences", None)
    max_length: int = setting(
        "max_length", 128, note="block length, [CLS] and [SEP] included; the paper: 512"
    )
    batch_size: int = setting(
        "batch_size", 16, note="blocks per forward pass; the losses do not depend on it"
    )
    kd_loss: str = field(
        default="mse",
        metadata={"help": "distillation loss: mse (TAMT's evaluation) or cosine", "choices": KD_LOSSES},
    )
    mlm_head: str | None = field(
        default=None, metadata={"help": "MLM head: a saved head (dir/file), or 'auto' to build one if needed"}
    )
    head_steps: int = setting("head_steps", 100, note="--mlm-head auto")
    head_text: str | None = field(
        default=None, metadata={"help": "text file to train an 'auto' head on (default: the evaluation text)"}
    )
    mlm_seed: int = field(
        default=0, metadata={"help": "seed of the MLM corruption (keep fixed to compare tickets)"}
    )

    def validate(self) -> None:
        if self.kd_loss not in KD_LOSSES:
            raise TicketlabError(
                f"unknown distillation loss {self.kd_loss!r} (choose from {', '.join(KD_LOSSES)})"
            )
        check_settings(self)


@dataclass(kw_only=True)
class PretrainLossSpec(PretrainLossSettings):
    """What ``ticketlab pretrain-loss`` measures (each field is a command-line flag)."""

    model: str = field(metadata={"help": "hub id or local directory of the dense pre-trained model"})
    mask: str | None = field(
        default=None, metadata={"help": "mask file of the ticket (none: the dense model)"}
    )
    save_head: str | None = field(default=None, metadata={"help": "directory to save an 'auto' head in"})
    allow_fingerprint_mismatch: bool = field(
        default=False, metadata={"help": "apply the mask even if the model's weights differ from its source"}
    )


def load_spec_text(spec, tokenizer, progress: bool = True) -> TextBlocks:
    """The blocks a spec with the text fields (text, dataset, dataset_config, split, max_length,
    max_sequences) asks for; a block length above the model's positions is refused first."""
    check_max_length(spec.model, spec.max_length, "--max-length")
    blocks = load_text_blocks(
        tokenizer,
        spec.text,
        dataset=spec.dataset,
        dataset_config=spec.dataset_config,
        split=spec.split,
        max_length=spec.max_length,
        max_sequences=spec.max_sequences,
        progress=progress,
    )
    batch_size = getattr(spec, "batch_size", 1)
    if len(blocks) < batch_size:
        # Not an error (a quick try on a small file is fine), but said: a batch repeats these blocks
        # and a loss measured on them says little.
        log.warning(
            "%s gives only %d block(s) of %d tokens (%d real tokens), fewer than a batch of %d: "
            "too little text for a meaningful loss or mask",
            blocks.source,
            len(blocks),
            blocks.max_length,
            blocks.num_tokens(),
            batch_size,
        )
    return blocks


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def pretraining_losses(
    teacher: nn.Module,
    student: nn.Module,
    text: TextBlocks,
    *,
    masking: MlmMasking | None = None,
    head: MlmHead | None = None,
    kd_kind: str = "mse",
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """MLM loss (when ``head`` and ``masking`` are given) and KD loss of ``student`` against ``teacher``.

    Both are means over the whole text (token-weighted), not means of batch means, so the batch
    size does not change them.
    """
    from tqdm.auto import tqdm

    if kd_kind not in KD_LOSSES:
        raise TicketlabError(f"unknown distillation loss {kd_kind!r} (choose from {', '.join(KD_LOSSES)})")
    if len(text) == 0:
        raise TicketlabError("no text to evaluate on")
    device = next(teacher.parameters()).device
    teacher.eval()
    student.eval()
    kd_total, kd_count = 0.0, 0
    mlm_total, mlm_dense_total, mlm_count = 0.0, 0.0, 0
    batches = tqdm(
        text.batches(batch_size),
        total=-(-len(text) // batch_size),
        desc="pre-training losses",
        disable=not progress,
        leave=False,
    )
    for start, ids, attention in batches:
        ids, attention = ids.to(device), attention.to(device)
        teacher_hidden = teacher(
            input_ids=ids, attention_mask=attention, output_hidden_states=True
        ).hidden_states
        if student is teacher:
            student_hidden = teacher_hidden
        else:
            student_hidden = student(
                input_ids=ids, attention_mask=attention, output_hidden_states=True
            ).hidden_states
        total, count = kd_loss_sum(student_hidden, teacher_hidden, attention, kd_kind)
        kd_total += float(total)
        kd_count += count
        if head is None or masking is None:
            continue
        corrupted, labels = masking(ids, seed=seed, keys=range(start, start + ids.shape[0]))
        targets = labels != -100
        if not bool(targets.any()):
            continue
        for model, accumulate in ((student, "student"), (teacher, "teacher")):
            hidden = model(input_ids=corrupted, attention_mask=attention).last_hidden_state
            logits = head(hidden[targets], word_embeddings(model).weight)
            total, count = mlm_loss_sum(logits, labels[targets])
            if accumulate == "student":
                mlm_total += float(total)
                mlm_count += count
            else:
                mlm_dense_total += float(total)
    return {
        "kd_loss": kd_total / max(kd_count, 1),
        "mlm_loss": mlm_total / mlm_count if mlm_count else None,
        "mlm_loss_dense": mlm_dense_total / mlm_count if mlm_count else None,
        "num_tokens": kd_count,
        "num_mlm_targets": mlm_count,
    }


def resolve_mlm_head(
    spec: PretrainLossSpec,
    encoder: nn.Module,
    tokenizer,
    text: TextBlocks,
    masking: MlmMasking,
    progress: bool,
) -> tuple[MlmHead | None, dict[str, Any]]:
    """The head to score MLM with, and a record of where it came from (or why there is none)."""
    if spec.mlm_head not in (None, "auto"):
        head, info = load_mlm_head(spec.mlm_head, encoder)
        return head, {"source": "file", "path": spec.mlm_head, "built": bool(info.get("built")), **info}
    head, reason = head_from_checkpoint(spec.model, encoder)
    if head is not None:
        return head, {"source": "checkpoint", "built": False}
    if spec.mlm_head != "auto":
        return None, {
            "source": None,
            "built": False,
            "reason": reason + "; pass --mlm-head DIR or --mlm-head auto",
        }
    from ticketlab.training.mlm_head import train_mlm_head

    head_text = text
    if spec.head_text:
        head_text = load_text_blocks(
            tokenizer,
            spec.head_text,
            max_length=spec.max_length,
            max_sequences=spec.max_sequences,
            progress=progress,
        )
    head, record = train_mlm_head(
        encoder,
        head_text,
        spec.head_steps,
        masking,
        batch_size=spec.batch_size,
        seed=spec.mlm_seed,
        progress=progress,
    )
    record["reason_built"] = reason
    if spec.save_head:
        from ticketlab.models.mlm_head import save_mlm_head

        record["saved_to"] = str(save_mlm_head(head, spec.save_head, record))
    if not spec.head_text:
        record["caveat"] = "the head was trained on the evaluation text itself (same head for every ticket)"
    return head, {"source": "auto", **record}


def build_mlm_head(spec: PretrainLossSpec, directory: str | os.PathLike, progress: bool = True) -> bool:
    """Build the head ``mlm_head: auto`` would build for ``spec`` (one that every ticket of a grid
    is then scored with) into ``directory``; False, writing nothing, when the model has its own."""
    from ticketlab.models import load_encoder, load_tokenizer

    spec.validate()
    tokenizer = load_tokenizer(spec.model)
    encoder = load_encoder(spec.model).to(_device())
    if head_from_checkpoint(spec.model, encoder)[0] is not None:
        return False
    text = load_spec_text(spec, tokenizer, progress)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(encoder).weight.shape[0])
    auto = replace(spec, mlm_head="auto", save_head=str(directory))
    resolve_mlm_head(auto, encoder, tokenizer, text, masking, progress)
    return True


def run_pretrain_loss(spec: PretrainLossSpec, progress: bool = True) -> dict[str, Any]:
    """Load model, mask and text as ``spec`` says and measure; returns the results dict."""
    from ticketlab.masks import StructuredMask, apply_mask, load_mask
    from ticketlab.models import EncoderAdapter, load_encoder, load_tokenizer

    start = time.perf_counter()
    spec.validate()
    mask = load_mask(spec.mask) if spec.mask else None  # fail on a bad mask before the slow parts
    tokenizer = load_tokenizer(spec.model)
    teacher = load_encoder(spec.model).to(_device())
    text = load_spec_text(spec, tokenizer, progress)
    masking = MlmMasking.for_tokenizer(tokenizer, vocab_size=word_embeddings(teacher).weight.shape[0])
    head, head_record = resolve_mlm_head(spec, teacher, tokenizer, text, masking, progress)
    if head is not None:
        head = head.to(_device()).eval()
    student = teacher
    sparsity = 0.0
    if mask is not None:
        if isinstance(mask, StructuredMask):
            mask = mask.to_unstructured(EncoderAdapter(teacher))
        student = copy.deepcopy(teacher)
        apply_mask(student, mask, allow_fingerprint_mismatch=spec.allow_fingerprint_mismatch)
        sparsity = mask.sparsity
    losses = pretraining_losses(
        teacher,
        student,
        text,
        masking=masking,
        head=head,
        kd_kind=spec.kd_loss,
        seed=spec.mlm_seed,
        batch_size=spec.batch_size,
        progress=progress,
    )
    results: dict[str, Any] = {
        "mlm_loss": losses["mlm_loss"],
        "kd_loss": losses["kd_loss"],
        "kd_loss_kind": spec.kd_loss,
        "mlm_loss_dense": losses["mlm_loss_dense"],
        "mlm_head": head_record,
        "sparsity": sparsity,
        "mask_method": mask.provenance.method if mask is not None else None,
        "num_sequences": len(text),
        "num_tokens": losses["num_tokens"],
        "num_mlm_targets": losses["num_mlm_targets"],
        "text": text.source,
        "wall_time_s": time.perf_counter() - start,
        "spec": asdict(spec),
    }
    if head is None:
        results["mlm_loss_reason"] = head_record["reason"]
    elif not losses["num_mlm_targets"]:
        results["mlm_loss_reason"] = "the text is too short: the MLM corruption chose no token to predict"
        log.warning("no MLM loss on %s: %s", text.source, results["mlm_loss_reason"])
    return results

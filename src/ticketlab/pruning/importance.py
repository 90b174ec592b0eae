"""Importance of attention heads and FFNs: the expected absolute sensitivity of the loss to gates.

Three variants (SPECS.md section 3), all computed on a model in eval mode from the gradients of
fresh gates of 1 (see :class:`ticketlab.masks.gates.StructuredGates`), so one backward pass per
batch serves every unit:

- ``michel2019`` (Michel et al.): per *example*, ``E_x |dL(x)/dg|``. Each example gets its own copy
  of the gates, so one backward of the summed per-example losses gives every example's gradient.
- ``liang2021`` (super tickets): per *token*, ``sum_x sum_t |<dL/dctx_h(t), ctx_h(t)>|``; the inner
  product equals the gradient of a per-token gate at 1. Summed over the data, as the paper.
- ``prasanna2020`` (all tickets winning): per *batch*, ``E_batch |dL_batch/dg|`` with ``L_batch``
  the batch-mean loss.

Gradients are fresh for every batch (the super-tickets code accumulated gate gradients across
batches without zeroing them, which weighted early batches more). Units already gated to 0 score 0.
Head scores are then normalised per layer (L2 norm by default, or min-max); FFN scores are ranked
across layers as they are (normalising one number per layer would make them all equal).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ticketlab.errors import TicketlabError
from ticketlab.io import atomic_write
from ticketlab.masks.gates import StructuredGates
from ticketlab.masks.structured import StructuredMask
from ticketlab.specs import from_mapping


@dataclass(frozen=True)
class ImportanceVariant:
    """One paper's way of turning gate gradients into scores."""

    name: str
    fresh: str  # gate copies per "batch", "example" or "token"
    average_over: str  # divide the summed |grad| by the number of "examples", "batches", or "none"
    batch_loss: str  # backward of the per-example losses' "sum" or "mean"
    description: str


IMPORTANCE_VARIANTS: dict[str, ImportanceVariant] = {}


def register_variant(variant: ImportanceVariant) -> ImportanceVariant:
    IMPORTANCE_VARIANTS[variant.name] = variant
    return variant


register_variant(
    ImportanceVariant(
        "michel2019", "example", "examples", "sum", "Michel et al.: E over examples of |dL/dgate|"
    )
)
register_variant(
    ImportanceVariant(
        "liang2021", "token", "none", "sum", "super tickets: |<dL/dctx, ctx>| per token, summed over the data"
    )
)
register_variant(
    ImportanceVariant(
        "prasanna2020", "batch", "batches", "mean", "all tickets winning: E over batches of |dL_batch/dgate|"
    )
)

NORMALIZATIONS: tuple[str, ...] = ("l2", "minmax", "none")
FORMAT_NAME = "ticketlab-importance"


@dataclass
class ImportanceScores:
    """Heads ``[layers, heads]`` and FFN ``[layers]`` or ``[layers, d_ff]`` scores (higher = more important)."""

    heads: torch.Tensor
    ffn: torch.Tensor
    variant: str = "unknown"
    normalization: str = "none"
    num_batches: int = 0
    num_examples: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "normalization": self.normalization,
            "num_batches": self.num_batches,
            "num_examples": self.num_examples,
            "heads": self.heads.tolist(),
            "ffn": self.ffn.tolist(),
            "info": self.info,
        }

    def _header(self) -> dict[str, Any]:
        data = self.to_dict()
        del data["heads"], data["ffn"]
        return {"format": FORMAT_NAME, "format_version": 1, **data}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (``heads``, ``ffn``) with the rest as its JSON header, atomically."""
        tensors = {
            "heads": self.heads.detach().cpu().float().contiguous(),
            "ffn": self.ffn.detach().cpu().float(),
        }
        header = json.dumps(self._header())
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"ticketlab": header}))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImportanceScores:
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("ticketlab", "{}"))
                if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                    raise TicketlabError(f"{path} is not a ticketlab importance file")
                heads, ffn = handle.get_tensor("heads"), handle.get_tensor("ffn")
        except (SafetensorError, OSError, json.JSONDecodeError) as error:
            raise TicketlabError(f"cannot read importance scores from {path}: {error}") from error
        fields = {k: v for k, v in header.items() if k not in ("format", "format_version")}
        # The header's fields against their types (heads and ffn are the file's tensors).
        return from_mapping(
            cls, {**fields, "heads": heads, "ffn": ffn}, f"{path}: header", ignore_unknown=True
        )


def normalize_per_layer(scores: torch.Tensor, method: str = "l2") -> torch.Tensor:
    """Scale each row (layer) of ``[layers, units]`` scores: by its L2 norm, or to [0, 1] (min-max).

    A row of zeros (a fully gated layer) stays zero.
    """
    if method not in NORMALIZATIONS:
        raise TicketlabError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {method!r}")
    scores = scores.double()
    if method == "l2":
        norm = scores.norm(dim=-1, keepdim=True)
        return (scores / torch.where(norm > 0, norm, 1.0)).float()
    if method == "minmax":
        low = scores.min(dim=-1, keepdim=True).values
        span = scores.max(dim=-1, keepdim=True).values - low
        return ((scores - low) / torch.where(span > 0, span, 1.0)).float()
    return scores.float()


LossFn = Callable[[nn.Module, Any], torch.Tensor]


def sequence_classification_losses(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-example losses of a ``...ForSequenceClassification`` model: cross-entropy, or squared error
    when the model has one output (regression, STS-B)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    labels = batch["labels"]
    if logits.shape[-1] == 1:
        return (logits.squeeze(-1) - labels.to(logits.dtype)) ** 2
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def question_answering_losses(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-example losses of a ``...ForQuestionAnswering`` model: the mean of the start and end
    cross-entropies, as the model's own (batch-mean) loss computes them."""
    labels = ("start_positions", "end_positions")
    outputs = model(**{k: v for k, v in batch.items() if k not in labels})
    losses = []
    for logits, positions in (
        (outputs.start_logits, batch["start_positions"]),
        (outputs.end_logits, batch["end_positions"]),
    ):
        positions = positions.clamp(0, logits.shape[1])  # out of range: ignored, as the model does
        losses.append(
            nn.functional.cross_entropy(logits, positions, ignore_index=logits.shape[1], reduction="none")
        )
    return (losses[0] + losses[1]) / 2


def compute_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn = sequence_classification_losses,
    *,
    variant: str = "michel2019",
    normalization: str = "l2",
    ffn_granularity: str = "layer",
    mask: StructuredMask | None = None,
    progress: bool = False,
) -> ImportanceScores:
    """Score every head and FFN of ``model`` on ``batches``.

    ``loss_fn(model, batch)`` returns the per-example losses ``[batch]`` (unreduced). ``mask``
    keeps already-pruned units gated off while scoring (they score 0). The model is put in eval mode
    and its parameters' ``requires_grad`` and training flag are restored afterwards; parameter
    gradients are never accumulated.
    """
    if variant not in IMPORTANCE_VARIANTS:
        raise TicketlabError(
            f"unknown importance variant {variant!r} (choose from {', '.join(sorted(IMPORTANCE_VARIANTS))})"
        )
    spec = IMPORTANCE_VARIANTS[variant]
    granularity = mask.ffn_granularity if mask is not None else ffn_granularity
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for parameter in requires:
        parameter.requires_grad_(False)  # gradients flow to the gates only
    gates = StructuredGates(
        model,
        granularity,
        heads=None if mask is None else mask.heads.float(),
        ffn=None if mask is None else mask.ffn.float(),
    )
    a = gates.adapter
    head_scores = torch.zeros(a.num_layers, a.num_heads, dtype=torch.float64)
    ffn_scores = torch.zeros(gates.ffn.shape, dtype=torch.float64)
    num_batches = num_examples = 0
    try:
        gates.start_fresh(spec.fresh)
        for batch in tqdm(batches, desc=f"importance ({variant})", disable=not progress, leave=False):
            gates.clear_fresh()  # fresh gates, and so fresh gradients, for every batch
            with torch.enable_grad():  # also when called under no_grad (an evaluation loop)
                losses = loss_fn(model, batch)
                if losses.dim() != 1:
                    raise TicketlabError(
                        f"the loss function must return per-example losses [batch], got {tuple(losses.shape)}"
                    )
                total = losses.sum() if spec.batch_loss == "sum" else losses.mean()
            total.backward()
            for layer in range(a.num_layers):
                head_scores[layer] += _summed_abs_grad(gates.fresh_heads[layer], a.num_heads)
                width = 1 if granularity == "layer" else a.ffn_size
                summed = _summed_abs_grad(gates.fresh_ffn[layer], width)
                ffn_scores[layer] += summed[0] if granularity == "layer" else summed
            num_batches += 1
            num_examples += int(losses.shape[0])
    finally:
        gates.remove()
        for parameter, flag in requires.items():
            parameter.requires_grad_(flag)
        model.train(was_training)
    if num_batches == 0:
        raise TicketlabError("no batches to score importance on")
    divisor = {"examples": num_examples, "batches": num_batches, "none": 1}[spec.average_over]
    head_scores /= divisor
    ffn_scores /= divisor
    return ImportanceScores(
        heads=normalize_per_layer(head_scores, normalization),
        ffn=ffn_scores.float(),
        variant=variant,
        normalization=normalization,
        num_batches=num_batches,
        num_examples=num_examples,
        info={"ffn_granularity": granularity, "masked": mask is not None},
    )


def _summed_abs_grad(gates: list[torch.Tensor], width: int) -> torch.Tensor:
    """Sum of |grad| over every copy of a layer's gates (all forward calls of this batch)."""
    total = torch.zeros(width, dtype=torch.float64)
    for gate in gates:
        if gate.grad is not None:
            total += gate.grad.detach().abs().reshape(-1, width).sum(0).double().cpu()
    return total

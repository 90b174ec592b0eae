"""Structured masks: one bit per attention head and per FFN unit (a whole sub-layer or a neuron)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks.provenance import Provenance
from ticketlab.masks.unstructured import UnstructuredMask
from ticketlab.models.adapters import EncoderAdapter


@dataclass
class StructuredMask:
    """Heads ``[layers, heads]`` and FFN ``[layers]`` (whole sub-layers) or ``[layers, d_ff]`` (neurons).

    ``True`` keeps the unit. A structured mask expands to an unstructured one over the same
    weights with :meth:`to_unstructured`.
    """

    heads: torch.Tensor
    ffn: torch.Tensor
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        if self.heads.dtype != torch.bool or self.ffn.dtype != torch.bool:
            raise TicketlabError("structured mask tensors must be bool")
        if self.heads.dim() != 2:
            raise TicketlabError(f"heads mask must be [layers, heads], got shape {tuple(self.heads.shape)}")
        if self.ffn.dim() not in (1, 2) or self.ffn.shape[0] != self.heads.shape[0]:
            raise TicketlabError(
                f"ffn mask must be [layers] or [layers, d_ff] with {self.heads.shape[0]} layers, "
                f"got shape {tuple(self.ffn.shape)}"
            )

    @classmethod
    def full(cls, adapter: EncoderAdapter, ffn_granularity: str = "layer") -> StructuredMask:
        heads = torch.ones(adapter.num_layers, adapter.num_heads, dtype=torch.bool)
        if ffn_granularity == "layer":
            ffn = torch.ones(adapter.num_layers, dtype=torch.bool)
        elif ffn_granularity == "neuron":
            ffn = torch.ones(adapter.num_layers, adapter.ffn_size, dtype=torch.bool)
        else:
            raise TicketlabError(f"ffn granularity must be 'layer' or 'neuron', not {ffn_granularity!r}")
        return cls(heads, ffn)

    @property
    def ffn_granularity(self) -> str:
        return "layer" if self.ffn.dim() == 1 else "neuron"

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"heads": self.heads, "ffn": self.ffn}

    def head_sparsity(self) -> float:
        return 1.0 - float(self.heads.sum()) / self.heads.numel()

    def ffn_sparsity(self) -> float:
        return 1.0 - float(self.ffn.sum()) / self.ffn.numel()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StructuredMask)
            and torch.equal(self.heads, other.heads)
            and torch.equal(self.ffn, other.ffn)
        )

    __hash__ = None

    def to_unstructured(self, adapter: EncoderAdapter, scope: str = "encoder") -> UnstructuredMask:
        """The same pruning as weight bits over the matrices in ``scope``."""
        if tuple(self.heads.shape) != (adapter.num_layers, adapter.num_heads):
            raise TicketlabError(
                f"heads mask shape {tuple(self.heads.shape)} does not fit a model with "
                f"{adapter.num_layers} layers x {adapter.num_heads} heads"
            )
        if self.ffn.dim() == 2 and self.ffn.shape[1] != adapter.ffn_size:
            raise TicketlabError(
                f"ffn mask has {self.ffn.shape[1]} neurons per layer, model has {adapter.ffn_size}"
            )
        matrices = adapter.prunable_matrices(scope)
        weights = {m.name: adapter.parameter(m.name) for m in matrices}
        mask = UnstructuredMask.ones_like(weights)
        d = adapter.head_dim
        for matrix in matrices:
            if matrix.layer is None:
                continue
            bits = mask.tensors[matrix.name]
            layer = matrix.layer
            if matrix.role in ("query", "key", "value", "attention_output"):
                for head in torch.nonzero(~self.heads[layer]).flatten().tolist():
                    span = slice(head * d, (head + 1) * d)
                    # Q/K/V produce the head's features (rows); the output projection reads them (columns).
                    if matrix.role == "attention_output":
                        bits[:, span] = False
                    else:
                        bits[span, :] = False
            elif matrix.role in ("ffn_in", "ffn_out"):
                keep = self.ffn[layer] if self.ffn.dim() == 2 else self.ffn[layer].expand(adapter.ffn_size)
                # FFN-in produces the neurons (rows); FFN-out reads them (columns).
                if matrix.role == "ffn_in":
                    bits &= keep.unsqueeze(1)
                else:
                    bits &= keep.unsqueeze(0)
        provenance = Provenance(
            method=f"structured:{self.provenance.method}",
            method_params=dict(self.provenance.method_params),
            scope=scope,
            scheme="structured",
            seed=self.provenance.seed,
            source_model=self.provenance.source_model,
        )
        mask.provenance = provenance
        for matrix in matrices:
            mask.info[matrix.name].role = matrix.role
            mask.info[matrix.name].layer = matrix.layer
        return mask

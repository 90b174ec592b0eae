"""Multiplicative gates on attention heads and FFNs, installed as forward hooks.

Where the gates sit (the same for every family in the architecture table, and independent of the
attention implementation, eager or SDPA, because they act on the inputs/outputs of plain linears):

- **Head gates** ``[layers, heads]``: a forward *pre*-hook on the attention-output projection
  reshapes its input, the concatenated per-head contexts ``[..., hidden]``, to
  ``[..., heads, head_dim]`` and multiplies head ``h`` by its gate.
- **FFN gates**, granularity ``layer`` (``[layers]``): a forward hook multiplies the FFN-out
  projection's *output* (bias included, before dropout, residual and LayerNorm) by the gate, so a
  gate of 0 removes the whole FFN sub-layer: the layer's output is ``LayerNorm(attention_output)``.
- **FFN gates**, granularity ``neuron`` (``[layers, d_ff]``): a forward pre-hook multiplies the
  FFN-out projection's input (the activations) neuron by neuron; the FFN-out bias stays.

Gating every head of a layer leaves the attention-output projection's *bias*: the attention
sub-layer then computes ``LayerNorm(hidden + bias_out)``, a residual pass-through shifted by a
constant. This is what a model with those heads physically removed computes too
(:func:`ticketlab.models.shrink.shrink` keeps the bias), and what the originals' ``head_mask`` did.

A gate of 0 also stops gradients: the gated context of a head is 0 whatever its Q, K and V are,
so those rows (and the head's output-projection columns, whose input is 0) get exactly zero
gradient. Shared parameters (attention-output bias, LayerNorms) still train. Gates never use
``head_mask`` or ``prune_heads`` (transformers v5 removed or silently ignores them).

For importance scoring, :attr:`StructuredGates.fresh` makes every forward pass create fresh
gate tensors of 1 (times the fixed gate) that require grad, one per batch, per example or per
token; :mod:`ticketlab.pruning.importance` reads their gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.masks.structured import StructuredMask
from ticketlab.models.adapters import EncoderAdapter

FreshMode = Literal["batch", "example", "token"]
FRESH_MODES: tuple[str, ...] = ("batch", "example", "token")


class StructuredGates:
    """Head and FFN gates on a live model; remove them with :meth:`remove` (or use ``with``).

    ``heads`` (``[layers, heads]``) and ``ffn`` (``[layers]`` or ``[layers, d_ff]``) are float
    tensors; change them in place, or set ``requires_grad`` to learn them. By default every gate
    is 1, which leaves the model's outputs exactly as they were.
    """

    def __init__(
        self,
        model: nn.Module,
        ffn_granularity: str = "layer",
        *,
        heads: torch.Tensor | None = None,
        ffn: torch.Tensor | None = None,
        requires_grad: bool = False,
    ):
        if ffn_granularity not in ("layer", "neuron"):
            raise TicketlabError(f"ffn granularity must be 'layer' or 'neuron', not {ffn_granularity!r}")
        if getattr(model, "ticketlab_shrink_plan", None) is not None:
            # Its layers no longer have the config's head count and FFN size.
            raise TicketlabError("gates go on full models; this model was shrunk (its pruned units are gone)")
        self.adapter = EncoderAdapter(model)
        self.ffn_granularity = ffn_granularity
        a = self.adapter
        reference = next(model.parameters())
        options = dict(dtype=torch.float32, device=reference.device)
        ffn_shape = (a.num_layers,) if ffn_granularity == "layer" else (a.num_layers, a.ffn_size)
        self.heads = _gate_tensor(heads, (a.num_layers, a.num_heads), "heads", options)
        self.ffn = _gate_tensor(ffn, ffn_shape, "ffn", options)
        self.heads.requires_grad_(requires_grad)
        self.ffn.requires_grad_(requires_grad)
        # Importance scoring: None, or which fresh gate copies each forward pass creates.
        self.fresh: str | None = None
        self.fresh_heads: list[list[torch.Tensor]] = [[] for _ in range(a.num_layers)]
        self.fresh_ffn: list[list[torch.Tensor]] = [[] for _ in range(a.num_layers)]
        self._handles = []
        for layer in range(a.num_layers):
            attention_out = a.layer_linear(layer, "attention_output")
            ffn_out = a.layer_linear(layer, "ffn_out")
            self._handles.append(attention_out.register_forward_pre_hook(self._head_hook(layer)))
            if ffn_granularity == "layer":
                self._handles.append(ffn_out.register_forward_hook(self._ffn_layer_hook(layer)))
            else:
                self._handles.append(ffn_out.register_forward_pre_hook(self._ffn_neuron_hook(layer)))

    # -- hooks ----------------------------------------------------------------------------------
    def _fresh_gate(self, x: torch.Tensor, unit_shape: tuple[int, ...], store: list) -> torch.Tensor:
        """A new gate of ones requiring grad, shaped to broadcast over ``x``'s leading dims."""
        lead = x.shape[:-1]
        if self.fresh == "batch":
            shape = unit_shape
        elif self.fresh == "example":
            shape = (lead[0],) + (1,) * (len(lead) - 1) + unit_shape
        else:  # token
            shape = tuple(lead) + unit_shape
        gate = torch.ones(shape, dtype=x.dtype, device=x.device, requires_grad=True)
        store.append(gate)
        return gate

    def _head_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            heads = self.adapter.num_heads
            gate = self.heads[layer].to(device=x.device, dtype=x.dtype)
            if self.fresh is not None:
                gate = gate * self._fresh_gate(x, (heads,), self.fresh_heads[layer])
            split = x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)
            gated = (split * gate.unsqueeze(-1)).reshape(x.shape)
            return (gated, *args[1:])

        return hook

    def _ffn_layer_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            gate = self.ffn[layer].to(device=output.device, dtype=output.dtype)
            if self.fresh is not None:
                gate = gate * self._fresh_gate(output, (1,), self.fresh_ffn[layer])
            return output * gate

        return hook

    def _ffn_neuron_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            gate = self.ffn[layer].to(device=x.device, dtype=x.dtype)
            if self.fresh is not None:
                gate = gate * self._fresh_gate(x, (x.shape[-1],), self.fresh_ffn[layer])
            return (x * gate, *args[1:])

        return hook

    # -- scoring support ------------------------------------------------------------------------
    def start_fresh(self, mode: str) -> None:
        """From now on each forward pass creates fresh gates (per batch, example or token)."""
        if mode not in FRESH_MODES:
            raise TicketlabError(f"fresh gate mode must be one of {', '.join(FRESH_MODES)}, not {mode!r}")
        self.fresh = mode
        self.clear_fresh()

    def stop_fresh(self) -> None:
        self.fresh = None
        self.clear_fresh()

    def clear_fresh(self) -> None:
        """Forget the fresh gates (and so their gradients) of the last forward pass."""
        for store in (*self.fresh_heads, *self.fresh_ffn):
            store.clear()

    # -- state ----------------------------------------------------------------------------------
    def set_mask(self, mask: StructuredMask) -> None:
        """Switch the gates to ``mask``'s 0/1 in place (multi-task training switches the task's
        ticket before each batch this way, without reinstalling hooks)."""
        if tuple(mask.heads.shape) != tuple(self.heads.shape) or tuple(mask.ffn.shape) != tuple(
            self.ffn.shape
        ):
            raise MaskMismatchError(
                f"mask shapes heads {tuple(mask.heads.shape)}, ffn {tuple(mask.ffn.shape)} do not match the "
                f"gates' {tuple(self.heads.shape)}, {tuple(self.ffn.shape)}"
            )
        with torch.no_grad():
            self.heads.copy_(mask.heads)
            self.ffn.copy_(mask.ffn)

    def to_mask(self) -> StructuredMask:
        """The structured mask of the gates that are not 0."""
        return StructuredMask(self.heads.detach().cpu() != 0, self.ffn.detach().cpu() != 0)

    def remove(self) -> None:
        """Take the hooks off: the model computes exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> StructuredGates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _gate_tensor(
    value: torch.Tensor | None, shape: tuple[int, ...], what: str, options: dict
) -> torch.Tensor:
    if value is None:
        return torch.ones(shape, **options)
    if tuple(value.shape) != shape:
        raise MaskMismatchError(
            f"{what} gates have shape {tuple(value.shape)}, the model needs {shape} "
            "(layers x heads; FFN: layers, or layers x d_ff)"
        )
    return value.detach().to(**options).clone()


def apply_structured_mask(model: nn.Module, mask: StructuredMask) -> StructuredGates:
    """Install fixed 0/1 gates from ``mask``; returns the gates (``.remove()`` takes them off).

    The pruned heads and FFNs output zero and their parameters get zero gradient, so fine-tuning
    with the gates on trains exactly the ticket.
    """
    adapter = EncoderAdapter(model)
    if tuple(mask.heads.shape) != (adapter.num_layers, adapter.num_heads):
        raise MaskMismatchError(
            f"heads mask shape {tuple(mask.heads.shape)} does not fit a model with "
            f"{adapter.num_layers} layers x {adapter.num_heads} heads"
        )
    if mask.ffn_granularity == "neuron" and mask.ffn.shape[1] != adapter.ffn_size:
        raise MaskMismatchError(
            f"ffn mask has {mask.ffn.shape[1]} neurons per layer, model has {adapter.ffn_size}"
        )
    return StructuredGates(
        model, mask.ffn_granularity, heads=mask.heads.float(), ffn=mask.ffn.float(), requires_grad=False
    )
